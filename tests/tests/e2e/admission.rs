//! Handshake admission: with `[ingest] max_handshakes = 1`, a second connection that arrives while
//! one handshake is in progress is refused at once (QUIC CONNECTION_REFUSED, counted under
//! `reason="busy"`), and once that handshake is over the next connection is admitted and answered.

use std::sync::mpsc;
use std::time::Duration;

use outpost_tests::raw::{self, RawClient};
use outpost_tests::{AggregatorOptions, Env};
use quinn::{ConnectionError, TransportErrorCode};

#[test]
fn a_connection_beyond_the_handshake_limit_is_refused_at_once_and_the_next_one_admitted() {
    let env = Env::new("admission");
    let aggregator = env.start_aggregator_with(AggregatorOptions {
        extra: "[ingest]\nmax_handshakes = 1\n".to_owned(),
        ..AggregatorOptions::default()
    });
    let addr = aggregator.addr();
    let stalled_cert = env.issue_agent("admission-stalled");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    // Its own runtime: its certificate check blocks the thread it runs on.
    let stalled = std::thread::spawn(move || {
        let config = raw::client_that_stalls(&stalled_cert, entered_tx, release_rx);
        raw::block_on(async move {
            let client = RawClient::connect(addr, config).await?;
            let welcome = client.hello().await.map(|(_, _, w)| w);
            client.finish().await;
            welcome
        })
    });
    entered
        .recv_timeout(Duration::from_secs(60))
        .expect("the stalled client's handshake to reach the aggregator's certificate");

    let cert = env.issue_agent("admission-refused");
    let refused = raw::block_on(async {
        let endpoint = quinn::Endpoint::client(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("a client socket");
        let connecting = endpoint
            .connect_with(raw::client_with_certificate(&cert), addr, "localhost")
            .expect("a connection attempt");
        tokio::time::timeout(Duration::from_secs(30), connecting).await
    });
    match refused {
        Ok(Err(ConnectionError::ConnectionClosed(close)))
            if close.error_code == TransportErrorCode::CONNECTION_REFUSED => {}
        other => {
            panic!("expected CONNECTION_REFUSED while a handshake is in progress, got {other:?}")
        }
    }
    let metrics_url = format!("{}/metrics", aggregator.api_url());
    env.wait_until("/metrics to count the connection refused as busy", || {
        let text = reqwest::blocking::get(&metrics_url)
            .and_then(reqwest::blocking::Response::text)
            .unwrap_or_default();
        text.lines()
            .any(|l| l == "outpost_ingest_refused_total{reason=\"busy\"} 1")
    });

    release.send(()).expect("the stalled client to be waiting");
    let welcome = stalled.join().expect("the stalled client's thread");
    assert!(welcome.is_ok(), "the stalled client, released: {welcome:?}");
    // The limit is free again: the refused agent's retry is admitted and welcomed.
    let retried = raw::block_on(async {
        let client = RawClient::connect(addr, raw::client_with_certificate(&cert)).await?;
        let welcome = client.hello().await.map(|(_, _, w)| w);
        client.finish().await;
        welcome
    });
    assert!(retried.is_ok(), "the retry: {retried:?}");
}
