//! Health checks of the backends: `GET /ready` on every backend each `health.interval_ms`, with
//! rise/fall thresholds (forwarded requests count as failures too, in the request path).

use crate::backend;
use crate::core::Lb;
use proto::contract::Variant;

/// One round of checks over every backend (concurrently); updates health with the rise/fall
/// thresholds, or directly when `initial`.
pub async fn check_all(lb: &Lb, initial: bool) {
    let routing = lb.routing.load_full();
    let backends = routing.all_backends();
    let timeout = std::time::Duration::from_millis(lb.config.health.timeout_ms);
    let results = futures_util::future::join_all(backends.iter().map(|b| backend::ready(&lb.client, b, timeout))).await;
    let h = &lb.config.health;
    for (backend, ok) in backends.iter().zip(results) {
        if initial {
            backend.set_healthy(ok);
        } else if ok && backend.record_success(h.rise) {
            tracing::info!(backend = %backend.url, "backend healthy again");
        } else if !ok && backend.record_failure(h.fall) {
            tracing::warn!(backend = %backend.url, "backend failed its health checks: unhealthy");
        }
    }
    for v in [Variant::Main, Variant::Nightly] {
        for b in routing.backends(v) {
            lb.metrics.backend_healthy.with_label_values(&[&b.url, v.as_str()]).set(i64::from(b.healthy()));
            lb.metrics.backend_in_flight.with_label_values(&[&b.url, v.as_str()]).set(b.in_flight() as i64);
        }
    }
}
