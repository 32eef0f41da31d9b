//! The request path shared by the HTTP and gRPC fronts: assign the user, forward to a backend
//! of the assigned variant (failing over to other backends, then the other variant, within the
//! deadline), fall back to the cached popularity list, and log exactly one history row.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use chrono::Utc;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::assign::{self, Variant};
use crate::config::Config;
use crate::history::{HistoryLog, Inputs, Row};
use crate::metrics::Metrics;
use crate::routing::{Backend, Routing, SharedRouting};

/// One recommended movie.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Course movie id.
    pub movie_id: String,
    /// The model's score (the fallback list has rank-based scores).
    pub score: f64,
}

/// A server's JSON answer (the fields the load balancer uses).
#[derive(Debug, Deserialize)]
struct BackendAnswer {
    items: Vec<Item>,
    model_version: String,
    data_watermark: i64,
    kind: String,
    degraded: Option<String>,
}

/// The list served when no backend answers, with the watermark it was computed at.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fallback {
    /// Movie ids, most popular first.
    pub movies: Vec<String>,
    /// Ingest watermark of the list.
    pub watermark: i64,
}

/// A fresh request id: a random (v4) UUID from the thread-local generator (no system call per
/// request, unlike `Uuid::new_v4`).
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random::<[u8; 16]>()).into_uuid().to_string()
}

/// The model version reported for fallback answers.
pub const FALLBACK_MODEL: &str = "fallback:popularity";

/// What is sent back, whatever the protocol.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status (200, 400 for a bad request, 503 when nothing could answer).
    pub status: u16,
    /// The movies, best first.
    pub items: Vec<Item>,
    /// The load balancer's request id.
    pub request_id: String,
    /// The user's variant (None for rejected requests).
    pub assigned: Option<Variant>,
    /// main, nightly, fallback, or none.
    pub served: &'static str,
    /// The backend that answered.
    pub backend: Option<String>,
    /// The model version that answered.
    pub model_version: String,
    /// The data watermark of the answer.
    pub watermark: i64,
    /// personal, cold_start, degraded, fallback.
    pub kind: String,
    /// Why the answer is degraded.
    pub degraded: Option<String>,
    /// Why the request failed (400/503), or what failed before the answer.
    pub error: Option<String>,
}

enum Reply {
    Answer(BackendAnswer),
    /// The backend refused the request (4xx): passed on, no failover.
    Refused(u16, String),
}

/// The load balancer's shared state.
pub struct Lb {
    /// The configuration it started with.
    pub config: Config,
    /// The routing table (lock-free reads).
    pub routing: SharedRouting,
    /// Metrics.
    pub metrics: Metrics,
    /// The response log.
    pub history: HistoryLog,
    /// Postgres (history, fallback list, admin records).
    pub pool: PgPool,
    fallback: ArcSwap<Fallback>,
    client: Client<HttpConnector, Empty<Bytes>>,
    next: AtomicUsize,
}

impl std::fmt::Debug for Lb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lb").field("experiment", &self.routing.load().experiment).finish()
    }
}

/// The HTTP client used for backends (pooled keep-alive connections, no Nagle delay).
pub fn backend_client() -> Client<HttpConnector, Empty<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(200)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

impl Lb {
    /// Assembles the shared state.
    pub fn new(
        config: Config,
        routing: SharedRouting,
        metrics: Metrics,
        history: HistoryLog,
        pool: PgPool,
        fallback: Fallback,
    ) -> Self {
        Self {
            config,
            routing,
            metrics,
            history,
            pool,
            fallback: ArcSwap::from_pointee(fallback),
            client: backend_client(),
            next: AtomicUsize::new(0),
        }
    }

    /// The fallback list in effect.
    pub fn fallback(&self) -> Arc<Fallback> {
        self.fallback.load_full()
    }

    /// Replaces the fallback list (ignored when empty: an old list beats none).
    pub fn set_fallback(&self, fallback: Fallback) {
        if !fallback.movies.is_empty() {
            self.fallback.store(Arc::new(fallback));
        }
    }

    /// The backends to try, best first: healthy ones of the assigned variant (rotating), then
    /// healthy ones of the other, then — only if none is healthy — enabled unhealthy ones
    /// (health can be stale). Drained backends are never tried.
    fn candidates(&self, routing: &Routing, assigned: Variant) -> Vec<(Variant, Arc<Backend>)> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let rotated = |v: Variant| {
            let list = routing.backends(v);
            let n = list.len().max(1);
            (0..list.len()).map(move |i| (v, list[(start + i) % n].clone()))
        };
        let mut out: Vec<(Variant, Arc<Backend>)> = Vec::with_capacity(4);
        for v in [assigned, assigned.other()] {
            out.extend(rotated(v).filter(|(_, b)| b.enabled() && b.healthy()));
        }
        if out.is_empty() {
            for v in [assigned, assigned.other()] {
                out.extend(rotated(v).filter(|(_, b)| b.enabled()));
            }
        }
        out
    }

    /// Forwards to one backend. Without `scores` the server's text answer (the course contract)
    /// is used, with its provenance from the headers: the cheapest path for both processes.
    async fn forward(
        &self,
        backend: &Backend,
        user_id: i64,
        limit: usize,
        request_id: &str,
        scores: bool,
    ) -> Result<Reply, String> {
        let uri = format!("{}/recommend/{user_id}?limit={limit}", backend.url);
        let accept = if scores { "application/json" } else { "text/plain" };
        let request = hyper::Request::get(uri)
            .header(hyper::header::ACCEPT, accept)
            .header("x-request-id", request_id)
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let response = self.client.request(request).await.map_err(|e| format!("connect: {e}"))?;
        let status = response.status().as_u16();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
        match status {
            200 if scores => serde_json::from_slice(&body).map(Reply::Answer).map_err(|e| format!("body: {e}")),
            200 => {
                let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
                let line = std::str::from_utf8(&body).map_err(|e| format!("body: {e}"))?;
                Ok(Reply::Answer(BackendAnswer {
                    items: line
                        .trim()
                        .split(',')
                        .filter(|m| !m.is_empty())
                        .map(|m| Item { movie_id: m.to_string(), score: 0.0 })
                        .collect(),
                    model_version: header("x-model-version").unwrap_or_default().to_string(),
                    data_watermark: header("x-data-watermark").and_then(|v| v.parse().ok()).unwrap_or(0),
                    kind: header("x-recommendation-kind").unwrap_or_default().to_string(),
                    degraded: header("x-degraded").map(str::to_string),
                }))
            }
            400..=499 => Ok(Reply::Refused(status, String::from_utf8_lossy(&body).trim().to_string())),
            _ => Err(format!("status: {status}")),
        }
    }

    /// Serves one request: forward with failover, else the fallback list; logs the response.
    /// `scores`: the caller wants the model's scores (JSON / gRPC), not only the ids.
    pub async fn recommend(
        &self,
        user_id: i64,
        limit: usize,
        scores: bool,
        protocol: &'static str,
        client_id: Option<String>,
    ) -> Answer {
        let started = Instant::now();
        let ts = Utc::now();
        let request_id = new_request_id();
        let routing = self.routing.load_full();
        let (bucket, assigned) = assign::assign(&routing.experiment, routing.effective_share(), user_id);
        let deadline = started + self.config.deadline();
        let attempt = Duration::from_millis(self.config.attempt_timeout_ms);
        let candidates = self.candidates(&routing, assigned);
        let mut failures: Vec<String> = Vec::new();
        let mut answer = None;
        for (i, (variant, backend)) in candidates.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            let budget = if i + 1 == candidates.len() { remaining } else { attempt.min(remaining) };
            let outcome =
                tokio::time::timeout(budget, self.forward(backend, user_id, limit, &request_id, scores)).await;
            let failure = match outcome {
                Ok(Ok(reply)) => {
                    backend.record_answer();
                    answer = Some((*variant, backend.clone(), reply));
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => format!("timeout: no answer within {} ms", budget.as_millis()),
            };
            let reason = failure.split(':').next().unwrap_or("error");
            self.metrics.errors.with_label_values(&[variant.as_str(), reason]).inc();
            if backend.record_failure(self.config.health.fall) {
                tracing::warn!(backend = %backend.url, variant = variant.as_str(), %failure, "backend marked unhealthy");
            }
            failures.push(format!("{} {}: {failure}", variant.as_str(), backend.url));
        }
        let error = (!failures.is_empty()).then(|| failures.join("; "));
        let mut out = match answer {
            Some((variant, backend, Reply::Answer(a))) => {
                if variant != assigned {
                    self.metrics.failovers.with_label_values(&[assigned.as_str()]).inc();
                }
                backend.answered.fetch_add(1, Ordering::Relaxed);
                Answer {
                    status: 200,
                    items: a.items,
                    request_id,
                    assigned: Some(assigned),
                    served: variant.as_str(),
                    backend: Some(backend.url.clone()),
                    model_version: a.model_version,
                    watermark: a.data_watermark,
                    kind: a.kind,
                    degraded: a.degraded,
                    error,
                }
            }
            Some((variant, backend, Reply::Refused(status, reason))) => Answer {
                status,
                items: Vec::new(),
                request_id,
                assigned: Some(assigned),
                served: variant.as_str(),
                backend: Some(backend.url.clone()),
                model_version: String::new(),
                watermark: 0,
                kind: "rejected".into(),
                degraded: None,
                error: Some(reason),
            },
            None => self.fallback_answer(request_id, assigned, limit, error),
        };
        let latency = started.elapsed();
        let row = Row {
            request_id: out.request_id.clone(),
            ts,
            user_id: Some(user_id),
            experiment: Some(routing.experiment.clone()),
            assigned_variant: Some(assigned.as_str().to_string()),
            served_variant: out.served.to_string(),
            backend: out.backend.clone(),
            release_id: match out.served {
                "main" => routing.release_id(Variant::Main),
                "nightly" => routing.release_id(Variant::Nightly),
                _ => None,
            },
            model_version: (!out.model_version.is_empty()).then(|| out.model_version.clone()),
            data_watermark: (out.status == 200).then_some(out.watermark),
            status: i32::from(out.status),
            latency_us: latency.as_micros() as i64,
            movie_ids: out.items.iter().map(|i| i.movie_id.clone()).collect(),
            degraded: out.degraded.is_some(),
            error: out.error.clone(),
            inputs: Some(Inputs {
                protocol: protocol.into(),
                limit: Some(limit),
                kind: Some(out.kind.clone()),
                client_request_id: client_id,
            }),
            bucket: Some(bucket),
        };
        self.observe(out.served, out.status, latency);
        self.history.record(row).await;
        out.error = out.error.filter(|_| out.status != 200);
        out
    }

    fn fallback_answer(&self, request_id: String, assigned: Variant, limit: usize, error: Option<String>) -> Answer {
        let fallback = self.fallback();
        let error = error.unwrap_or_else(|| "no enabled backend".into());
        if fallback.movies.is_empty() {
            return Answer {
                status: 503,
                items: Vec::new(),
                request_id,
                assigned: Some(assigned),
                served: "fallback",
                backend: None,
                model_version: String::new(),
                watermark: 0,
                kind: "unavailable".into(),
                degraded: None,
                error: Some(format!("no backend answered and no fallback list is cached ({error})")),
            };
        }
        self.metrics.fallbacks.inc();
        let n = fallback.movies.len() as f64;
        Answer {
            status: 200,
            items: fallback
                .movies
                .iter()
                .take(limit)
                .enumerate()
                .map(|(rank, m)| Item { movie_id: m.clone(), score: 1.0 - rank as f64 / n })
                .collect(),
            request_id,
            assigned: Some(assigned),
            served: "fallback",
            backend: None,
            model_version: FALLBACK_MODEL.into(),
            watermark: fallback.watermark,
            kind: "fallback".into(),
            degraded: Some("no backend answered".into()),
            error: Some(error),
        }
    }

    /// Answers and logs a request that cannot be served (bad user id or limit): 400.
    pub async fn reject(&self, reason: String, protocol: &'static str, client_id: Option<String>) -> Answer {
        let started = Instant::now();
        let request_id = new_request_id();
        let row = Row {
            request_id: request_id.clone(),
            ts: Utc::now(),
            user_id: None,
            experiment: None,
            assigned_variant: None,
            served_variant: "none".into(),
            backend: None,
            release_id: None,
            model_version: None,
            data_watermark: None,
            status: 400,
            latency_us: started.elapsed().as_micros() as i64,
            movie_ids: Vec::new(),
            degraded: false,
            error: Some(reason.clone()),
            inputs: Some(Inputs { protocol: protocol.into(), limit: None, kind: None, client_request_id: client_id }),
            bucket: None,
        };
        self.observe("none", 400, started.elapsed());
        self.history.record(row).await;
        Answer {
            status: 400,
            items: Vec::new(),
            request_id,
            assigned: None,
            served: "none",
            backend: None,
            model_version: String::new(),
            watermark: 0,
            kind: "rejected".into(),
            degraded: None,
            error: Some(reason),
        }
    }

    fn observe(&self, served: &str, status: u16, latency: Duration) {
        self.metrics.requests.with_label_values(&[served, &status.to_string()]).inc();
        self.metrics.latency.with_label_values(&[served]).observe(latency.as_secs_f64());
    }

    /// Checks one backend (`GET /ready` within the health timeout).
    pub async fn check(&self, backend: &Backend) -> bool {
        let timeout = Duration::from_millis(self.config.health.timeout_ms);
        let uri = format!("{}/ready", backend.url);
        let Ok(request) = hyper::Request::get(uri).body(Empty::new()) else { return false };
        let probe = async {
            let response = self.client.request(request).await.ok()?;
            let ok = response.status().is_success();
            response.into_body().collect().await.ok()?;
            Some(ok)
        };
        matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
    }

    /// One round of health checks over every backend (concurrently); updates health with the
    /// rise/fall thresholds, or directly when `initial`.
    pub async fn check_all(&self, initial: bool) {
        let routing = self.routing.load_full();
        let backends = routing.all_backends();
        let results = futures_util::future::join_all(backends.iter().map(|b| self.check(b))).await;
        let h = &self.config.health;
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
                self.metrics.backend_healthy.with_label_values(&[&b.url, v.as_str()]).set(i64::from(b.healthy()));
            }
        }
    }
}
