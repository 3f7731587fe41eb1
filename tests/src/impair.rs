//! A UDP proxy that degrades the network between QUIC clients and the aggregator on loopback: it
//! drops, delays (a base delay plus uniform jitter, which also reorders) and duplicates
//! datagrams, in both directions.
//!
//! The usual tool for this is `netem` in a network namespace, but the kernel the end-to-end tests
//! run on is built without `sch_netem`: `tc qdisc add dev lo root netem delay 10ms` fails with
//! "Specified qdisc kind is unknown". So the impairment happens here, in user space.
//!
//! Clients (simulated agents) send to [`ImpairProxy::local_addr`] instead of the aggregator's
//! address. Each distinct client source address is a *flow* and gets its own upstream socket,
//! so the aggregator sees one address per client, as it would through a real router; what comes
//! back on that socket goes to that client. Flows idle for two minutes (no datagram in either
//! direction) are closed, so clients that come and go do not leak sockets.
//!
//! The decisions are made by a pure, seeded core that the tests drive without sockets:
//! [`Impairer`] decides the fate of each datagram and [`Scheduler`] holds delayed datagrams
//! until they are due. The async layer only moves bytes and runs timers: one task receives from
//! clients, one task per flow receives from the upstream, and one scheduler task per direction
//! delivers what is due.
//!
//! ```no_run
//! # async fn example(aggregator: std::net::SocketAddr) -> std::io::Result<()> {
//! use std::time::Duration;
//! use outpost_tests::impair::{Impairment, ImpairProxy};
//!
//! let lossy = Impairment { loss: 0.05, delay: Duration::from_millis(20), ..Impairment::NONE };
//! let proxy = ImpairProxy::start(aggregator, lossy, 7).await?;
//! // Point the agents at proxy.local_addr(); later, heal the network:
//! proxy.set_impairment(Impairment::NONE);
//! println!("{:?}", proxy.stats());
//! # Ok(())
//! # }
//! ```

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::{AbortHandle, JoinSet};

/// How a link degrades the datagrams that cross it, in one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// The probability that a datagram is dropped, in [0, 1].
    pub loss: f64,
    /// The probability that a datagram that is not dropped is sent twice, in [0, 1].
    pub duplicate: f64,
    /// The delay every copy of a datagram waits at least.
    pub delay: Duration,
    /// Each copy waits an extra delay drawn uniformly from [0, jitter]. Copies that arrive close
    /// together can leave in a different order.
    pub jitter: Duration,
}

impl Impairment {
    /// A perfect link: nothing dropped, duplicated or delayed.
    pub const NONE: Impairment = Impairment {
        loss: 0.0,
        duplicate: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
    };

    /// Checks that the probabilities are finite and in [0, 1], and that `delay + jitter` can be
    /// represented.
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [("loss", self.loss), ("duplicate", self.duplicate)] {
            if !(p.is_finite() && (0.0..=1.0).contains(&p)) {
                return Err(format!("{name} must be a probability in [0, 1], not {p}"));
            }
        }
        if self.delay.checked_add(self.jitter).is_none() {
            return Err(format!(
                "delay {:?} plus jitter {:?} is out of range",
                self.delay, self.jitter
            ));
        }
        Ok(())
    }
}

/// What happens to one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is dropped.
    Lost,
    /// It is sent once, after this delay.
    Once(Duration),
    /// It is sent twice, each copy after its own delay.
    Twice(Duration, Duration),
}

impl Fate {
    /// The delay of each copy that is sent: none, one or two.
    pub fn delays(self) -> impl Iterator<Item = Duration> {
        let copies = match self {
            Fate::Lost => [None, None],
            Fate::Once(d) => [Some(d), None],
            Fate::Twice(a, b) => [Some(a), Some(b)],
        };
        copies.into_iter().flatten()
    }
}

/// Decides the fate of datagrams under an [`Impairment`], with a seeded random generator: the
/// same seed and the same sequence of calls give the same fates.
pub struct Impairer {
    impairment: Impairment,
    rng: StdRng,
}

impl std::fmt::Debug for Impairer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Impairer")
            .field("impairment", &self.impairment)
            .finish_non_exhaustive()
    }
}

impl Impairer {
    /// An impairer that applies `impairment`, its random generator seeded with `seed`.
    pub fn new(impairment: Impairment, seed: u64) -> Impairer {
        Impairer {
            impairment,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Applies `impairment` from the next decision on.
    ///
    /// It is not validated: a probability above 1 acts as 1, and one below 0 or NaN as 0.
    pub fn set(&mut self, impairment: Impairment) {
        self.impairment = impairment;
    }

    /// The impairment applied.
    pub fn impairment(&self) -> Impairment {
        self.impairment
    }

    /// What happens to one datagram: dropped with probability `loss`; otherwise sent, and sent
    /// twice with probability `duplicate`. Each copy gets its own delay in
    /// [delay, delay + jitter].
    pub fn decide(&mut self) -> Fate {
        let Impairment {
            loss, duplicate, ..
        } = self.impairment;
        // `random` is in [0, 1): a probability of 0 (or NaN) never fires, one of 1 always does.
        if self.rng.random::<f64>() < loss {
            return Fate::Lost;
        }
        let first = self.delay();
        if self.rng.random::<f64>() < duplicate {
            Fate::Twice(first, self.delay())
        } else {
            Fate::Once(first)
        }
    }

    fn delay(&mut self) -> Duration {
        let Impairment { delay, jitter, .. } = self.impairment;
        if jitter.is_zero() {
            return delay;
        }
        let max = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
        delay.saturating_add(Duration::from_nanos(self.rng.random_range(0..=max)))
    }
}

/// A queue of items ordered by the instant they are due; items due at the same instant come out
/// in the order they were pushed. It does no I/O and reads no clock: instants are passed in.
#[derive(Debug)]
pub struct Scheduler<T> {
    heap: BinaryHeap<Scheduled<T>>,
    pushed: u64,
}

#[derive(Debug)]
struct Scheduled<T> {
    due: Instant,
    /// Arrival order, to keep items with the same due instant first in, first out.
    order: u64,
    item: T,
}

impl<T> Scheduled<T> {
    fn key(&self) -> (Instant, u64) {
        (self.due, self.order)
    }
}

impl<T> PartialEq for Scheduled<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl<T> Eq for Scheduled<T> {}

impl<T> PartialOrd for Scheduled<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Scheduled<T> {
    /// Reversed, so that the max-heap yields the earliest item first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key().cmp(&self.key())
    }
}

impl<T> Default for Scheduler<T> {
    fn default() -> Self {
        Scheduler {
            heap: BinaryHeap::new(),
            pushed: 0,
        }
    }
}

impl<T> Scheduler<T> {
    /// An empty queue.
    pub fn new() -> Scheduler<T> {
        Scheduler::default()
    }

    /// Queues `item`, due at `now + delay` (or as late as can be represented).
    pub fn push(&mut self, now: Instant, delay: Duration, item: T) {
        let due = now
            .checked_add(delay)
            .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
            .unwrap_or(now);
        let order = self.pushed;
        self.pushed = self.pushed.wrapping_add(1);
        self.heap.push(Scheduled { due, order, item });
    }

    /// Takes the earliest item if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<T> {
        if self.heap.peek()?.due > now {
            return None;
        }
        self.heap.pop().map(|s| s.item)
    }

    /// When the earliest item is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|s| s.due)
    }

    /// How many items are queued.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no item is queued.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

/// The counts of one direction of an [`ImpairProxy`]. A duplicated datagram is received once
/// and delivered twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DirectionStats {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams dropped by the impairment.
    pub dropped: u64,
    /// Datagrams the impairment sent twice.
    pub duplicated: u64,
    /// Copies sent on.
    pub delivered: u64,
    /// Copies delivered after a datagram of the same flow and direction that arrived later.
    pub reordered: u64,
    /// Copies dropped because the proxy already held too many delayed datagrams in this
    /// direction (65,536), as a router's full queue would.
    pub overflowed: u64,
    /// Copies that could not be sent (or whose flow's upstream socket could not be opened).
    pub send_errors: u64,
    /// Receives that failed, such as the "connection refused" a flow's socket reports after the
    /// upstream port answered with ICMP port unreachable.
    pub recv_errors: u64,
}

impl DirectionStats {
    /// Copies accepted and not yet delivered, failed or overflowed. In a [`ProxyStats`] snapshot
    /// this is never below the true number at the time the snapshot began, so 0 means the
    /// direction was idle then.
    pub fn in_flight(&self) -> u64 {
        (self.received + self.duplicated)
            .saturating_sub(self.dropped + self.delivered + self.overflowed + self.send_errors)
    }
}

/// A snapshot of an [`ImpairProxy`]'s counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyStats {
    /// From the clients to the upstream.
    pub to_upstream: DirectionStats,
    /// From the upstream back to the clients.
    pub to_client: DirectionStats,
    /// Client addresses seen since the start (a client that comes back after its flow was
    /// closed counts again).
    pub flows: u64,
    /// Flows open now.
    pub open_flows: u64,
}

/// A UDP proxy on loopback that impairs the traffic between its clients and one upstream
/// address. Its tasks run on the tokio runtime it was started on and stop when it is dropped or
/// [stopped](ImpairProxy::stop).
#[derive(Debug)]
pub struct ImpairProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    tasks: Vec<AbortHandle>,
}

/// The size of the buffer a datagram is received into: larger than any UDP payload.
const RECV_BUFFER: usize = 65_535;
/// The receive buffer asked of the kernel for the listening socket, so that bursts from many
/// clients are not dropped before the proxy reads them.
const LISTENER_RECV_BUFFER: usize = 8 << 20;
/// The same for each flow's upstream socket, for the upstream's bursts to one client. It is a
/// limit, not an allocation: an idle flow holds no buffer memory.
const FLOW_RECV_BUFFER: usize = 2 << 20;
/// How long a flow may see no datagram in either direction before its socket is closed.
const FLOW_IDLE: Duration = Duration::from_secs(120);
/// How many datagrams one direction may hold (waiting to be scheduled or delayed).
const QUEUE_LIMIT: usize = 1 << 16;
/// How many datagrams a task handles in a row before it lets others run.
const BATCH: usize = 256;

impl ImpairProxy {
    /// Binds 127.0.0.1:0 and forwards to `upstream` under `impairment` (in both directions),
    /// with random decisions seeded from `seed`. Spawns its tasks on the current tokio runtime,
    /// so it must be called within one.
    ///
    /// Fails if `impairment` is invalid (see [`Impairment::validate`]) or the socket cannot be
    /// bound.
    pub async fn start(
        upstream: SocketAddr,
        impairment: Impairment,
        seed: u64,
    ) -> io::Result<ImpairProxy> {
        ImpairProxy::start_with_idle(upstream, impairment, seed, FLOW_IDLE).await
    }

    async fn start_with_idle(
        upstream: SocketAddr,
        impairment: Impairment,
        seed: u64,
        idle: Duration,
    ) -> io::Result<ImpairProxy> {
        impairment
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let listener = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        enlarge_recv_buffer(&listener, LISTENER_RECV_BUFFER);
        let local_addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let shared = Arc::new(Shared {
            impairers: [
                Mutex::new(Impairer::new(impairment, seed)),
                // A different stream for the other direction, still fixed by the seed.
                Mutex::new(Impairer::new(impairment, seed ^ 0x9e37_79b9_7f4a_7c15)),
            ],
            counters: Default::default(),
            flows_seen: AtomicU64::new(0),
            flows_open: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        let (up_tx, up_rx) = mpsc::channel(QUEUE_LIMIT);
        let (down_tx, down_rx) = mpsc::channel(QUEUE_LIMIT);
        let tasks = vec![
            tokio::spawn(deliver_loop(
                Direction::ToUpstream,
                Arc::clone(&shared),
                Arc::clone(&listener),
                up_rx,
            ))
            .abort_handle(),
            tokio::spawn(deliver_loop(
                Direction::ToClient,
                Arc::clone(&shared),
                Arc::clone(&listener),
                down_rx,
            ))
            .abort_handle(),
            tokio::spawn(listen_loop(
                Arc::clone(&shared),
                listener,
                upstream,
                Senders {
                    up: up_tx,
                    down: down_tx,
                },
                idle,
            ))
            .abort_handle(),
        ];
        Ok(ImpairProxy {
            local_addr,
            shared,
            tasks,
        })
    }

    /// The address clients send to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies `impairment` in both directions to the datagrams that arrive from now on;
    /// datagrams already delayed keep their fate. It is not validated: a probability above 1
    /// acts as 1, and one below 0 or NaN as 0.
    pub fn set_impairment(&self, impairment: Impairment) {
        for impairer in &self.shared.impairers {
            lock(impairer).set(impairment);
        }
    }

    /// The counts so far.
    pub fn stats(&self) -> ProxyStats {
        let [to_upstream, to_client] = &self.shared.counters;
        ProxyStats {
            to_upstream: to_upstream.snapshot(),
            to_client: to_client.snapshot(),
            flows: self.shared.flows_seen.load(SeqCst),
            open_flows: self.shared.flows_open.load(SeqCst),
        }
    }

    /// Stops forwarding: the tasks are cancelled and the sockets close. Dropping the proxy does
    /// the same.
    pub fn stop(&self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Drop for ImpairProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Asks for a receive buffer of `size` bytes, best effort: the forced variant needs
/// `CAP_NET_ADMIN`, the plain one is capped by `net.core.rmem_max`.
fn enlarge_recv_buffer(socket: &UdpSocket, size: usize) {
    use rustix::net::sockopt;
    if sockopt::set_socket_recv_buffer_size_force(socket, size).is_err() {
        let _ = sockopt::set_socket_recv_buffer_size(socket, size);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values (an impairer) stay consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    ToUpstream = 0,
    ToClient = 1,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    delivered: AtomicU64,
    reordered: AtomicU64,
    overflowed: AtomicU64,
    send_errors: AtomicU64,
    recv_errors: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, SeqCst);
    }

    /// Reads the counts that a datagram reaches last first, so that
    /// [`DirectionStats::in_flight`] never comes out too low.
    fn snapshot(&self) -> DirectionStats {
        let delivered = self.delivered.load(SeqCst);
        let send_errors = self.send_errors.load(SeqCst);
        let overflowed = self.overflowed.load(SeqCst);
        let reordered = self.reordered.load(SeqCst);
        let dropped = self.dropped.load(SeqCst);
        let duplicated = self.duplicated.load(SeqCst);
        let received = self.received.load(SeqCst);
        DirectionStats {
            received,
            dropped,
            duplicated,
            delivered,
            reordered,
            overflowed,
            send_errors,
            recv_errors: self.recv_errors.load(SeqCst),
        }
    }
}

#[derive(Debug)]
struct Shared {
    /// Indexed by [`Direction`].
    impairers: [Mutex<Impairer>; 2],
    /// Indexed by [`Direction`].
    counters: [Counters; 2],
    flows_seen: AtomicU64,
    flows_open: AtomicU64,
    /// The origin of [`Flow::last_active`].
    epoch: Instant,
}

impl Shared {
    fn millis(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }
}

/// One client address and its socket to the upstream.
#[derive(Debug)]
struct Flow {
    client: SocketAddr,
    /// Bound to loopback, connected to the upstream.
    upstream: UdpSocket,
    /// When a datagram last arrived in either direction, in milliseconds since [`Shared::epoch`].
    last_active: AtomicU64,
    /// The highest arrival number delivered so far, per [`Direction`]; a copy with a lower one
    /// was reordered.
    delivered_max: [AtomicU64; 2],
}

/// A datagram on its way through one direction.
#[derive(Debug)]
struct Datagram {
    flow: Arc<Flow>,
    /// Its arrival number within its flow and direction.
    number: u64,
    bytes: Vec<u8>,
}

/// A datagram as received, with its fate, for the scheduler task.
#[derive(Debug)]
struct Arrival {
    at: Instant,
    fate: Fate,
    datagram: Datagram,
}

#[derive(Debug)]
struct Senders {
    up: mpsc::Sender<Arrival>,
    down: mpsc::Sender<Arrival>,
}

/// Counts a received datagram, decides its fate and hands it to the direction's scheduler task.
fn admit(
    shared: &Shared,
    direction: Direction,
    tx: &mpsc::Sender<Arrival>,
    at: Instant,
    flow: &Arc<Flow>,
    number: u64,
    bytes: &[u8],
) {
    let counters = &shared.counters[direction as usize];
    Counters::add(&counters.received, 1);
    flow.last_active.store(shared.millis(at), SeqCst);
    let fate = lock(&shared.impairers[direction as usize]).decide();
    let copies = match fate {
        Fate::Lost => {
            Counters::add(&counters.dropped, 1);
            return;
        }
        Fate::Once(_) => 1,
        Fate::Twice(..) => {
            Counters::add(&counters.duplicated, 1);
            2
        }
    };
    let datagram = Datagram {
        flow: Arc::clone(flow),
        number,
        bytes: bytes.to_vec(),
    };
    if tx.try_send(Arrival { at, fate, datagram }).is_err() {
        Counters::add(&counters.overflowed, copies);
    }
}

/// Receives from the clients, opens and closes flows.
async fn listen_loop(
    shared: Arc<Shared>,
    listener: Arc<UdpSocket>,
    upstream: SocketAddr,
    senders: Senders,
    idle: Duration,
) {
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut flows: HashMap<SocketAddr, FlowEntry> = HashMap::new();
    // The flows' receiving tasks: dropping the set (when this task is cancelled) cancels them.
    let mut receivers = JoinSet::new();
    let mut sweep = tokio::time::interval((idle / 4).max(Duration::from_millis(10)));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let counters = &shared.counters[Direction::ToUpstream as usize];
    loop {
        tokio::select! {
            received = listener.recv_from(&mut buf) => {
                let (len, client) = match received {
                    Ok(r) => r,
                    Err(_) => {
                        Counters::add(&counters.recv_errors, 1);
                        tokio::task::yield_now().await;
                        continue;
                    }
                };
                let at = Instant::now();
                let entry = match flows.entry(client) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(v) => {
                        match open_flow(&shared, client, upstream, &senders.down, &mut receivers, at).await {
                            Ok(entry) => v.insert(entry),
                            Err(_) => {
                                Counters::add(&counters.received, 1);
                                Counters::add(&counters.send_errors, 1);
                                continue;
                            }
                        }
                    }
                };
                let number = entry.arrivals;
                entry.arrivals += 1;
                let bytes = buf.get(..len).unwrap_or_default();
                admit(&shared, Direction::ToUpstream, &senders.up, at, &entry.flow, number, bytes);
            }
            _ = sweep.tick() => {
                let now = shared.millis(Instant::now());
                let idle = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
                flows.retain(|_, entry| {
                    let last = entry.flow.last_active.load(SeqCst);
                    let keep = now.saturating_sub(last) < idle;
                    if !keep {
                        entry.receiver.abort();
                        shared.flows_open.fetch_sub(1, SeqCst);
                    }
                    keep
                });
                while receivers.try_join_next().is_some() {}
            }
        }
    }
}

/// A flow as the listening task keeps it.
#[derive(Debug)]
struct FlowEntry {
    flow: Arc<Flow>,
    /// Datagrams received from the client so far: the next one's arrival number.
    arrivals: u64,
    receiver: AbortHandle,
}

async fn open_flow(
    shared: &Arc<Shared>,
    client: SocketAddr,
    upstream: SocketAddr,
    down: &mpsc::Sender<Arrival>,
    receivers: &mut JoinSet<()>,
    at: Instant,
) -> io::Result<FlowEntry> {
    let local = if upstream.is_ipv4() {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    } else {
        SocketAddr::from((Ipv6Addr::LOCALHOST, 0))
    };
    let socket = UdpSocket::bind(local).await?;
    enlarge_recv_buffer(&socket, FLOW_RECV_BUFFER);
    socket.connect(upstream).await?;
    let flow = Arc::new(Flow {
        client,
        upstream: socket,
        last_active: AtomicU64::new(shared.millis(at)),
        delivered_max: [AtomicU64::new(0), AtomicU64::new(0)],
    });
    let receiver = receivers.spawn(flow_loop(
        Arc::clone(shared),
        Arc::clone(&flow),
        down.clone(),
    ));
    shared.flows_seen.fetch_add(1, SeqCst);
    shared.flows_open.fetch_add(1, SeqCst);
    Ok(FlowEntry {
        flow,
        arrivals: 0,
        receiver,
    })
}

thread_local! {
    /// The buffer the flows' tasks receive into: one per worker thread rather than one per flow,
    /// since there can be thousands of flows. It is never borrowed across an await.
    static FLOW_BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0u8; RECV_BUFFER]);
}

/// Receives what the upstream sends back on one flow's socket.
async fn flow_loop(shared: Arc<Shared>, flow: Arc<Flow>, tx: mpsc::Sender<Arrival>) {
    let counters = &shared.counters[Direction::ToClient as usize];
    let mut arrivals = 0u64;
    loop {
        if flow.upstream.readable().await.is_err() {
            Counters::add(&counters.recv_errors, 1);
            tokio::task::yield_now().await;
            continue;
        }
        for _ in 0..BATCH {
            let received = FLOW_BUFFER.with_borrow_mut(|buf| match flow.upstream.try_recv(buf) {
                Ok(len) => {
                    let at = Instant::now();
                    let bytes = buf.get(..len).unwrap_or_default();
                    admit(
                        &shared,
                        Direction::ToClient,
                        &tx,
                        at,
                        &flow,
                        arrivals,
                        bytes,
                    );
                    arrivals += 1;
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => false,
                Err(_) => {
                    Counters::add(&counters.recv_errors, 1);
                    true
                }
            });
            if !received {
                break;
            }
        }
    }
}

/// Delivers the datagrams of one direction when they are due.
async fn deliver_loop(
    direction: Direction,
    shared: Arc<Shared>,
    listener: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<Arrival>,
) {
    let counters = &shared.counters[direction as usize];
    let mut queue = Scheduler::new();
    let sleep = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        while let Some(datagram) = queue.pop_due(now) {
            deliver(direction, counters, &listener, datagram).await;
        }
        let arrival = match queue.next_due() {
            None => rx.recv().await,
            Some(due) => {
                sleep.as_mut().reset(tokio::time::Instant::from_std(due));
                tokio::select! {
                    biased;
                    arrival = rx.recv() => arrival,
                    () = &mut sleep => continue,
                }
            }
        };
        let Some(arrival) = arrival else {
            return; // the receiving tasks are gone
        };
        enqueue(&mut queue, counters, arrival);
        for _ in 0..BATCH {
            match rx.try_recv() {
                Ok(arrival) => enqueue(&mut queue, counters, arrival),
                Err(_) => break,
            }
        }
    }
}

fn enqueue(queue: &mut Scheduler<Datagram>, counters: &Counters, arrival: Arrival) {
    let Arrival { at, fate, datagram } = arrival;
    let mut push = |delay, datagram| {
        if queue.len() < QUEUE_LIMIT {
            queue.push(at, delay, datagram);
        } else {
            Counters::add(&counters.overflowed, 1);
        }
    };
    match fate {
        Fate::Lost => {}
        Fate::Once(delay) => push(delay, datagram),
        Fate::Twice(first, second) => {
            let copy = Datagram {
                flow: Arc::clone(&datagram.flow),
                number: datagram.number,
                bytes: datagram.bytes.clone(),
            };
            push(first, copy);
            push(second, datagram);
        }
    }
}

async fn deliver(
    direction: Direction,
    counters: &Counters,
    listener: &UdpSocket,
    datagram: Datagram,
) {
    let Datagram {
        flow,
        number,
        bytes,
    } = datagram;
    let sent = match direction {
        Direction::ToUpstream => match flow.upstream.send(&bytes).await {
            // A connected socket reports the ICMP "port unreachable" an earlier datagram drew on
            // its next send, which then does not go out. This datagram is not the one refused,
            // and a router would not drop it: try once more.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                flow.upstream.send(&bytes).await
            }
            sent => sent,
        },
        Direction::ToClient => listener.send_to(&bytes, flow.client).await,
    };
    if sent.is_err() {
        Counters::add(&counters.send_errors, 1);
        return;
    }
    Counters::add(&counters.delivered, 1);
    if flow.delivered_max[direction as usize].fetch_max(number, SeqCst) > number {
        Counters::add(&counters.reordered, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::{BTreeMap, HashSet};

    const MS: Duration = Duration::from_millis(1);
    /// How long a test waits for a condition before failing.
    const DEADLINE: Duration = Duration::from_secs(30);

    // --- the decision core ---

    #[test]
    fn validate_accepts_probabilities_and_rejects_the_rest() {
        assert_eq!(Impairment::NONE.validate(), Ok(()));
        let full = Impairment {
            loss: 1.0,
            duplicate: 1.0,
            delay: Duration::from_secs(1),
            jitter: Duration::from_secs(1),
        };
        assert_eq!(full.validate(), Ok(()));
        for bad in [-0.1, 1.1, f64::NAN, f64::INFINITY] {
            let loss = Impairment {
                loss: bad,
                ..Impairment::NONE
            };
            assert!(loss.validate().is_err(), "loss {bad}");
            let duplicate = Impairment {
                duplicate: bad,
                ..Impairment::NONE
            };
            assert!(duplicate.validate().is_err(), "duplicate {bad}");
        }
        let overflow = Impairment {
            delay: Duration::MAX,
            jitter: MS,
            ..Impairment::NONE
        };
        assert!(overflow.validate().is_err());
    }

    #[test]
    fn impairer_fractions_and_delays_match_the_impairment() {
        let impairment = Impairment {
            loss: 0.1,
            duplicate: 0.05,
            delay: 10 * MS,
            jitter: 5 * MS,
        };
        let mut impairer = Impairer::new(impairment, 42);
        let (total, mut lost, mut twice, mut copies) = (100_000u32, 0u32, 0u32, 0u32);
        let (mut min, mut max, mut sum) = (Duration::MAX, Duration::ZERO, Duration::ZERO);
        for _ in 0..total {
            let fate = impairer.decide();
            match fate {
                Fate::Lost => lost += 1,
                Fate::Once(_) => {}
                Fate::Twice(..) => twice += 1,
            }
            for delay in fate.delays() {
                assert!(
                    (impairment.delay..=impairment.delay + impairment.jitter).contains(&delay),
                    "{delay:?}"
                );
                min = min.min(delay);
                max = max.max(delay);
                sum += delay;
                copies += 1;
            }
        }
        // Standard deviations: 0.00095 for the loss, 0.00073 for duplicates among survivors.
        let loss = f64::from(lost) / f64::from(total);
        assert!((loss - 0.1).abs() < 0.005, "loss {loss}");
        let duplicate = f64::from(twice) / f64::from(total - lost);
        assert!((duplicate - 0.05).abs() < 0.005, "duplicate {duplicate}");
        assert_eq!(copies, total - lost + twice);
        // The jitter is spread over its whole range, evenly.
        assert!(min < 10 * MS + Duration::from_micros(50), "{min:?}");
        assert!(max > 15 * MS - Duration::from_micros(50), "{max:?}");
        let mean = sum / copies;
        assert!(mean.abs_diff(12_500 * Duration::from_micros(1)) < 50 * Duration::from_micros(1));
    }

    #[test]
    fn impairer_none_passes_everything_at_once() {
        let mut impairer = Impairer::new(Impairment::NONE, 1);
        for _ in 0..100_000 {
            assert_eq!(impairer.decide(), Fate::Once(Duration::ZERO));
        }
    }

    #[test]
    fn impairer_certainties_and_changes() {
        let mut impairer = Impairer::new(
            Impairment {
                loss: 1.0,
                ..Impairment::NONE
            },
            3,
        );
        assert!((0..10_000).all(|_| impairer.decide() == Fate::Lost));
        let duplicate = Impairment {
            duplicate: 1.0,
            delay: 5 * MS,
            ..Impairment::NONE
        };
        impairer.set(duplicate);
        assert_eq!(impairer.impairment(), duplicate);
        assert!((0..10_000).all(|_| impairer.decide() == Fate::Twice(5 * MS, 5 * MS)));
    }

    #[test]
    fn impairer_is_deterministic_given_the_seed() {
        let impairment = Impairment {
            loss: 0.3,
            duplicate: 0.3,
            delay: MS,
            jitter: 10 * MS,
        };
        let fates = |seed| {
            let mut impairer = Impairer::new(impairment, seed);
            (0..1000).map(|_| impairer.decide()).collect::<Vec<_>>()
        };
        assert_eq!(fates(9), fates(9));
        assert_ne!(fates(9), fates(10));
    }

    #[test]
    fn scheduler_orders_by_due_instant() {
        let t0 = Instant::now();
        let mut queue = Scheduler::new();
        assert!(queue.is_empty());
        assert_eq!(queue.next_due(), None);
        assert_eq!(queue.pop_due(t0 + Duration::from_secs(100)), None);
        queue.push(t0, 30 * MS, "c");
        queue.push(t0, 10 * MS, "a");
        queue.push(t0 + 5 * MS, 15 * MS, "b"); // due at 20 ms
        assert_eq!(queue.len(), 3);
        assert_eq!(queue.next_due(), Some(t0 + 10 * MS));
        assert_eq!(queue.pop_due(t0), None);
        assert_eq!(queue.pop_due(t0 + 9 * MS), None);
        assert_eq!(queue.pop_due(t0 + 10 * MS), Some("a"));
        assert_eq!(queue.next_due(), Some(t0 + 20 * MS));
        // Late: everything due comes out, earliest first.
        assert_eq!(queue.pop_due(t0 + 50 * MS), Some("b"));
        assert_eq!(queue.pop_due(t0 + 50 * MS), Some("c"));
        assert_eq!(queue.pop_due(t0 + 50 * MS), None);
        assert!(queue.is_empty());
    }

    #[test]
    fn scheduler_keeps_arrival_order_among_equal_due_instants() {
        let t0 = Instant::now();
        let mut queue = Scheduler::new();
        for i in 0..1000 {
            // Two due instants, interleaved: each must come out in push order.
            queue.push(t0, if i % 2 == 0 { 2 * MS } else { MS }, i);
        }
        queue.push(t0 + MS, Duration::ZERO, 1000); // due with the odd ones, pushed last
        let now = t0 + 2 * MS;
        let out: Vec<i32> = std::iter::from_fn(|| queue.pop_due(now)).collect();
        let odd = (1..1000).step_by(2).chain([1000]);
        let even = (0..1000).step_by(2);
        assert_eq!(out, odd.chain(even).collect::<Vec<_>>());
    }

    #[test]
    fn scheduler_saturates_delays_it_cannot_represent() {
        let t0 = Instant::now();
        let mut queue = Scheduler::new();
        queue.push(t0, Duration::MAX, ());
        assert!(queue.next_due().is_some_and(|due| due > t0));
        assert_eq!(queue.pop_due(t0 + Duration::from_secs(3600)), None);
    }

    // --- the proxy on loopback ---

    /// What the echo server received, from whom, in order.
    type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

    /// A UDP echo server that remembers who sent what.
    struct Echo {
        addr: SocketAddr,
        seen: Seen,
        task: AbortHandle,
    }

    impl Echo {
        async fn start() -> Echo {
            let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
            enlarge_recv_buffer(&socket, LISTENER_RECV_BUFFER);
            let addr = socket.local_addr().unwrap();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            let task = tokio::spawn(async move {
                let mut buf = vec![0u8; RECV_BUFFER];
                loop {
                    let (len, peer) = socket.recv_from(&mut buf).await.unwrap();
                    log.lock().unwrap().push((peer, buf[..len].to_vec()));
                    socket.send_to(&buf[..len], peer).await.unwrap();
                }
            })
            .abort_handle();
            Echo { addr, seen, task }
        }

        fn seen(&self) -> Vec<(SocketAddr, Vec<u8>)> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    async fn client(proxy: &ImpairProxy) -> UdpSocket {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        enlarge_recv_buffer(&socket, LISTENER_RECV_BUFFER);
        socket.connect(proxy.local_addr()).await.unwrap();
        socket
    }

    async fn recv(socket: &UdpSocket) -> Vec<u8> {
        let mut buf = vec![0u8; RECV_BUFFER];
        let len = tokio::time::timeout(DEADLINE, socket.recv(&mut buf))
            .await
            .expect("no datagram came back")
            .unwrap();
        buf.truncate(len);
        buf
    }

    fn payload(i: u32) -> [u8; 4] {
        i.to_be_bytes()
    }

    /// Polls `condition` until it holds, or panics with its last complaint at the deadline.
    async fn wait_for(what: &str, mut condition: impl FnMut() -> Result<(), String>) {
        let start = Instant::now();
        loop {
            match condition() {
                Ok(()) => return,
                Err(last) if start.elapsed() > DEADLINE => panic!("{what}: {last}"),
                Err(_) => tokio::time::sleep(5 * MS).await,
            }
        }
    }

    /// Waits until `n` datagrams were received from clients and nothing is in flight anywhere.
    async fn wait_settled(proxy: &ImpairProxy, n: u64) -> ProxyStats {
        wait_for("the proxy settles", || {
            let s = proxy.stats();
            let settled = s.to_upstream.received == n
                && s.to_upstream.in_flight() == 0
                && s.to_client.in_flight() == 0;
            if settled {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        proxy.stats()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unimpaired_every_datagram_comes_back_once_in_order() {
        let echo = Echo::start().await;
        let proxy = ImpairProxy::start(echo.addr, Impairment::NONE, 1)
            .await
            .unwrap();
        let socket = client(&proxy).await;
        let n = 1000u32;
        let mut replies = Vec::new();
        // In windows, so that no socket buffer can overflow on a busy machine.
        for window in (0..n).collect::<Vec<_>>().chunks(50) {
            for &i in window {
                socket.send(&payload(i)).await.unwrap();
            }
            for _ in window {
                replies.push(recv(&socket).await);
            }
        }
        let expected: Vec<Vec<u8>> = (0..n).map(|i| payload(i).to_vec()).collect();
        assert_eq!(replies, expected);
        let stats = wait_settled(&proxy, u64::from(n)).await;
        let clean = DirectionStats {
            received: u64::from(n),
            delivered: u64::from(n),
            ..DirectionStats::default()
        };
        assert_eq!(stats.to_upstream, clean);
        assert_eq!(stats.to_client, clean);
        assert_eq!((stats.flows, stats.open_flows), (1, 1));
        let seen: Vec<Vec<u8>> = echo.seen().into_iter().map(|(_, b)| b).collect();
        assert_eq!(seen, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn total_loss_drops_everything_until_healed() {
        let echo = Echo::start().await;
        let lossy = Impairment {
            loss: 1.0,
            ..Impairment::NONE
        };
        let proxy = ImpairProxy::start(echo.addr, lossy, 2).await.unwrap();
        let socket = client(&proxy).await;
        let n = 200u32;
        for i in 0..n {
            socket.send(&payload(i)).await.unwrap();
        }
        let stats = wait_settled(&proxy, u64::from(n)).await;
        assert_eq!(stats.to_upstream.dropped, u64::from(n));
        assert_eq!(stats.to_upstream.delivered, 0);
        assert_eq!(stats.to_client, DirectionStats::default());
        assert!(echo.seen().is_empty());

        proxy.set_impairment(Impairment::NONE);
        socket.send(b"healed").await.unwrap();
        assert_eq!(recv(&socket).await, b"healed");
        assert_eq!(echo.seen().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn duplication_sends_every_datagram_twice() {
        let echo = Echo::start().await;
        let twice = Impairment {
            duplicate: 1.0,
            ..Impairment::NONE
        };
        let proxy = ImpairProxy::start(echo.addr, twice, 3).await.unwrap();
        let socket = client(&proxy).await;
        let n = 200u32;
        for i in 0..n {
            socket.send(&payload(i)).await.unwrap();
        }
        // Each of the echo's 2n replies is duplicated too.
        wait_for("every copy delivered both ways", || {
            let s = proxy.stats();
            let done = s.to_upstream.delivered == 2 * u64::from(n)
                && s.to_client.delivered == 4 * u64::from(n);
            if done { Ok(()) } else { Err(format!("{s:?}")) }
        })
        .await;
        let stats = wait_settled(&proxy, u64::from(n)).await;
        assert_eq!(stats.to_upstream.duplicated, u64::from(n));
        assert_eq!(stats.to_upstream.delivered, 2 * u64::from(n));
        assert_eq!(stats.to_upstream.reordered, 0);
        assert_eq!(stats.to_client.received, 2 * u64::from(n));
        assert_eq!(stats.to_client.delivered, 4 * u64::from(n));
        let mut counts = BTreeMap::new();
        for (_, bytes) in echo.seen() {
            *counts.entry(bytes).or_insert(0) += 1;
        }
        let expected: BTreeMap<Vec<u8>, i32> = (0..n).map(|i| (payload(i).to_vec(), 2)).collect();
        assert_eq!(counts, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jitter_reorders_without_losing_anything() {
        let echo = Echo::start().await;
        let jittery = Impairment {
            delay: 20 * MS,
            jitter: 20 * MS,
            ..Impairment::NONE
        };
        let proxy = ImpairProxy::start(echo.addr, jittery, 4).await.unwrap();
        let socket = client(&proxy).await;
        let n = 300u32;
        for i in 0..n {
            socket.send(&payload(i)).await.unwrap();
        }
        wait_for("every datagram delivered both ways", || {
            let s = proxy.stats();
            let done =
                s.to_upstream.delivered == u64::from(n) && s.to_client.delivered == u64::from(n);
            if done { Ok(()) } else { Err(format!("{s:?}")) }
        })
        .await;
        let stats = proxy.stats();
        assert!(stats.to_upstream.reordered > 0, "{stats:?}");
        assert!(stats.to_client.reordered > 0, "{stats:?}");
        assert_eq!(stats.to_upstream.dropped + stats.to_client.dropped, 0);
        let mut replies = HashSet::new();
        for _ in 0..n {
            replies.insert(recv(&socket).await);
        }
        let expected: HashSet<Vec<u8>> = (0..n).map(|i| payload(i).to_vec()).collect();
        assert_eq!(replies, expected);
        let arrival: Vec<Vec<u8>> = echo.seen().into_iter().map(|(_, b)| b).collect();
        let sent: Vec<Vec<u8>> = (0..n).map(|i| payload(i).to_vec()).collect();
        assert_ne!(arrival, sent, "the echo server saw them in sending order");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_client_is_its_own_flow() {
        let echo = Echo::start().await;
        let proxy = ImpairProxy::start(echo.addr, Impairment::NONE, 5)
            .await
            .unwrap();
        let a = client(&proxy).await;
        let b = client(&proxy).await;
        for _ in 0..3 {
            a.send(b"from a").await.unwrap();
            assert_eq!(recv(&a).await, b"from a");
            b.send(b"from b").await.unwrap();
            assert_eq!(recv(&b).await, b"from b");
        }
        let seen = echo.seen();
        let peers_of = |payload: &[u8]| -> HashSet<SocketAddr> {
            seen.iter()
                .filter(|(_, b)| b == payload)
                .map(|(peer, _)| *peer)
                .collect()
        };
        let (pa, pb) = (peers_of(b"from a"), peers_of(b"from b"));
        assert_eq!((pa.len(), pb.len()), (1, 1), "{seen:?}");
        assert_ne!(pa, pb);
        let clients = [a.local_addr().unwrap(), b.local_addr().unwrap()];
        assert!(pa.union(&pb).all(|peer| !clients.contains(peer)));
        let stats = proxy.stats();
        assert_eq!((stats.flows, stats.open_flows), (2, 2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_flows_are_closed_and_reopened() {
        let echo = Echo::start().await;
        let proxy = ImpairProxy::start_with_idle(echo.addr, Impairment::NONE, 6, 200 * MS)
            .await
            .unwrap();
        let socket = client(&proxy).await;
        socket.send(b"one").await.unwrap();
        assert_eq!(recv(&socket).await, b"one");
        wait_for("the idle flow is closed", || {
            let s = proxy.stats();
            if s.open_flows == 0 {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
        socket.send(b"two").await.unwrap();
        assert_eq!(recv(&socket).await, b"two");
        let stats = proxy.stats();
        assert_eq!((stats.flows, stats.open_flows), (2, 1));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_absent_upstream_is_counted_not_fatal() {
        // A port nobody listens on: sends fail or vanish, the flow's socket sees "refused".
        let unused = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let upstream = unused.local_addr().unwrap();
        drop(unused);
        let proxy = ImpairProxy::start(upstream, Impairment::NONE, 7)
            .await
            .unwrap();
        let socket = client(&proxy).await;
        for i in 0..50 {
            socket.send(&payload(i)).await.unwrap();
        }
        let stats = wait_settled(&proxy, 50).await;
        assert_eq!(
            stats.to_upstream.delivered + stats.to_upstream.send_errors,
            50
        );
        // Still forwarding: a server now listening on that port gets the next datagram.
        let echo = UdpSocket::bind(upstream).await.unwrap();
        socket.send(b"later").await.unwrap();
        let mut buf = [0u8; 16];
        let (len, _) = tokio::time::timeout(DEADLINE, echo.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..len], b"later");
    }

    #[tokio::test]
    async fn start_rejects_an_invalid_impairment() {
        let bad = Impairment {
            loss: 2.0,
            ..Impairment::NONE
        };
        let upstream = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
        let err = ImpairProxy::start(upstream, bad, 0).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
