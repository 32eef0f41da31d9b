//! The admin API, on its own port, behind a bearer token (no token configured → not served).
//! The calls, bodies and the state document are [`proto::admin`]'s types (the table is there).
//!
//! A change is computed on the fleet's routing in Postgres and stored with its record in
//! `release_events` (`step = 'lb.<action>'`, details: before and after) and this replica's
//! routing file in one transaction ([`crate::fleet::change`]), then swapped in here; the other
//! replicas follow. A change that cannot be stored is refused with 503 and not applied: an
//! answered change survives a restart, a refused one moved nothing. A 4xx answer carries a
//! one-line reason.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use proto::admin::{
    AdminState, BackendRequest, BackendState, Change, ExperimentRequest, HistoryState, MainRequest, NightlyRequest,
    PromoteRequest, ShareRequest,
};

use crate::config::check_backend_url;
use crate::core::Lb;
use crate::fleet::{self, ChangeError};
use crate::health;
use crate::routing::RoutingSpec;

/// The admin state.
#[derive(Debug)]
pub struct Admin {
    lb: Arc<Lb>,
    token: String,
}

/// The router (every route needs the token).
pub fn router(lb: Arc<Lb>, token: String) -> Router {
    let admin = Arc::new(Admin { lb, token });
    Router::new()
        .route("/admin/state", get(state))
        .route("/admin/nightly", put(set_nightly))
        .route("/admin/share", put(set_share))
        .route("/admin/experiment", post(start_experiment).delete(stop_experiment))
        .route("/admin/promote", post(promote))
        .route("/admin/main", put(set_main))
        .route("/admin/backends/drain", post(drain))
        .route("/admin/backends/enable", post(enable))
        .route("/admin/provenance/{request_id}", get(provenance))
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match given.and_then(|v| v.strip_prefix("Bearer ")) {
        None => {
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "missing bearer token\n").into_response()
        }
        Some(token) if !same(token.as_bytes(), admin.token.as_bytes()) => {
            tracing::warn!("admin call with a wrong token refused");
            (StatusCode::FORBIDDEN, "wrong bearer token\n").into_response()
        }
        Some(_) => next.run(request).await,
    }
}

fn bad(reason: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", reason.into())).into_response()
}

/// The state document.
pub fn state_of(lb: &Lb) -> AdminState {
    let routing = lb.routing.load();
    let backends = |list: &[Arc<crate::routing::Backend>]| {
        list.iter()
            .map(|b| BackendState {
                url: b.url.clone(),
                enabled: b.enabled(),
                healthy: b.healthy(),
                answered: b.answered.load(std::sync::atomic::Ordering::Relaxed),
            })
            .collect::<Vec<_>>()
    };
    let m = &lb.metrics;
    let journal = lb.history.journal();
    AdminState {
        experiment: routing.experiment.clone(),
        share: routing.share,
        effective_share: routing.effective_share(),
        main: backends(&routing.main),
        nightly: backends(&routing.nightly),
        main_release_id: routing.main_release_id,
        nightly_release_id: routing.nightly_release_id,
        routing_version: routing.version,
        history: HistoryState {
            pending: lb.history.queued() as u64,
            written: m.history_written.get(),
            deferred: m.history_deferred.get(),
            dropped: m.history_dropped.get(),
            journal_bytes: journal.pending_bytes(),
            fsync: journal.policy().as_str().to_string(),
        },
        fallback_movies: lb.fallback.get().movies.len(),
        change: None,
    }
}

async fn state(State(admin): State<Arc<Admin>>) -> Response {
    axum::Json(state_of(&admin.lb)).into_response()
}

/// What made a past answer (the `lazyrec-provenance show` document).
async fn provenance(State(admin): State<Arc<Admin>>, Path(request_id): Path<String>) -> Response {
    match db::provenance::provenance(&admin.lb.pool, &request_id).await {
        Ok(Some(p)) => axum::Json(p).into_response(),
        Ok(None) => {
            (StatusCode::NOT_FOUND, format!("no recommendation with request id {request_id:?}\n")).into_response()
        }
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database: {e}\n")).into_response(),
    }
}

impl Admin {
    /// Applies `change` to the fleet's routing: stored in Postgres with its record and the
    /// routing file (refused, and not applied, when it cannot be), swapped in here, followed by
    /// the other replicas.
    async fn apply(&self, action: &str, change: impl FnOnce(&mut RoutingSpec) -> Result<(), String>) -> Response {
        let lb = &self.lb;
        let changed = match fleet::change(lb, action, change).await {
            Ok(changed) => changed,
            Err(ChangeError::Refused(reason)) => return bad(reason),
            Err(e @ ChangeError::NotSaved(_)) => {
                let reason = e.to_string();
                tracing::error!(action, error = %reason, "admin change refused");
                return (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response();
            }
        };
        // New backends get a health check before the answer, so the caller sees their state.
        health::check_all(lb, false).await;
        tracing::info!(action, version = changed.after.version,
            before = %serde_json::to_string(&changed.before).unwrap_or_default(),
            after = %serde_json::to_string(&changed.after.spec).unwrap_or_default(), "routing changed");
        let mut body = state_of(lb);
        body.change =
            Some(Change { action: action.to_string(), saved: true, recorded: true, applied_at: changed.applied_at });
        axum::Json(body).into_response()
    }
}

/// Checked backend URLs, without trailing slashes.
fn backend_urls(urls: &[String]) -> Result<Vec<String>, String> {
    urls.iter().map(|u| check_backend_url(u).map(|()| u.trim_end_matches('/').to_string())).collect()
}

fn check_share(share: f64) -> Result<(), String> {
    if (0.0..=1.0).contains(&share) { Ok(()) } else { Err(format!("share {share} must be within 0..=1")) }
}

async fn set_nightly(
    State(admin): State<Arc<Admin>>,
    body: Result<axum::Json<NightlyRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    admin
        .apply("set_nightly", |spec| {
            let backends = backend_urls(&body.backends)?;
            if let Some(share) = body.share {
                check_share(share)?;
                spec.share = share;
            } else if spec.nightly.is_empty() && spec.share == 0.0 {
                spec.share = 0.2;
            }
            spec.nightly = backends;
            spec.nightly_release_id = body.release_id;
            Ok(())
        })
        .await
}

/// Nightly becomes main in one routing swap. Its backends keep their health state (the table
/// reuses backend objects by URL), so requests go on without a gap; requests in flight on the
/// old main finish there.
async fn promote(State(admin): State<Arc<Admin>>, body: Option<axum::Json<PromoteRequest>>) -> Response {
    let body = body.map(|b| b.0).unwrap_or_default();
    admin
        .apply("promote", |spec| {
            if spec.nightly.is_empty() {
                return Err("no nightly to promote".into());
            }
            let routing = admin.lb.routing.load();
            let healthy = routing.nightly.iter().any(|b| b.enabled() && b.healthy());
            if !healthy {
                return Err("no enabled, healthy nightly backend: refusing to promote".into());
            }
            spec.main = std::mem::take(&mut spec.nightly);
            spec.main_release_id = body.release_id.or(spec.nightly_release_id);
            spec.nightly_release_id = None;
            spec.share = 0.0;
            Ok(())
        })
        .await
}

async fn set_main(
    State(admin): State<Arc<Admin>>,
    body: Result<axum::Json<MainRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    admin
        .apply("set_main", |spec| {
            if body.backends.is_empty() {
                return Err("main needs at least one backend".into());
            }
            spec.main = backend_urls(&body.backends)?;
            spec.main_release_id = body.release_id;
            Ok(())
        })
        .await
}

async fn set_share(
    State(admin): State<Arc<Admin>>,
    body: Result<axum::Json<ShareRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    admin
        .apply("set_share", |spec| {
            check_share(body.share)?;
            spec.share = body.share;
            Ok(())
        })
        .await
}

async fn start_experiment(State(admin): State<Arc<Admin>>, body: Option<axum::Json<ExperimentRequest>>) -> Response {
    let body = body.map(|b| b.0).unwrap_or_default();
    admin
        .apply("start_experiment", |spec| {
            let name = body.experiment.clone().unwrap_or_else(|| format!("exp-{}", uuid::Uuid::new_v4().simple()));
            if name.trim().is_empty() {
                return Err("experiment must not be empty".into());
            }
            if name == spec.experiment {
                return Err(format!("experiment {name:?} is already running; a new experiment needs a new name"));
            }
            if let Some(share) = body.share {
                check_share(share)?;
                spec.share = share;
            } else if spec.share == 0.0 {
                spec.share = 0.2;
            }
            spec.experiment = name;
            Ok(())
        })
        .await
}

async fn stop_experiment(State(admin): State<Arc<Admin>>) -> Response {
    admin
        .apply("stop_experiment", |spec| {
            spec.share = 0.0;
            Ok(())
        })
        .await
}

async fn drain(
    State(admin): State<Arc<Admin>>,
    body: Result<axum::Json<BackendRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    set_enabled(admin, body, false).await
}

async fn enable(
    State(admin): State<Arc<Admin>>,
    body: Result<axum::Json<BackendRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    set_enabled(admin, body, true).await
}

async fn set_enabled(
    admin: Arc<Admin>,
    body: Result<axum::Json<BackendRequest>, axum::extract::rejection::JsonRejection>,
    enabled: bool,
) -> Response {
    let axum::Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad(e.body_text()),
    };
    let url = body.url.trim_end_matches('/').to_string();
    admin
        .apply(if enabled { "enable_backend" } else { "drain_backend" }, |spec| {
            if !spec.main.iter().chain(&spec.nightly).any(|u| *u == url) {
                return Err(format!("unknown backend {url:?}"));
            }
            spec.drained.retain(|u| *u != url);
            if !enabled {
                spec.drained.push(url.clone());
            }
            Ok(())
        })
        .await
}
