//! Metrics served at `/metrics` in Prometheus text format: wake durations per engine, wakes
//! and suspends, warm-pool hits and misses, and the proxy's backend-connection pool counters.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dormouse_engines::EngineKind;
use dormouse_proxy::mysql::state::PinReason;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineLabel {
    pub engine: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub engine: String,
    pub outcome: String,
}

fn wake_histogram() -> Histogram {
    // 1 ms to about a minute.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

pub struct Metrics {
    registry: Mutex<Registry>,
    wake_seconds: Family<EngineLabel, Histogram, fn() -> Histogram>,
    wakes: Family<OutcomeLabels, Counter>,
    suspends: Family<EngineLabel, Counter>,
    warm_pool: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn engine(kind: EngineKind) -> EngineLabel {
    EngineLabel { engine: kind.as_str().into() }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("dormouse");
        let wake_seconds =
            Family::<EngineLabel, Histogram, fn() -> Histogram>::new_with_constructor(
                wake_histogram as fn() -> Histogram,
            );
        let wakes = Family::<OutcomeLabels, Counter>::default();
        let suspends = Family::<EngineLabel, Counter>::default();
        let warm_pool = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "wake_seconds",
            "Time from a wake request to a ready server",
            wake_seconds.clone(),
        );
        registry.register("wakes", "Wakes of suspended databases, by outcome", wakes.clone());
        registry.register("suspends", "Databases suspended", suspends.clone());
        registry.register(
            "warm_pool",
            "Instance provisions served from the warm pool (hit) or made on demand (miss)",
            warm_pool.clone(),
        );
        Self { registry: Mutex::new(registry), wake_seconds, wakes, suspends, warm_pool }
    }

    pub fn woke(&self, kind: EngineKind, took: Duration) {
        self.wake_seconds.get_or_create(&engine(kind)).observe(took.as_secs_f64());
        self.wakes
            .get_or_create(&OutcomeLabels { engine: kind.as_str().into(), outcome: "ok".into() })
            .inc();
    }

    pub fn wake_failed(&self, kind: EngineKind) {
        self.wakes
            .get_or_create(&OutcomeLabels {
                engine: kind.as_str().into(),
                outcome: "failed".into(),
            })
            .inc();
    }

    pub fn suspended(&self, kind: EngineKind) {
        self.suspends.get_or_create(&engine(kind)).inc();
    }

    pub fn provisioned(&self, kind: EngineKind, warm: bool) {
        let outcome = if warm { "hit" } else { "miss" };
        self.warm_pool
            .get_or_create(&OutcomeLabels { engine: kind.as_str().into(), outcome: outcome.into() })
            .inc();
    }

    /// How many wakes succeeded for `kind` (for tests and the benchmark).
    pub fn wakes_ok(&self, kind: EngineKind) -> u64 {
        self.wakes
            .get_or_create(&OutcomeLabels { engine: kind.as_str().into(), outcome: "ok".into() })
            .get()
    }

    /// Adds the proxy's MySQL backend pool to what is reported.
    pub fn add_backend_pool(&self, pool: Arc<dormouse_proxy::mysql::pool::Pool>) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        registry.register_collector(Box::new(PoolCollector(pool)));
    }

    pub fn render(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// Reads the proxy pool's own counters at scrape time.
struct PoolCollector(Arc<dormouse_proxy::mysql::pool::Pool>);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = &self.0.stats;
        let counters = [
            ("backend_pool_hits", "MySQL backend connections lent from the pool", &stats.hits),
            (
                "backend_pool_misses",
                "MySQL backend connections opened because none was idle",
                &stats.misses,
            ),
            (
                "backend_pool_returned",
                "MySQL backend connections given back for reuse",
                &stats.returned,
            ),
            (
                "backend_pool_discarded",
                "Backend connections closed instead of kept",
                &stats.discarded,
            ),
            (
                "backend_pool_expired",
                "Idle backend connections found dead or too old",
                &stats.expired,
            ),
            (
                "backend_pool_waits",
                "Clients that waited because every backend connection was busy",
                &stats.waits,
            ),
            (
                "backend_pool_timeouts",
                "Clients that waited for a backend connection in vain",
                &stats.timeouts,
            ),
            (
                "backend_pool_taken_aside",
                "MySQL connections set aside for a client's warnings, taken by a waiting client",
                &stats.taken_aside,
            ),
        ];
        for (name, help, value) in counters {
            let counter = ConstCounter::new(value.load(Ordering::Relaxed));
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut pins = encoder.encode_descriptor(
            "mysql_pins",
            "MySQL client sessions pinned to their backend connection, by reason",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for reason in PinReason::ALL {
            let counter = ConstCounter::new(stats.pins[reason as usize].load(Ordering::Relaxed));
            let labels = [("reason", reason.label())];
            counter.encode(pins.encode_family(&labels)?)?;
        }
        let idle = ConstGauge::new(self.0.idle_count() as i64);
        idle.encode(encoder.encode_descriptor(
            "backend_pool_idle",
            "Idle pooled backend connections",
            None,
            idle.metric_type(),
        )?)?;
        Ok(())
    }
}
