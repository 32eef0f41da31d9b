//! The request path shared by the HTTP and gRPC fronts: assign the user, forward to a backend
//! of the assigned variant (failing over to other backends, then the other variant, within the
//! deadline), fall back to the cached popularity list, and journal exactly one history row
//! before the answer goes back.
//!
//! The result is typed: a [`Handled`] request carries an [`Outcome`] whose HTTP status, gRPC
//! code and metric/history labels are exhaustive matches, never parsed strings.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use hyper::StatusCode;
use proto::contract::{self, Kind, RequestError, Served};
use sqlx::PgPool;

use crate::assign::{self, Variant};
use crate::backend::{self, AttemptError, BackendClient, Reply};
use crate::config::Config;
use crate::fallback::{FALLBACK_MODEL, FallbackList};
use crate::history::{HistoryLog, Inputs, Row};
use crate::metrics::Metrics;
use crate::overload::RetryBudget;
use crate::routing::{Backend, Routing, SharedRouting};

/// A fresh request id: a random (v4) UUID from the thread-local generator (no system call per
/// request, unlike `Uuid::new_v4`).
pub fn new_request_id() -> String {
    uuid::Builder::from_random_bytes(rand::random::<[u8; 16]>()).into_uuid().to_string()
}

/// The protocol a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// The HTTP front.
    Http,
    /// The gRPC front.
    Grpc,
}

impl Protocol {
    /// `http` or `grpc`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Why a request was answered from the fallback list without (further) attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shed {
    /// Every backend was at its concurrency limit.
    BackendBusy,
    /// An attempt failed and the retry budget was spent.
    RetryBudget,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Shed::BackendBusy => "backend_busy",
            Shed::RetryBudget => "retry_budget",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Shed::BackendBusy => "overloaded: every backend at its concurrency limit",
            Shed::RetryBudget => "overloaded: retry budget spent",
        }
    }
}

/// One failed attempt on a backend (recorded on the row of the request it delayed).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The variant tried.
    pub variant: Variant,
    /// The backend tried.
    pub backend: String,
    /// What went wrong.
    pub error: AttemptError,
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome {
    /// A backend of `variant` answered.
    Answered {
        /// The variant that answered.
        variant: Variant,
        /// The backend that answered.
        backend: Arc<Backend>,
        /// Its answer (request id and variants set by the load balancer).
        answer: contract::Answer,
    },
    /// A backend refused the request (a 4xx the load balancer's own checks did not catch).
    Refused {
        /// The variant of the backend.
        variant: Variant,
        /// The backend.
        backend: Arc<Backend>,
        /// Its status.
        status: StatusCode,
        /// Its reason.
        reason: String,
    },
    /// No backend answered: the cached popularity list.
    Fallback(contract::Answer),
    /// The request broke the input rules; nothing was routed.
    BadRequest(RequestError),
    /// No backend answered and no fallback list is cached.
    Unavailable,
}

/// A request handled: what goes back and what is logged.
#[derive(Debug)]
pub struct Handled {
    /// The load balancer's request id.
    pub request_id: String,
    /// The user's variant (None for rejected requests).
    pub assigned: Option<Variant>,
    /// How it ended.
    pub outcome: Outcome,
    /// Failed attempts before the outcome.
    pub failures: Vec<Attempt>,
}

impl Handled {
    /// The HTTP status of the response.
    pub fn http_status(&self) -> StatusCode {
        match &self.outcome {
            Outcome::Answered { .. } | Outcome::Fallback(_) => StatusCode::OK,
            Outcome::Refused { status, .. } => *status,
            Outcome::BadRequest(e) => e.http_status(),
            Outcome::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC code of the response.
    pub fn grpc_code(&self) -> tonic::Code {
        match &self.outcome {
            Outcome::Answered { .. } | Outcome::Fallback(_) => tonic::Code::Ok,
            Outcome::Refused { .. } => tonic::Code::InvalidArgument,
            Outcome::BadRequest(e) => e.grpc_code(),
            Outcome::Unavailable => tonic::Code::Unavailable,
        }
    }

    /// Who served it, for headers, metrics and the history row: main, nightly, fallback, none.
    pub fn served_label(&self) -> &'static str {
        match &self.outcome {
            Outcome::Answered { variant, .. } | Outcome::Refused { variant, .. } => variant.as_str(),
            Outcome::Fallback(_) | Outcome::Unavailable => Served::Fallback.as_str(),
            Outcome::BadRequest(_) => "none",
        }
    }

    /// The answer, when there is one.
    pub fn answer(&self) -> Option<&contract::Answer> {
        match &self.outcome {
            Outcome::Answered { answer, .. } | Outcome::Fallback(answer) => Some(answer),
            Outcome::Refused { .. } | Outcome::BadRequest(_) | Outcome::Unavailable => None,
        }
    }

    /// The answer, when there is one (consuming).
    pub fn into_answer(self) -> Option<contract::Answer> {
        match self.outcome {
            Outcome::Answered { answer, .. } | Outcome::Fallback(answer) => Some(answer),
            Outcome::Refused { .. } | Outcome::BadRequest(_) | Outcome::Unavailable => None,
        }
    }

    fn failures_text(&self) -> Option<String> {
        (!self.failures.is_empty()).then(|| {
            self.failures
                .iter()
                .map(|a| format!("{} {}: {}", a.variant.as_str(), a.backend, a.error))
                .collect::<Vec<_>>()
                .join("; ")
        })
    }

    /// Why the request failed (non-200), or what failed before the answer: the history row's
    /// `error` column.
    pub fn logged_error(&self) -> Option<String> {
        match &self.outcome {
            Outcome::Answered { .. } => self.failures_text(),
            Outcome::Fallback(answer) => {
                let reason = answer.degraded.as_deref().unwrap_or("no backend answered");
                Some(match self.failures_text() {
                    Some(failures) => format!("{reason}: {failures}"),
                    None => reason.to_string(),
                })
            }
            Outcome::Refused { reason, .. } => Some(reason.clone()),
            Outcome::BadRequest(e) => Some(e.to_string()),
            Outcome::Unavailable => Some(self.refusal()),
        }
    }

    /// The one-line reason sent to the client with a non-200 status.
    pub fn refusal(&self) -> String {
        match &self.outcome {
            Outcome::Answered { .. } | Outcome::Fallback(_) => String::new(),
            Outcome::Refused { reason, .. } => reason.clone(),
            Outcome::BadRequest(e) => e.to_string(),
            Outcome::Unavailable => format!(
                "no backend answered and no fallback list is cached ({})",
                self.failures_text().unwrap_or_else(|| "no enabled backend".into())
            ),
        }
    }
}

/// The shared state of the load balancer.
pub struct Lb {
    /// The validated configuration.
    pub config: Config,
    /// The routing table.
    pub routing: SharedRouting,
    /// Metrics.
    pub metrics: Metrics,
    /// The response log.
    pub history: HistoryLog,
    /// Postgres (fallback list, admin records).
    pub pool: PgPool,
    /// The fallback list.
    pub fallback: FallbackList,
    /// The backend client.
    pub client: BackendClient,
    /// Serialises routing swaps (admin changes, following the fleet's row).
    pub routing_sync: crate::fleet::RoutingSync,
    retry_budget: RetryBudget,
    next: AtomicUsize,
}

impl std::fmt::Debug for Lb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lb").field("experiment", &self.routing.load().experiment).finish()
    }
}

impl Lb {
    /// Assembles the shared state.
    pub fn new(
        config: Config,
        routing: SharedRouting,
        metrics: Metrics,
        history: HistoryLog,
        pool: PgPool,
        fallback: FallbackList,
    ) -> Self {
        let retry_budget = RetryBudget::new(config.overload.retry_ratio, config.overload.retry_min_per_second);
        Self {
            config,
            routing,
            metrics,
            history,
            pool,
            fallback,
            client: backend::client(),
            routing_sync: crate::fleet::RoutingSync::default(),
            retry_budget,
            next: AtomicUsize::new(0),
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

    /// Serves one request (input already validated): forward with failover, else the fallback
    /// list; journals the response's row before returning. `scores`: the caller wants the
    /// model's scores (JSON / gRPC), not only the ids.
    pub async fn recommend(
        &self,
        user_id: i64,
        limit: usize,
        scores: bool,
        protocol: Protocol,
        client_id: Option<String>,
    ) -> Handled {
        // No span per request (it cost 3 % of the load balancer's time under load): the few
        // events on this path name the request and user themselves.
        let started = Instant::now();
        let request_id = new_request_id();
        let routing = self.routing.load_full();
        // After the routing snapshot: a row stamped before a change's `applied_at` (taken before
        // the swap) was routed by the table before the change — experiment windows are exact.
        let ts = Utc::now();
        let (bucket, assigned) = assign::assign(&routing.experiment, routing.effective_share(), user_id);
        let deadline = started + self.config.deadline();
        let attempt = Duration::from_millis(self.config.attempt_timeout_ms);
        let candidates = self.candidates(&routing, assigned);
        let max_in_flight = self.config.overload.backend_max_in_flight;
        self.retry_budget.deposit();
        let mut failures: Vec<Attempt> = Vec::new();
        let mut outcome = None;
        let mut busy = false;
        let mut shed = None;
        for (i, (variant, backend)) in candidates.iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            // A backend at its limit is passed over (not a failure: it is busy, not broken).
            let Some(slot) = backend.claim(max_in_flight) else {
                busy = true;
                continue;
            };
            if !failures.is_empty() {
                if !self.retry_budget.try_withdraw() {
                    shed = Some(Shed::RetryBudget);
                    break;
                }
                self.metrics.retries.inc();
            }
            let budget = if i + 1 == candidates.len() { remaining } else { attempt.min(remaining) };
            // The attempt holds the backend's slot. When the budget runs out the request stops
            // waiting, but the attempt is not dropped: it moves to a task of its own, still reads
            // its answer and the connection stays pooled (a dropped HTTP/1 exchange closes its
            // connection: a new connect per late answer). Only late attempts pay for a task; a
            // hung backend cannot hold a slot for ever: a detached attempt ends at twice the deadline.
            let mut forward = Box::pin(backend::forward(
                self.client.clone(),
                backend.clone(),
                user_id,
                limit,
                request_id.clone(),
                scores,
                slot,
            ));
            let error = match tokio::time::timeout(budget, &mut forward).await {
                Ok(Ok(reply)) => {
                    backend.record_answer();
                    outcome = Some(match reply {
                        Reply::Answer(mut answer) => {
                            answer.request_id = request_id.clone();
                            answer.variant = (*variant).into();
                            answer.assigned_variant = Some(assigned);
                            Outcome::Answered { variant: *variant, backend: backend.clone(), answer }
                        }
                        Reply::Refused(status, reason) => {
                            Outcome::Refused { variant: *variant, backend: backend.clone(), status, reason }
                        }
                    });
                    break;
                }
                Ok(Err(e)) => e,
                Err(_) => {
                    let linger = self.config.deadline() * 2;
                    tokio::spawn(async move {
                        let _late = tokio::time::timeout(linger, forward).await;
                    });
                    AttemptError::Timeout(budget.as_millis())
                }
            };
            self.metrics.errors.with_label_values(&[variant.as_str(), error.label()]).inc();
            if backend.record_failure(self.config.health.fall) {
                tracing::warn!(%request_id, user_id, backend = %backend.url, variant = variant.as_str(), %error,
                    "backend marked unhealthy");
            }
            failures.push(Attempt { variant: *variant, backend: backend.url.clone(), error });
        }
        if outcome.is_none() && shed.is_none() && busy && failures.is_empty() {
            shed = Some(Shed::BackendBusy);
        }
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => {
                let reason = match shed {
                    Some(shed) => {
                        self.metrics.shed.with_label_values(&[shed.label()]).inc();
                        shed.reason()
                    }
                    None if failures.is_empty() => "no enabled backend",
                    None => "no backend answered",
                };
                self.fallback_outcome(user_id, &request_id, assigned, limit, reason)
            }
        };
        match &outcome {
            Outcome::Answered { variant, backend, .. } => {
                if *variant != assigned {
                    self.metrics.failovers.with_label_values(&[assigned.as_str()]).inc();
                }
                backend.answered.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Fallback(_) => self.metrics.fallbacks.inc(),
            Outcome::Refused { .. } | Outcome::BadRequest(_) | Outcome::Unavailable => {}
        }
        let handled = Handled { request_id, assigned: Some(assigned), outcome, failures };
        let release_id = match &handled.outcome {
            Outcome::Answered { variant, .. } | Outcome::Refused { variant, .. } => routing.release_id(*variant),
            Outcome::Fallback(_) | Outcome::BadRequest(_) | Outcome::Unavailable => None,
        };
        let inputs = Inputs {
            protocol: Cow::Borrowed(protocol.as_str()),
            limit: Some(limit),
            kind: Some(Cow::Borrowed(match &handled.outcome {
                Outcome::Answered { answer, .. } | Outcome::Fallback(answer) => answer.kind.as_str(),
                Outcome::Refused { .. } | Outcome::BadRequest(_) => "rejected",
                Outcome::Unavailable => "unavailable",
            })),
            client_request_id: client_id.map(Cow::Owned),
            data_versions: match &handled.outcome {
                Outcome::Answered { answer, .. } => answer.data_versions.as_ref().map(Cow::Borrowed),
                Outcome::Refused { .. } | Outcome::Fallback(_) | Outcome::BadRequest(_) | Outcome::Unavailable => None,
            },
        };
        let row =
            self.row(&handled, ts, started, Some(user_id), Some(&routing.experiment), release_id, Some(bucket), inputs);
        self.history.record(&row).await;
        self.observe(&handled, started.elapsed());
        handled
    }

    fn fallback_outcome(
        &self,
        user_id: i64,
        request_id: &str,
        assigned: Variant,
        limit: usize,
        reason: &str,
    ) -> Outcome {
        let fallback = self.fallback.get();
        if fallback.movies.is_empty() {
            return Outcome::Unavailable;
        }
        Outcome::Fallback(contract::Answer {
            user_id,
            items: fallback.items(limit),
            model_version: FALLBACK_MODEL.into(),
            variant: Served::Fallback,
            assigned_variant: Some(assigned),
            request_id: request_id.to_string(),
            data_watermark: fallback.watermark,
            kind: Kind::Fallback,
            degraded: Some(reason.into()),
            data_versions: None,
        })
    }

    /// Answers and journals a request that breaks the input rules: 400 / `INVALID_ARGUMENT`.
    pub async fn reject(&self, reason: RequestError, protocol: Protocol, client_id: Option<String>) -> Handled {
        let started = Instant::now();
        let request_id = new_request_id();
        tracing::info!(%request_id, protocol = protocol.as_str(), error = %reason, "bad request");
        let handled =
            Handled { request_id, assigned: None, outcome: Outcome::BadRequest(reason), failures: Vec::new() };
        let inputs = Inputs {
            protocol: Cow::Borrowed(protocol.as_str()),
            limit: None,
            kind: None,
            client_request_id: client_id.map(Cow::Owned),
            data_versions: None,
        };
        let row = self.row(&handled, Utc::now(), started, None, None, None, None, inputs);
        self.history.record(&row).await;
        self.observe(&handled, started.elapsed());
        handled
    }

    #[allow(clippy::too_many_arguments)]
    fn row<'a>(
        &self,
        handled: &'a Handled,
        ts: chrono::DateTime<Utc>,
        started: Instant,
        user_id: Option<i64>,
        experiment: Option<&'a str>,
        release_id: Option<i64>,
        bucket: Option<u32>,
        inputs: Inputs<'a>,
    ) -> Row<'a> {
        let answer = handled.answer();
        Row {
            request_id: Cow::Borrowed(&handled.request_id),
            ts,
            user_id,
            experiment: experiment.map(Cow::Borrowed),
            assigned_variant: handled.assigned.map(|v| Cow::Borrowed(v.as_str())),
            served_variant: Cow::Borrowed(handled.served_label()),
            backend: match &handled.outcome {
                Outcome::Answered { backend, .. } | Outcome::Refused { backend, .. } => {
                    Some(Cow::Borrowed(backend.url.as_str()))
                }
                Outcome::Fallback(_) | Outcome::BadRequest(_) | Outcome::Unavailable => None,
            },
            release_id,
            model_version: answer.map(|a| Cow::Borrowed(a.model_version.as_str())).filter(|m| !m.is_empty()),
            data_watermark: answer.map(|a| a.data_watermark),
            status: i32::from(handled.http_status().as_u16()),
            latency_us: started.elapsed().as_micros() as i64,
            movie_ids: answer
                .map(|a| a.items.iter().map(|i| Cow::Borrowed(i.movie_id.as_str())).collect())
                .unwrap_or_default(),
            degraded: answer.is_some_and(|a| a.degraded.is_some()),
            error: handled.logged_error().map(Cow::Owned),
            inputs: Some(inputs),
            bucket,
        }
    }

    fn observe(&self, handled: &Handled, latency: Duration) {
        self.metrics.observe_response(handled.served_label(), handled.http_status().as_u16(), latency.as_secs_f64());
    }
}
