//! The simulated agents: each with its own certificate, its own QUIC connection made by the
//! agent's real shipper ([`Shipper`]: Hello/Welcome, one stream per batch, acknowledgements,
//! heartbeats, reconnects with the agent's backoff), its own spool ([`MemoryBacklog`]) and its
//! own generator ([`SimHost`]).
//!
//! Agents share client UDP sockets, `agents_per_socket` to one (a QUIC endpoint serves many
//! connections; the aggregator tells them apart by connection id), so ten thousand agents do not
//! need ten thousand sockets and their receive buffers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use outpost_agent::config::{AggregatorSection, ShipSection};
use outpost_agent::ship::{ShipConfig, Shipper, Target};
use outpost_agent::spool::DEFAULT_MAX_BATCH_EVENTS;
use outpost_agent::telemetry::Telemetry;
use outpost_common::config::QuicEndpoint;
use outpost_common::event::HostFacts;
use outpost_common::tls::{self, QuicSettings};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::backlog::{AckLatency, MemoryBacklog, Tally};
use super::host::{Rates, SimHost};
use crate::hostsim::Family;

/// How long a stopping shipper waits for outstanding acknowledgements, as the agent does.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The shape of the simulated fleet.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub agents: usize,
    pub rates: Rates,
    pub agents_per_socket: usize,
    pub spool_cap_bytes: u64,
}

/// A running shipper and the switch that stops it.
#[derive(Debug)]
struct Running {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// One simulated agent.
#[derive(Debug)]
pub struct SimAgent {
    pub id: String,
    pub index: usize,
    pub backlog: Arc<MemoryBacklog>,
    client: quinn::ClientConfig,
    endpoint: quinn::Endpoint,
    host_facts: HostFacts,
    shipper: Mutex<Option<Running>>,
    /// Whether its certificate was revoked during the run.
    pub revoked: AtomicBool,
}

/// The fleet: every agent, the addresses they ship to, and their generators' switch.
#[derive(Debug)]
pub struct Fleet {
    pub agents: Vec<Arc<SimAgent>>,
    pub latency: Arc<AckLatency>,
    /// The aggregators' addresses: agent `i` prefers `targets[i % len]` and lists the others
    /// after it, in order, as an agent configured with several endpoints does.
    targets: Vec<SocketAddr>,
    generators: Vec<JoinHandle<()>>,
    stop_generators: watch::Sender<bool>,
}

/// The id of agent `i`.
pub fn agent_id(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Issues the certificates of agents `0..n` in the PKI at `pki` (the aggregator's own code, as
/// `outpost-aggregator pki issue-agent` runs it), skipping those already issued.
pub fn issue_certificates(pki: &Path, n: usize) -> anyhow::Result<()> {
    for i in 0..n {
        let id = agent_id(i);
        if pki.join("agents").join(format!("{id}.key")).exists() {
            continue;
        }
        outpost_aggregator::pki::issue_agent(pki, &id, Duration::from_secs(30 * 86_400), false)
            .with_context(|| format!("issuing the certificate of {id}"))?;
    }
    Ok(())
}

fn quic_settings() -> QuicSettings {
    let a = AggregatorSection::default();
    QuicSettings {
        idle_timeout: a.idle_timeout,
        keep_alive: Some(a.keep_alive),
        max_concurrent_bidi_streams: 0,
        mtu_discovery: a.mtu_discovery,
    }
}

fn client_config(
    pki: &Path,
    id: &str,
    ca: &[rustls_pki_types::CertificateDer<'static>],
) -> anyhow::Result<quinn::ClientConfig> {
    let dir = pki.join("agents");
    let chain = tls::load_certs(&dir.join(format!("{id}.pem")))?;
    let key = tls::load_key(&dir.join(format!("{id}.key")))?;
    Ok(tls::client_config(ca, chain, key, &quic_settings())?)
}

impl Fleet {
    /// Makes the agents (certificates already issued in `pki`) shipping to `targets` (at least
    /// one), spread evenly: agent `i` prefers `targets[i % targets.len()]`. None runs yet. Must
    /// be called inside the runtime the fleet runs on.
    pub fn new(
        config: &FleetConfig,
        pki: &Path,
        template: Arc<Vec<Family>>,
        targets: Vec<SocketAddr>,
    ) -> anyhow::Result<Fleet> {
        anyhow::ensure!(
            !targets.is_empty(),
            "a fleet needs an aggregator to ship to"
        );
        let ca = tls::load_certs(&pki.join("ca.pem"))?;
        let latency = AckLatency::new();
        let mut endpoints = Vec::new();
        let mut agents = Vec::with_capacity(config.agents);
        let (stop_generators, _) = watch::channel(false);
        let mut generators = Vec::with_capacity(config.agents);
        let start = Instant::now();
        for i in 0..config.agents {
            if i % config.agents_per_socket.max(1) == 0 {
                let e = quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0)))
                    .context("binding a client UDP socket")?;
                endpoints.push(e);
            }
            let id = agent_id(i);
            let backlog = Arc::new(MemoryBacklog::new(config.spool_cap_bytes, latency.clone()));
            let hostname = format!("sim-host-{i:05}");
            let agent = Arc::new(SimAgent {
                client: client_config(pki, &id, &ca)?,
                id,
                index: i,
                backlog: backlog.clone(),
                endpoint: endpoints.last().cloned().context("no endpoint")?,
                host_facts: HostFacts {
                    hostname: hostname.clone(),
                    os: "Debian GNU/Linux 12 (bookworm)".to_owned(),
                    kernel: "6.1.0-27-amd64".to_owned(),
                    arch: "x86_64".to_owned(),
                    cpus: 4,
                    memory_bytes: 8 << 30,
                    boot_time_ns: outpost_common::time::now_ns() - 86_400_000_000_000,
                },
                shipper: Mutex::new(None),
                revoked: AtomicBool::new(false),
            });
            let host = SimHost::new(
                i as u64,
                hostname,
                template.clone(),
                config.rates,
                0x5eed_0000 + i as u64,
                start,
            );
            generators.push(tokio::spawn(generate(
                host,
                backlog,
                stop_generators.subscribe(),
            )));
            agents.push(agent);
        }
        Ok(Fleet {
            agents,
            latency,
            targets,
            generators,
            stop_generators,
        })
    }

    /// Starts agent `i`'s shipper, as the agent process starting would (its spool kept).
    pub fn start(&self, i: usize) {
        let agent = &self.agents[i];
        let mut slot = agent.shipper.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_some() {
            return;
        }
        let ship = ShipSection::default();
        let a = AggregatorSection::default();
        let config = ShipConfig {
            targets: self.targets_of(i),
            client: agent.client.clone(),
            max_in_flight: ship.max_in_flight,
            heartbeat_interval: ship.heartbeat_interval,
            reconnect_min: ship.reconnect_min,
            reconnect_max: ship.reconnect_max,
            connect_timeout: a.connect_timeout,
            catchup_events_per_sec: ship.catchup_events_per_sec,
            max_batch_events: u32::try_from(DEFAULT_MAX_BATCH_EVENTS).unwrap_or(u32::MAX),
            shutdown_grace: SHUTDOWN_GRACE,
            labels: vec![("fleet".to_owned(), "sim".to_owned())],
            renewal: None,
        };
        let shipper = Shipper::new(
            config,
            agent.backlog.clone(),
            Arc::new(Telemetry::new()),
            agent.host_facts.clone(),
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(shipper.run_on(agent.endpoint.clone(), stopped));
        *slot = Some(Running { stop, task });
    }

    /// Stops agent `i`'s shipper the way the agent stops on SIGTERM (outstanding batches get
    /// the grace period, then the connection closes); its spool stays.
    pub async fn stop(&self, i: usize) {
        let running = self.agents[i]
            .shipper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(r) = running {
            let _ = r.stop.send(true);
            let _ = r.task.await;
        }
    }

    /// Stops every shipper at once.
    pub async fn stop_all(&self) {
        let running: Vec<Running> = self
            .agents
            .iter()
            .filter_map(|a| {
                a.shipper
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
            })
            .collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }

    /// Stops generating: every host hands over what it gathered and makes nothing more.
    pub async fn stop_generating(&mut self) {
        let _ = self.stop_generators.send(true);
        for g in self.generators.drain(..) {
            let _ = g.await;
        }
    }

    /// Every agent's spool tally, summed; agents whose certificate was revoked apart.
    pub fn tally(&self) -> (Tally, Tally) {
        let mut live = Tally::default();
        let mut revoked = Tally::default();
        for a in &self.agents {
            let t = a.backlog.tally();
            if a.revoked.load(Ordering::Relaxed) {
                revoked.add(&t);
            } else {
                live.add(&t);
            }
        }
        (live, revoked)
    }

    /// The creation time of the oldest batch any agent not revoked still holds.
    pub fn oldest_held_ns(&self) -> Option<i64> {
        self.agents
            .iter()
            .filter(|a| !a.revoked.load(Ordering::Relaxed))
            .filter_map(|a| a.backlog.oldest_ns())
            .min()
    }

    /// The PKI file of agent `i`'s certificate.
    pub fn certificate_path(pki: &Path, i: usize) -> PathBuf {
        pki.join("agents").join(format!("{}.pem", agent_id(i)))
    }

    /// Agent `i`'s endpoints: its preferred aggregator first, then the others in order.
    fn targets_of(&self, i: usize) -> Vec<Target> {
        let first = i % self.targets.len();
        self.targets[first..]
            .iter()
            .chain(&self.targets[..first])
            .map(|addr| Target {
                endpoint: QuicEndpoint {
                    host: addr.ip().to_string(),
                    port: addr.port(),
                    host_is_ip: true,
                },
                server_name: "localhost".to_owned(),
            })
            .collect()
    }
}

/// Runs one host's generator into its spool until told to stop.
async fn generate(mut host: SimHost, backlog: Arc<MemoryBacklog>, mut stop: watch::Receiver<bool>) {
    loop {
        let wake = host.poll_timeout();
        tokio::select! {
            () = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        let now_ns = outpost_common::time::now_ns();
        for events in host.handle_timeout(Instant::now(), now_ns) {
            backlog.append(events, now_ns);
        }
    }
    host.stop();
    let rest = host.flush();
    backlog.append(rest, outpost_common::time::now_ns());
}
