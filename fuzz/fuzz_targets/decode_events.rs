//! libFuzzer target: encoded event lists into the batch event decoder.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    outpost_fuzz::decode_events(data);
});
