//! Prometheus metrics of the load balancer (one registry per instance, so tests can run several).

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The load balancer's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Responses by served variant (main, nightly, fallback, none) and status code.
    pub requests: IntCounterVec,
    /// Latency seen by the client, by served variant.
    pub latency: HistogramVec,
    /// The series of `requests` (status 200) and `latency` for main, nightly and fallback,
    /// resolved once: looking a labelled series up hashes its labels, on every request.
    served_ok: [(&'static str, IntCounter, Histogram); 3],
    /// Failed attempts on a backend, by variant and reason (connect, timeout, status, body).
    pub errors: IntCounterVec,
    /// Requests served by the other variant than the assigned one, by assigned variant.
    pub failovers: IntCounterVec,
    /// Answers from the cached popularity list (no backend answered).
    pub fallbacks: IntCounter,
    /// 1 when a backend is healthy, by backend and variant.
    pub backend_healthy: IntGaugeVec,
    /// Response-log rows inserted into Postgres.
    pub history_written: IntCounter,
    /// Response-log rows that waited in the journal because Postgres failed (counted once per
    /// outage, when a shipment fails).
    pub history_deferred: IntCounter,
    /// Response-log rows lost (journal full or unwritable): must stay 0.
    pub history_dropped: IntCounter,
    /// Connections closed at once because the HTTP port had `front.max_connections` open.
    pub connections_refused: IntCounter,
    /// Connections open on the HTTP port.
    pub connections_open: IntGauge,
    /// The same rows by reason (`full`, `too_long`, `io`).
    pub history_refused: IntCounterVec,
    /// Rows per journal append (the requests that finished in one runtime turn share one).
    pub history_group_rows: Histogram,
    /// Journal lines skipped because they did not decode (a machine crash mid-append).
    pub history_journal_corrupt: IntCounter,
    /// Rows journaled and not yet in Postgres.
    pub history_pending: IntGauge,
    /// Journal bytes not yet in Postgres.
    pub history_journal_bytes: IntGauge,
    /// First sightings written to `user_model_map`.
    pub sightings: IntCounter,
    /// Attempts running per backend (sampled by the health checker).
    pub backend_in_flight: IntGaugeVec,
    /// Retries (attempts after a request's first) made.
    pub retries: IntCounter,
    /// Requests answered with the fallback list at once because of overload, by reason
    /// (`backend_busy`: every backend at its limit; `retry_budget`: a retry was needed and the
    /// budget was spent).
    pub shed: IntCounterVec,
    /// The fleet's routing version this replica serves (0: the configuration, Postgres not yet
    /// reached). Replicas of one fleet that disagree for long have lost Postgres.
    pub routing_version: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.6, 1.0];

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("lazyrec_lb".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "Responses by served variant and status code"),
            &["variant", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("request_seconds", "Latency of responses, by served variant")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["variant"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new("backend_errors_total", "Failed attempts on a backend, by variant and reason"),
            &["variant", "reason"],
        )?;
        let failovers = IntCounterVec::new(
            Opts::new("failovers_total", "Requests served by the other variant, by assigned variant"),
            &["assigned"],
        )?;
        let fallbacks = IntCounter::new("fallbacks_total", "Answers from the cached popularity list")?;
        let backend_healthy =
            IntGaugeVec::new(Opts::new("backend_healthy", "1 when the backend is healthy"), &["backend", "variant"])?;
        let history_written = IntCounter::new("history_rows_written_total", "Response-log rows inserted")?;
        let history_deferred = IntCounter::new(
            "history_rows_deferred_total",
            "Response-log rows that waited in the journal because Postgres failed",
        )?;
        let history_dropped = IntCounter::new("history_rows_dropped_total", "Response-log rows lost (must stay 0)")?;
        let connections_refused = IntCounter::new(
            "connections_refused_total",
            "HTTP connections closed at once: front.max_connections were open",
        )?;
        let connections_open = IntGauge::new("connections_open", "HTTP connections open")?;
        let history_group_rows = Histogram::with_opts(
            HistogramOpts::new("history_group_rows", "Response-log rows per journal append (one write(2) each)")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
        )?;
        let history_refused = IntCounterVec::new(
            Opts::new("history_rows_refused_total", "Response-log rows lost, by reason (full, too_long, io)"),
            &["reason"],
        )?;
        let history_journal_corrupt =
            IntCounter::new("history_journal_corrupt_lines_total", "Journal lines skipped after a crash mid-append")?;
        let history_pending =
            IntGauge::new("history_pending_rows", "Response-log rows journaled, not yet in Postgres")?;
        let history_journal_bytes = IntGauge::new("history_journal_bytes", "Journal bytes not yet in Postgres")?;
        let sightings = IntCounter::new("user_sightings_written_total", "First sightings written to user_model_map")?;
        let backend_in_flight = IntGaugeVec::new(
            Opts::new("backend_in_flight", "Attempts running on a backend (sampled)"),
            &["backend", "variant"],
        )?;
        let retries = IntCounter::new("retries_total", "Attempts after a request's first")?;
        let shed = IntCounterVec::new(
            Opts::new("shed_total", "Requests answered from the fallback list at once under overload, by reason"),
            &["reason"],
        )?;
        let routing_version = IntGauge::new("routing_version", "The fleet's routing version this replica serves")?;
        registry.register(Box::new(routing_version.clone()))?;
        registry.register(Box::new(backend_in_flight.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(failovers.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        registry.register(Box::new(backend_healthy.clone()))?;
        registry.register(Box::new(history_written.clone()))?;
        registry.register(Box::new(history_deferred.clone()))?;
        registry.register(Box::new(history_dropped.clone()))?;
        registry.register(Box::new(history_refused.clone()))?;
        registry.register(Box::new(history_group_rows.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(history_journal_corrupt.clone()))?;
        registry.register(Box::new(history_pending.clone()))?;
        registry.register(Box::new(history_journal_bytes.clone()))?;
        registry.register(Box::new(sightings.clone()))?;
        let served_ok = ["main", "nightly", "fallback"]
            .map(|served| (served, requests.with_label_values(&[served, "200"]), latency.with_label_values(&[served])));
        Ok(Self {
            registry,
            requests,
            latency,
            served_ok,
            errors,
            failovers,
            fallbacks,
            backend_healthy,
            history_written,
            history_deferred,
            history_dropped,
            history_refused,
            history_group_rows,
            connections_refused,
            connections_open,
            history_journal_corrupt,
            history_pending,
            history_journal_bytes,
            sightings,
            backend_in_flight,
            retries,
            shed,
            routing_version,
        })
    }

    /// Counts a response and observes its latency.
    pub fn observe_response(&self, served: &str, status: u16, latency_seconds: f64) {
        let resolved = (status == 200).then(|| self.served_ok.iter().find(|(label, ..)| *label == served)).flatten();
        match resolved {
            Some((_, requests, latency)) => {
                requests.inc();
                latency.observe(latency_seconds);
            }
            None => {
                self.requests.with_label_values(&[served, &status.to_string()]).inc();
                self.latency.with_label_values(&[served]).observe(latency_seconds);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ignored = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
