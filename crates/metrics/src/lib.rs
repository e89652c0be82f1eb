//! The process's Prometheus metrics, through `prometheus-client`: the
//! families each crate adds to (records by outcome, step and run
//! durations, HTTP requests by status, cache events), the gauges a scrape
//! sets from the store (runs by state, schedule lag), and their text.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

/// Label pairs, in a fixed order.
pub type Labels = Vec<(&'static str, String)>;

type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Every family syncd reports.
pub struct Metrics {
    /// `syncd_records_total{tenant, integration, entity, direction,
    /// outcome}`: records read and their outcomes (created, updated,
    /// unchanged, failed, conflicts, deleted, ...), as the run summary
    /// counts them.
    pub records: Family<Labels, Counter>,
    /// `syncd_step_duration_seconds{integration, entity, direction}`.
    pub step_seconds: Histograms,
    /// `syncd_run_duration_seconds{integration, state}`: runs that ended.
    pub run_seconds: Histograms,
    /// `syncd_runs{state}`: runs in the store by state (set by a scrape).
    pub runs: Family<Labels, Gauge>,
    /// `syncd_conflicts_pending`: conflicts waiting for a reviewer (set
    /// by a scrape).
    pub conflicts_pending: Gauge,
    /// `syncd_schedule_lag_seconds{tenant, integration}`: how late each
    /// schedule's next tick is (0 when it is not due yet; set by a scrape).
    pub schedule_lag: Family<Labels, Gauge<f64, AtomicU64>>,
    /// `syncd_last_success_timestamp_seconds{tenant, integration}`: when
    /// the integration's last run that succeeded ended (Unix seconds; set
    /// by a scrape, for integrations that have one).
    pub last_success: Family<Labels, Gauge<f64, AtomicU64>>,
    /// `syncd_failing{tenant, integration}`: 1 while the integration's
    /// last ended run that failed ended after its last that succeeded, 0
    /// otherwise (set by a scrape).
    pub failing: Family<Labels, Gauge>,
    /// `syncd_cache_events_total{event}`: hits, misses, fallbacks.
    pub cache: Family<Labels, Counter>,
    /// `syncd_http_requests_total{system, status}`: requests to APIs by
    /// the status they ended with (`error` when no answer came).
    pub http_requests: Family<Labels, Counter>,
    /// `syncd_http_retries_total{system}`: requests sent again.
    pub http_retries: Family<Labels, Counter>,
    registry: Registry,
}

fn durations() -> Histogram {
    // 10 ms to about 5.5 hours.
    Histogram::new(exponential_buckets(0.01, 2.0, 21))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let mut registry = Registry::with_prefix("syncd");
    let records = Family::<Labels, Counter>::default();
    let step_seconds = Histograms::new_with_constructor(durations);
    let run_seconds = Histograms::new_with_constructor(durations);
    let runs = Family::<Labels, Gauge>::default();
    let conflicts_pending = Gauge::default();
    let schedule_lag = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let failing = Family::<Labels, Gauge>::default();
    let cache = Family::<Labels, Counter>::default();
    let http_requests = Family::<Labels, Counter>::default();
    let http_retries = Family::<Labels, Counter>::default();
    registry.register(
        "records",
        "Records read by sync steps, and their outcomes",
        records.clone(),
    );
    registry.register("step_duration_seconds", "Time a step took", step_seconds.clone());
    registry.register(
        "run_duration_seconds",
        "Time an ended run took",
        run_seconds.clone(),
    );
    registry.register("runs", "Runs in the state store by state", runs.clone());
    registry.register(
        "conflicts_pending",
        "Conflicts waiting for a reviewer",
        conflicts_pending.clone(),
    );
    registry.register(
        "schedule_lag_seconds",
        "How late each schedule's next tick is",
        schedule_lag.clone(),
    );
    registry.register(
        "last_success_timestamp_seconds",
        "When each integration's last run that succeeded ended",
        last_success.clone(),
    );
    registry.register(
        "failing",
        "1 while an integration's last ended run failed after its last success",
        failing.clone(),
    );
    registry.register(
        "cache_events",
        "Mapping cache hits, misses and fallbacks",
        cache.clone(),
    );
    registry.register(
        "http_requests",
        "Requests to APIs by final status",
        http_requests.clone(),
    );
    registry.register(
        "http_retries",
        "Requests to APIs sent again",
        http_retries.clone(),
    );
    Metrics {
        records,
        step_seconds,
        run_seconds,
        runs,
        conflicts_pending,
        schedule_lag,
        last_success,
        failing,
        cache,
        http_requests,
        http_retries,
        registry,
    }
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Every metric in Prometheus's text format (OpenMetrics).
pub fn text() -> String {
    let mut out = String::new();
    encode(&mut out, &METRICS.registry).expect("writing to a String cannot fail");
    out
}

/// The content type of [`text`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_written_with_their_labels() {
        let m = metrics();
        let labels = vec![("tenant", "t1".to_owned()), ("outcome", "created".to_owned())];
        m.records.get_or_create(&labels).inc_by(3);
        m.runs
            .get_or_create(&vec![("state", "succeeded".into())])
            .set(10_001);
        m.step_seconds
            .get_or_create(&vec![("entity", "account".into())])
            .observe(0.25);
        let text = text();
        assert!(
            text.contains(r#"syncd_records_total{tenant="t1",outcome="created"} 3"#),
            "{text}"
        );
        assert!(text.contains(r#"syncd_runs{state="succeeded"} 10001"#), "{text}");
        assert!(
            text.contains(r#"syncd_step_duration_seconds_count{entity="account"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
