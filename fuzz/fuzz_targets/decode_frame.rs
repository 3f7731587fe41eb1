//! libFuzzer target: frames and frame bodies into the wire decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_fuzz::decode_frame(data);
});
