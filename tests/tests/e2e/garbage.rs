//! A client with a valid certificate misbehaves after Hello/Welcome: garbage, an oversized
//! length prefix, messages out of protocol. Each time its connection is closed with the matching
//! error code, and a healthy agent delivering at the same time is not disturbed.

use outpost_common::wire::{self, Ack, Message, close_code};
use outpost_tests::raw::{self, RawClient};
use outpost_tests::{AgentOptions, Env, Kind, Synthetic};

const TOTAL: u64 = 30_000;
/// Slow enough that the healthy agent delivers while the misbehaving client runs.
const RATE: u32 = 3_000;
const HEALTHY: &str = "healthy-1";
const RAW: &str = "misbehaving-1";

/// Where the misbehaving client sends its bytes.
#[derive(Debug, Clone, Copy)]
enum On {
    /// A new stream, where a Batch is expected.
    NewStream,
    /// The control stream, after Welcome, where a Heartbeat is expected.
    Control,
}

/// A frame whose length prefix is small and honest but whose body decodes to nothing.
fn garbage() -> Vec<u8> {
    let body = [0xff_u8; 16];
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

fn oversized() -> Vec<u8> {
    let mut frame = u32::MAX.to_be_bytes().to_vec();
    frame.extend_from_slice(b"no more than this");
    frame
}

fn ack() -> Vec<u8> {
    raw::frame(&Message::Ack(Ack {
        seq: 1,
        duplicate: false,
    }))
}

#[test]
fn misbehaving_clients_are_closed_with_the_right_code_and_disturb_no_one() {
    let env = Env::new("garbage");
    let aggregator = env.start_aggregator();
    let healthy = env.issue_agent(HEALTHY);
    let agent = env.start_agent(
        &healthy,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(TOTAL).rate(RATE)),
    );
    let store = aggregator.store();
    env.wait_stored(&store, HEALTHY, Kind::Log, 1);

    let cert = env.issue_agent(RAW);
    let cases: [(&str, On, Vec<u8>, u32); 6] = [
        (
            "garbage on a batch stream",
            On::NewStream,
            garbage(),
            close_code::MALFORMED_FRAME,
        ),
        (
            "u32::MAX length prefix on a batch stream",
            On::NewStream,
            oversized(),
            close_code::FRAME_TOO_LARGE,
        ),
        (
            "an Ack on a batch stream",
            On::NewStream,
            ack(),
            close_code::UNEXPECTED_MESSAGE,
        ),
        (
            "a second Hello on a batch stream",
            On::NewStream,
            raw::frame(&raw::hello_message()),
            close_code::UNEXPECTED_MESSAGE,
        ),
        (
            "garbage on the control stream",
            On::Control,
            garbage(),
            close_code::MALFORMED_FRAME,
        ),
        (
            "a second Hello on the control stream",
            On::Control,
            raw::frame(&raw::hello_message()),
            close_code::UNEXPECTED_MESSAGE,
        ),
    ];
    raw::block_on(async {
        for (case, on, bytes, expected) in &cases {
            let client = RawClient::connect(aggregator.addr(), raw::client_with_certificate(&cert))
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            let (mut control, _control_rx, welcome) = client
                .hello()
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(welcome.protocol_version, wire::PROTOCOL_VERSION);
            match on {
                On::NewStream => {
                    client
                        .send_on_new_stream(bytes)
                        .await
                        .unwrap_or_else(|e| panic!("{case}: {e}"));
                }
                On::Control => {
                    control
                        .write_all(bytes)
                        .await
                        .unwrap_or_else(|e| panic!("{case}: {e}"));
                }
            }
            let closed = client
                .closed()
                .await
                .unwrap_or_else(|e| panic!("{case}: {e}"));
            assert_eq!(
                raw::application_code(&closed),
                Some(*expected),
                "{case}: closed with {closed}"
            );
            client.finish().await;
        }
    });

    let report = env.wait_exactly_once(&store, HEALTHY, Kind::Log, TOTAL);
    assert_eq!(
        (report.min, report.max),
        (Some(0), Some(TOTAL - 1)),
        "{report}"
    );
    assert_eq!(
        agent.log_count("not connected to the aggregator"),
        0,
        "the healthy agent lost its connection:\n{}",
        agent.log()
    );
    assert_eq!(
        store.all_events(RAW),
        Ok(0),
        "nothing of the misbehaving client is stored"
    );
    let log = aggregator.log();
    for needle in [
        "malformed frame; closing the connection",
        "protocol violation; closing the connection",
    ] {
        assert!(
            log.contains(needle),
            "the aggregator logs `{needle}`:\n{log}"
        );
    }
}
