//! Prometheus metrics of the server (one registry per server instance, so tests can run several).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by protocol and outcome (personal, cold_start, degraded, bad_request).
    pub requests: IntCounterVec,
    /// End-to-end latency by protocol.
    pub latency: HistogramVec,
    /// Per-stage latency (postgres, vector_store, rerank).
    pub stage: HistogramVec,
    /// Cache lookups by cache and result (hit, miss).
    pub cache: IntCounterVec,
    /// Degraded answers by reason.
    pub degraded: IntCounterVec,
    /// The ingest watermark last seen.
    pub watermark: IntGauge,
    /// How many events the host answers read from (a hot standby) is behind the primary's
    /// watermark (0 when reads go to the primary).
    pub read_lag_events: IntGauge,
    /// Operations running per stage (admission control).
    pub in_flight: IntGaugeVec,
    /// Requests queued per stage.
    pub queued: IntGaugeVec,
    /// The in-flight limit per stage.
    pub limit: IntGaugeVec,
    /// Requests a stage refused (their answers degraded at once), by stage and reason.
    pub shed: IntCounterVec,
    /// Vector-store calls per answered request (cache hits make none).
    pub store_calls: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new(variant: &str) -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(
            Some("lazyrec_server".into()),
            Some([("variant".to_string(), variant.to_string())].into()),
        )?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Recommendation requests by protocol and outcome"),
            &["protocol", "outcome"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("request_seconds", "Recommendation latency inside the server")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["protocol"],
        )?;
        let stage = HistogramVec::new(
            HistogramOpts::new("stage_seconds", "Latency of the request path's stages")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let cache = IntCounterVec::new(
            Opts::new("cache_requests_total", "Cache lookups by cache and result"),
            &["cache", "result"],
        )?;
        let degraded = IntCounterVec::new(
            Opts::new("degraded_total", "Answers degraded to the popularity list, by reason"),
            &["reason"],
        )?;
        let watermark = IntGauge::new("data_watermark", "The ingest watermark (last event id) last seen")?;
        let read_lag_events = IntGauge::new(
            "db_read_lag_events",
            "Events the host reads go to (a hot standby) is behind the primary's ingest watermark",
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new("stage_in_flight", "Operations running per stage (admission control)"),
            &["stage"],
        )?;
        let queued = IntGaugeVec::new(Opts::new("stage_queued", "Requests waiting for a stage's slot"), &["stage"])?;
        let limit = IntGaugeVec::new(Opts::new("stage_limit", "The in-flight limit of a stage"), &["stage"])?;
        let shed = IntCounterVec::new(
            Opts::new("shed_total", "Requests a stage refused under overload (answered degraded at once)"),
            &["stage", "reason"],
        )?;
        let store_calls = Histogram::with_opts(
            HistogramOpts::new("store_calls", "Vector-store calls one request made (cache hits make none)")
                .buckets(vec![0.0, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0]),
        )?;
        registry.register(Box::new(store_calls.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        registry.register(Box::new(limit.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(stage.clone()))?;
        registry.register(Box::new(cache.clone()))?;
        registry.register(Box::new(degraded.clone()))?;
        registry.register(Box::new(watermark.clone()))?;
        registry.register(Box::new(read_lag_events.clone()))?;
        Ok(Self {
            registry,
            requests,
            latency,
            stage,
            cache,
            degraded,
            watermark,
            read_lag_events,
            in_flight,
            queued,
            limit,
            shed,
            store_calls,
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ignored = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a cache lookup.
    pub fn cache_lookup(&self, cache: &str, hit: bool) {
        self.cache.with_label_values(&[cache, if hit { "hit" } else { "miss" }]).inc();
    }
}
