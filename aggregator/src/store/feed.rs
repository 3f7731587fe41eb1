//! The committed-event feed: after each group commit, the writer publishes every newly stored
//! batch (never a duplicate) on a bounded broadcast channel, in commit order.
//!
//! Publishing never waits: a subscriber that does not keep up falls behind, the channel drops
//! the oldest batches for it, and [`FeedSubscriber::recv`] turns that into
//! [`FeedItem::FellBehind`] (counted, per subscriber and for the whole feed), then reads what it
//! missed back from the [`EventStore`] ([`FeedItem::Missed`]) before it goes on with the batches
//! still in the channel. Nothing is seen twice and nothing is skipped, because every batch carries
//! the cursors of its events ([`CommittedBatch::start`]) and the subscriber remembers the cursor
//! it has seen up to.
//!
//! A subscriber sees what is committed after it subscribed. Call order: [`Feed::subscribe`]
//! (or [`crate::store::StoreWriter::subscribe`]), then [`FeedSubscriber::recv`] in a loop until
//! it answers `Ok(None)` (the writer stopped). A store error during catch-up is returned, and the
//! next `recv` tries again from where it was.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use outpost_common::event::Event;
use tokio::sync::broadcast;

use super::{Cursor, EventQuery, EventStore, RegistryUpdate, StoreError, StoredEvent};

/// Registry updates held per subscriber of [`Feed::registry_updates`]: room for the Hellos of a
/// fleet of ten thousand reconnecting at once (a few megabytes at most).
const REGISTRY_CAPACITY: usize = 16_384;

/// Events read back per page during catch-up.
const CATCH_UP_PAGE: usize = 1000;

/// One batch as committed: new, stored once, with the cursors its events got.
#[derive(Debug, Clone, PartialEq)]
pub struct CommittedBatch {
    pub agent_id: String,
    pub spool_id: u64,
    pub seq: u64,
    /// When the aggregator received it.
    pub received_ns: i64,
    /// The cursor of the first event; the others follow one by one.
    pub start: Cursor,
    pub events: Vec<Event>,
}

impl CommittedBatch {
    /// The cursor after the batch's last event.
    pub fn end(&self) -> Cursor {
        self.start.advance(self.events.len())
    }
}

/// What [`FeedSubscriber::recv`] hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedItem {
    /// A batch just committed.
    Committed(Arc<CommittedBatch>),
    /// The subscriber did not keep up and the feed dropped this many batches for it; their
    /// events follow as [`FeedItem::Missed`].
    FellBehind { batches: u64 },
    /// Events of dropped batches, read back from the store in commit order.
    Missed(Vec<StoredEvent>),
}

/// A cloneable handle to subscribe to the feed.
#[derive(Clone)]
pub struct Feed {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("lagged", &self.lagged())
            .finish_non_exhaustive()
    }
}

struct Shared {
    /// Held while publishing and while subscribing, so a new subscriber's starting cursor and
    /// the first batch it receives agree.
    state: Mutex<State>,
    events: Arc<dyn EventStore>,
    /// Batches dropped for slow subscribers, over all of them.
    lagged: AtomicU64,
    /// Registry updates applied (Hello and heartbeats only): lossy, for consumers that want
    /// the latest of each agent's (the rules engine's clock skew), not every one.
    registry: broadcast::Sender<Arc<RegistryUpdate>>,
}

struct State {
    /// `None` once the writer has stopped.
    sender: Option<broadcast::Sender<Arc<CommittedBatch>>>,
    /// The cursor after the last published batch (or the store's end when the feed began).
    end: Cursor,
}

/// The writer's side of the feed.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher").finish_non_exhaustive()
    }
}

/// Makes a feed holding up to `capacity` batches (at least one) per subscriber, starting at
/// `end`, the event store's end before the first commit.
pub(crate) fn channel(
    events: Arc<dyn EventStore>,
    capacity: usize,
    end: Cursor,
) -> (Publisher, Feed) {
    let (sender, _) = broadcast::channel(capacity.max(1));
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            sender: Some(sender),
            end,
        }),
        events,
        lagged: AtomicU64::new(0),
        registry: broadcast::channel(REGISTRY_CAPACITY).0,
    });
    (
        Publisher {
            shared: Arc::clone(&shared),
        },
        Feed { shared },
    )
}

impl Publisher {
    /// Publishes one committed batch; never waits.
    pub(crate) fn publish(&self, batch: CommittedBatch) {
        let mut state = self.shared.lock();
        state.end = state.end.max(batch.end());
        if let Some(sender) = &state.sender {
            // No subscriber is no error: nobody is interested yet.
            let _ = sender.send(Arc::new(batch));
        }
    }
}

impl Publisher {
    /// Publishes the Hello and heartbeat updates of a registry write that was applied; never
    /// waits.
    pub(crate) fn publish_registry(&self, updates: &[RegistryUpdate]) {
        for u in updates {
            if matches!(
                u,
                RegistryUpdate::Hello { .. } | RegistryUpdate::Heartbeat { .. }
            ) {
                // No subscriber is no error.
                let _ = self.shared.registry.send(Arc::new(u.clone()));
            }
        }
    }
}

impl Drop for Publisher {
    /// Ends the feed: subscribers get what is still queued, then `Ok(None)`.
    fn drop(&mut self) {
        self.shared.lock().sender = None;
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Feed {
    /// A subscriber that sees every batch committed from now on.
    pub fn subscribe(&self) -> FeedSubscriber {
        let state = self.shared.lock();
        let rx = state.sender.as_ref().map(broadcast::Sender::subscribe);
        FeedSubscriber {
            rx,
            shared: Arc::clone(&self.shared),
            seen_to: state.end,
            catch_up: None,
            lagged: 0,
        }
    }

    /// A subscriber that first reads back every event from `from` up to what is committed now
    /// (as [`FeedItem::Missed`], with no [`FeedItem::FellBehind`] before), then sees every batch
    /// committed after: a consumer that kept the cursor it had evaluated up to resumes there
    /// after a restart. A `from` at or past the feed's end is the same as [`subscribe`].
    ///
    /// [`subscribe`]: Feed::subscribe
    pub fn subscribe_from(&self, from: Cursor) -> FeedSubscriber {
        let mut subscriber = self.subscribe();
        if from < subscriber.seen_to {
            subscriber.catch_up = Some(CatchUp {
                then: None,
                until: Some(subscriber.seen_to),
            });
            subscriber.seen_to = from;
        }
        subscriber
    }

    /// Hello and heartbeat updates applied to the registry from now on. Lossy: a receiver that
    /// falls behind loses the oldest (its `recv` says how many).
    pub fn registry_updates(&self) -> broadcast::Receiver<Arc<RegistryUpdate>> {
        self.shared.registry.subscribe()
    }

    /// Batches dropped for slow subscribers so far, over all of them.
    pub fn lagged(&self) -> u64 {
        self.shared.lagged.load(Ordering::Relaxed)
    }
}

/// One consumer of the feed. See the module documentation for the call order.
pub struct FeedSubscriber {
    /// `None` when subscribed after the writer stopped.
    rx: Option<broadcast::Receiver<Arc<CommittedBatch>>>,
    shared: Arc<Shared>,
    /// Every event before this cursor has been handed out (or committed before subscribing).
    seen_to: Cursor,
    catch_up: Option<CatchUp>,
    lagged: u64,
}

impl std::fmt::Debug for FeedSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeedSubscriber")
            .field("seen_to", &self.seen_to)
            .field("lagged", &self.lagged)
            .finish_non_exhaustive()
    }
}

/// Reading back what was dropped: events from `seen_to` up to the first batch still in the
/// channel, then that batch.
#[derive(Debug)]
struct CatchUp {
    /// `None` until taken from the channel; `Some(None)` if the feed ended meanwhile.
    then: Option<Option<Arc<CommittedBatch>>>,
    /// Read back up to here, then go on with the channel: a subscriber that started behind
    /// ([`Feed::subscribe_from`]) rather than fell behind.
    until: Option<Cursor>,
}

impl FeedSubscriber {
    /// The next item: a committed batch, or after falling behind, the count and then the
    /// missed events. `Ok(None)` once the writer has stopped and everything was handed out.
    ///
    /// Cancel-safe: a call dropped before it answers changes nothing, so it can wait in a
    /// `select!` beside a shutdown signal.
    pub async fn recv(&mut self) -> Result<Option<FeedItem>, StoreError> {
        if let Some(CatchUp {
            until: Some(until), ..
        }) = self.catch_up
        {
            let page = self.read_back(Some(until)).await?;
            if let Some(last) = page.last() {
                self.seen_to = last.cursor.advance(1);
                return Ok(Some(FeedItem::Missed(page)));
            }
            self.catch_up = None;
        }
        if let Some(catch_up) = &mut self.catch_up {
            let then = match &catch_up.then {
                Some(then) => then.clone(),
                None => {
                    let then = next_held(&mut self.rx, &self.shared, &mut self.lagged).await;
                    catch_up.then = Some(then.clone());
                    then
                }
            };
            let page = self.read_back(then.as_ref().map(|b| b.start)).await?;
            if let Some(last) = page.last() {
                self.seen_to = last.cursor.advance(1);
                return Ok(Some(FeedItem::Missed(page)));
            }
            self.catch_up = None;
            return Ok(then.map(|batch| self.hand_out(batch)));
        }
        let Some(rx) = &mut self.rx else {
            return Ok(None);
        };
        match rx.recv().await {
            Ok(batch) => Ok(Some(self.hand_out(batch))),
            Err(broadcast::error::RecvError::Closed) => Ok(None),
            Err(broadcast::error::RecvError::Lagged(batches)) => {
                count_lag(&self.shared, &mut self.lagged, batches);
                self.catch_up = Some(CatchUp {
                    then: None,
                    until: None,
                });
                Ok(Some(FeedItem::FellBehind { batches }))
            }
        }
    }

    /// Batches this subscriber was dropped so far.
    pub fn lagged(&self) -> u64 {
        self.lagged
    }

    /// Every event before this cursor has been handed out.
    pub fn seen_to(&self) -> Cursor {
        self.seen_to
    }

    fn hand_out(&mut self, batch: Arc<CommittedBatch>) -> FeedItem {
        self.seen_to = self.seen_to.max(batch.end());
        FeedItem::Committed(batch)
    }

    /// One page of events from `seen_to` up to `until`, read on a blocking thread.
    async fn read_back(&self, until: Option<Cursor>) -> Result<Vec<StoredEvent>, StoreError> {
        let query = EventQuery {
            from: self.seen_to,
            until,
            limit: CATCH_UP_PAGE,
            ..EventQuery::default()
        };
        let events = Arc::clone(&self.shared.events);
        tokio::task::spawn_blocking(move || events.events(&query))
            .await
            .map_err(|e| StoreError::backend("reading back missed events", e))?
            .map(|page| page.events)
    }
}

/// The oldest batch the channel still holds (at hand at once after a lag: the channel is full),
/// counting any further lag; `None` if the feed has ended.
async fn next_held(
    rx: &mut Option<broadcast::Receiver<Arc<CommittedBatch>>>,
    shared: &Shared,
    lagged: &mut u64,
) -> Option<Arc<CommittedBatch>> {
    let rx = rx.as_mut()?;
    loop {
        match rx.recv().await {
            Ok(batch) => return Some(batch),
            Err(broadcast::error::RecvError::Lagged(more)) => count_lag(shared, lagged, more),
            Err(broadcast::error::RecvError::Closed) => return None,
        }
    }
}

fn count_lag(shared: &Shared, lagged: &mut u64, batches: u64) {
    *lagged += batches;
    shared.lagged.fetch_add(batches, Ordering::Relaxed);
    tracing::warn!(
        batches,
        "A feed subscriber fell behind; it catches up from the store."
    );
}
