//! `/metrics`: the aggregator's own figures in the Prometheus text format.
//!
//! The API counts its requests (by route, method and status) and times them (by route) as they
//! happen; what ingest, the store writer and the store keep is read at each scrape through a
//! [`Figures`] source and set on counters and gauges of the same registry, so one encoder writes
//! everything.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// One figure read at a scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// Counters end in `_total`.
    pub name: &'static str,
    pub help: &'static str,
    /// At most one label (`reason`, …) and its value.
    pub label: Option<(&'static str, &'static str)>,
    pub value: u64,
    pub kind: Kind,
}

/// A counter only grows; a gauge is a level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
}

/// Reads the figures of the rest of the aggregator.
pub type Figures = Box<dyn Fn() -> Vec<Figure> + Send + Sync>;

/// The registry and the API's own metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    durations: HistogramVec,
    logins: IntCounterVec,
    source: Mutex<Option<Figures>>,
    /// Counters and gauges of the figures, by name, made at their first scrape.
    counters: Mutex<std::collections::HashMap<&'static str, IntCounterVec>>,
    gauges: Mutex<std::collections::HashMap<&'static str, IntGaugeVec>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "outpost_api_requests_total",
                "API requests answered, by route, method and status.",
            ),
            &["route", "method", "status"],
        )
        .unwrap_or_else(|e| unreachable!("a valid metric: {e}"));
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "outpost_api_request_duration_seconds",
                "Time to answer API requests, by route.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("a valid metric: {e}"));
        let logins = IntCounterVec::new(
            Opts::new(
                "outpost_console_logins_total",
                "Sign-ins to the web console, by outcome (ok, refused).",
            ),
            &["outcome"],
        )
        .unwrap_or_else(|e| unreachable!("a valid metric: {e}"));
        for outcome in ["ok", "refused"] {
            logins.with_label_values(&[outcome]);
        }
        for m in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(durations.clone()),
            Box::new(logins.clone()),
        ] {
            if let Err(e) = registry.register(m) {
                tracing::error!(error = %e, "cannot register an API metric");
            }
        }
        Metrics {
            registry,
            requests,
            durations,
            logins,
            source: Mutex::new(None),
            counters: Mutex::new(std::collections::HashMap::new()),
            gauges: Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// Adds metrics kept elsewhere (the store writer's latency histograms) to what is rendered.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::error!(error = %e, "cannot register a metric");
        }
    }

    /// Where the rest of the aggregator's figures are read at each scrape.
    pub fn set_source(&self, source: Figures) {
        *self.source.lock().unwrap_or_else(PoisonError::into_inner) = Some(source);
    }

    /// Counts one answered request.
    pub fn observe(&self, route: &str, method: &str, status: u16, took: Duration) {
        self.requests
            .with_label_values(&[route, method, &status.to_string()])
            .inc();
        self.durations
            .with_label_values(&[route])
            .observe(took.as_secs_f64());
    }

    /// Counts one sign-in to the console.
    pub fn console_login(&self, ok: bool) {
        self.logins
            .with_label_values(&[if ok { "ok" } else { "refused" }])
            .inc();
    }

    /// Everything, in the Prometheus text format.
    pub fn render(&self) -> String {
        let figures = self
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|read| read())
            .unwrap_or_default();
        for f in figures {
            self.set(&f);
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn set(&self, f: &Figure) {
        let (label_names, label_values): (Vec<&str>, Vec<&str>) = match f.label {
            Some((name, value)) => (vec![name], vec![value]),
            None => (Vec::new(), Vec::new()),
        };
        let value = i64::try_from(f.value).unwrap_or(i64::MAX);
        match f.kind {
            Kind::Counter => {
                let mut all = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
                let Some(vec) = self.family(&mut all, f, &label_names, IntCounterVec::new) else {
                    return;
                };
                let c = vec.with_label_values(&label_values);
                // The source only grows; the counter follows it.
                let now = c.get();
                c.inc_by(f.value.saturating_sub(now));
            }
            Kind::Gauge => {
                let mut all = self.gauges.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(vec) = self.family(&mut all, f, &label_names, IntGaugeVec::new) {
                    vec.with_label_values(&label_values).set(value);
                }
            }
        }
    }

    /// The family of `f`, made and registered the first time.
    fn family<V>(
        &self,
        all: &mut std::collections::HashMap<&'static str, V>,
        f: &Figure,
        labels: &[&str],
        make: impl Fn(Opts, &[&str]) -> prometheus::Result<V>,
    ) -> Option<V>
    where
        V: prometheus::core::Collector + Clone + 'static,
    {
        if let Some(v) = all.get(f.name) {
            return Some(v.clone());
        }
        let made = make(Opts::new(f.name, f.help), labels)
            .and_then(|v| self.registry.register(Box::new(v.clone())).map(|()| v));
        match made {
            Ok(v) => {
                all.insert(f.name, v.clone());
                Some(v)
            }
            Err(e) => {
                tracing::error!(metric = f.name, error = %e, "cannot register a metric");
                None
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The figures of ingest, the store writer and the store, as `/metrics` shows them.
pub fn aggregator_figures(
    ingest: &crate::internal_events::Counters,
    writer: &crate::store::WriterStats,
    retention: &crate::store::retention::RetentionFigures,
    store_bytes: u64,
    alerting: Option<&crate::alerts::AlertingSnapshot>,
) -> Vec<Figure> {
    let counter = |name, help, value| Figure {
        name,
        help,
        label: None,
        value,
        kind: Kind::Counter,
    };
    let deleted = |kind, value| Figure {
        name: "outpost_retention_deleted_events_total",
        help: "Events retention deleted for being older than their kind's period, by kind.",
        label: Some(("kind", kind)),
        value,
        kind: Kind::Counter,
    };
    let by_backend = |name, help, backend, value| Figure {
        name,
        help,
        label: Some(("backend", backend)),
        value,
        kind: Kind::Counter,
    };
    let refused = |reason, value| Figure {
        name: "outpost_ingest_refused_total",
        help: "Connections, messages and batches ingest refused, by reason.",
        label: Some(("reason", reason)),
        value,
        kind: Kind::Counter,
    };
    let enrollments = |outcome, value| Figure {
        name: "outpost_enrollments_total",
        help: "Enrollment connections answered, by outcome: issued, refused (a reason was sent \
               and audited) or malformed (no valid request; closed).",
        label: Some(("outcome", outcome)),
        value,
        kind: Kind::Counter,
    };
    let renewals = |outcome, value| Figure {
        name: "outpost_certificate_renewals_total",
        help: "Certificate renewals asked on agent sessions, by outcome: issued or refused.",
        label: Some(("outcome", outcome)),
        value,
        kind: Kind::Counter,
    };
    let mut figures = vec![
        Figure {
            name: "outpost_agents_connected",
            help: "Agents with an established session now.",
            label: None,
            value: ingest
                .agents_connected
                .saturating_sub(ingest.agents_disconnected),
            kind: Kind::Gauge,
        },
        counter(
            "outpost_agent_sessions_total",
            "Agent sessions established since the aggregator started.",
            ingest.agents_connected,
        ),
        counter(
            "outpost_batches_stored_total",
            "Batches stored for the first time.",
            ingest.batches_stored,
        ),
        counter(
            "outpost_events_stored_total",
            "Events in the batches stored.",
            ingest.events_stored,
        ),
        counter(
            "outpost_batches_duplicate_total",
            "Batches acknowledged again because they were stored before.",
            ingest.batches_duplicate,
        ),
        counter(
            "outpost_heartbeats_total",
            "Agent heartbeats received.",
            ingest.heartbeats,
        ),
        refused(
            "connection",
            ingest
                .connections_refused
                .saturating_sub(ingest.connections_shed),
        ),
        refused("busy", ingest.connections_shed),
        refused("hello", ingest.hellos_rejected),
        refused("hello_timeout", ingest.hello_timeouts),
        refused("malformed_frame", ingest.frames_malformed),
        refused("protocol_violation", ingest.protocol_violations),
        refused("batch", ingest.batches_rejected),
        refused("revoked", ingest.connections_revoked),
        enrollments("issued", ingest.enrollments_issued),
        enrollments("refused", ingest.enrollments_refused),
        enrollments("malformed", ingest.enrollments_malformed),
        renewals("issued", ingest.renewals_issued),
        renewals("refused", ingest.renewals_refused),
        by_backend(
            "outpost_store_transactions_total",
            "Event-store transactions of batches (group commits), committed or failed, by backend.",
            writer.events_backend,
            writer.transactions,
        ),
        by_backend(
            "outpost_store_failed_transactions_total",
            "Event-store transactions of batches that failed, by backend; each failed batch was \
             refused, not acknowledged, and its agent sends it again.",
            writer.events_backend,
            writer.failed_transactions,
        ),
        by_backend(
            "outpost_state_writes_total",
            "Registry writes to the state store, applied or failed, by backend.",
            writer.state_backend,
            writer.registry_writes,
        ),
        by_backend(
            "outpost_state_failed_writes_total",
            "Registry writes to the state store that failed, by backend.",
            writer.state_backend,
            writer.failed_registry_writes,
        ),
        counter(
            "outpost_fim_trail_breaks_total",
            "Breaks found in agents' file-integrity trails.",
            writer.fim_trail_breaks,
        ),
        counter(
            "outpost_feed_dropped_batches_total",
            "Committed batches the live feed dropped for a reader that fell behind (the alerting \
             engine); that reader reads them back from the store.",
            writer.feed_lagged,
        ),
        counter(
            "outpost_retention_passes_total",
            "Retention passes finished.",
            retention.passes,
        ),
        counter(
            "outpost_retention_failures_total",
            "Retention passes that failed part-way (they resume at the next interval).",
            retention.failures,
        ),
        Figure {
            name: "outpost_retention_last_pass_timestamp_seconds",
            help: "When the last retention pass ended, seconds since the epoch (0: none yet).",
            label: None,
            value: u64::try_from(retention.last_pass_ns / 1_000_000_000).unwrap_or(0),
            kind: Kind::Gauge,
        },
        deleted("metric", retention.done.metric),
        deleted("log", retention.done.log),
        deleted("fim", retention.done.fim),
        deleted("status", retention.done.status),
        counter(
            "outpost_retention_dedup_entries_deleted_total",
            "Deduplication entries retention forgot (below a low-water mark, or of spools long gone).",
            retention.done.dedup_entries,
        ),
        counter(
            "outpost_metric_points_packed_total",
            "Metric points packed from rows into per-series chunks.",
            retention.done.metric_points_packed,
        ),
        counter(
            "outpost_metric_chunks_written_total",
            "Per-series chunks of metric points written.",
            retention.done.metric_chunks_written,
        ),
        counter(
            "outpost_metric_series_pruned_total",
            "Metric series deleted by retention for having no point left.",
            retention.done.metric_series_pruned,
        ),
        Figure {
            name: "outpost_store_bytes",
            help: "Bytes the store's files take on disk (database and log).",
            label: None,
            value: store_bytes,
            kind: Kind::Gauge,
        },
    ];
    if let Some(a) = alerting {
        figures.extend(alerting_figures(a));
    }
    figures
}

/// When the server certificate agents see expires (`0`: unknown), for an alert before it does.
pub fn server_certificate_figure(not_after_ns: i64) -> Figure {
    Figure {
        name: "outpost_server_certificate_expiry_timestamp_seconds",
        help: "When the aggregator's server certificate in use expires, seconds since the epoch.",
        label: None,
        value: u64::try_from(not_after_ns / 1_000_000_000).unwrap_or(0),
        kind: Kind::Gauge,
    }
}

/// Alerting's figures: rules, alerts by state, events evaluated and notification attempts.
fn alerting_figures(a: &crate::alerts::AlertingSnapshot) -> Vec<Figure> {
    let gauge = |name, help, label, value| Figure {
        name,
        help,
        label,
        value,
        kind: Kind::Gauge,
    };
    let counter = |name, help, label, value| Figure {
        name,
        help,
        label,
        value,
        kind: Kind::Counter,
    };
    let attempts = |outcome, value| {
        counter(
            "outpost_notification_attempts_total",
            "Attempts to send a notification, by outcome: sent, retry (a network error, 429 or \
             5xx; tried again later) or failed (another error, or given up).",
            Some(("outcome", outcome)),
            value,
        )
    };
    let alerts = |state, value| {
        gauge(
            "outpost_alerts",
            "Alerts the rules hold now, by state.",
            Some(("state", state)),
            value,
        )
    };
    vec![
        gauge(
            "outpost_rules_loaded",
            "Rules the alerting engine runs.",
            None,
            a.rules,
        ),
        counter(
            "outpost_rule_reloads_total",
            "Rule reloads that took.",
            None,
            a.reloads,
        ),
        counter(
            "outpost_rule_reload_failures_total",
            "Rule reloads refused for a bad file (the previous rules kept running).",
            None,
            a.reload_failures,
        ),
        counter(
            "outpost_rule_events_evaluated_total",
            "Committed events the alerting engine evaluated.",
            None,
            a.events_evaluated,
        ),
        counter(
            "outpost_rule_feed_fell_behind_total",
            "Times the alerting engine fell behind the live feed of committed batches and read \
             the events back from the store.",
            None,
            a.fell_behind,
        ),
        counter(
            "outpost_rule_events_read_back_total",
            "Events the alerting engine read from the store instead of the live feed: after \
             falling behind, or catching up at start (also in \
             outpost_rule_events_evaluated_total).",
            None,
            a.read_back,
        ),
        gauge(
            "outpost_alerting_leader",
            "1 while this aggregator runs alerting (with several aggregators sharing a state \
             store, the one holding the alerting lease), 0 while another one does.",
            None,
            a.leading,
        ),
        counter(
            "outpost_alerting_lease_terms_total",
            "Times this aggregator took the alerting lease.",
            None,
            a.lease_terms,
        ),
        counter(
            "outpost_rule_commits_passed_over_total",
            "Batches whose commit began but never completed, passed over by the alerting engine \
             following every aggregator's commits (their resends were evaluated).",
            None,
            a.passed_over,
        ),
        alerts("pending", a.pending),
        alerts("firing", a.firing),
        attempts("sent", a.sent),
        attempts("retry", a.retried),
        attempts("failed", a.failed),
    ]
}

/// Bytes of the store's database and its WAL.
pub fn store_bytes(db: &std::path::Path) -> u64 {
    let size = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    size(db) + size(std::path::Path::new(&wal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_follow_their_source_and_requests_are_counted() {
        let m = Metrics::new();
        let value = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(3));
        let read = std::sync::Arc::clone(&value);
        m.set_source(Box::new(move || {
            vec![
                Figure {
                    name: "outpost_things_total",
                    help: "Things.",
                    label: Some(("reason", "odd")),
                    value: read.load(std::sync::atomic::Ordering::Relaxed),
                    kind: Kind::Counter,
                },
                Figure {
                    name: "outpost_level",
                    help: "A level.",
                    label: None,
                    value: 7,
                    kind: Kind::Gauge,
                },
            ]
        }));
        m.observe("/api/v1/agents", "GET", 200, Duration::from_millis(3));
        let text = m.render();
        assert!(
            text.contains("outpost_things_total{reason=\"odd\"} 3"),
            "{text}"
        );
        assert!(text.contains("outpost_level 7"), "{text}");
        assert!(
            text.contains(
                "outpost_api_requests_total{method=\"GET\",route=\"/api/v1/agents\",status=\"200\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("outpost_api_request_duration_seconds_bucket{route=\"/api/v1/agents\",le=\"0.005\"} 1"), "{text}");
        value.store(10, std::sync::atomic::Ordering::Relaxed);
        assert!(
            m.render()
                .contains("outpost_things_total{reason=\"odd\"} 10")
        );
    }
}
