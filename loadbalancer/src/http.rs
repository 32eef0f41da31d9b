//! The HTTP front (axum): the course contract `GET /recommend/{user_id}` → `text/plain`, up to
//! 20 comma-separated movie ids on one line (JSON with `Accept: application/json`), plus
//! `/health`, `/ready` (some backend healthy or a fallback list cached) and `/metrics`.
//! Rendering, headers and input rules are [`proto::contract`]'s.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::contract::{self, headers, set_header};

use crate::core::{Handled, Lb, Protocol};

/// The router.
pub fn router(lb: Arc<Lb>) -> Router {
    Router::new()
        .route("/recommend/{user_id}", get(recommend))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(lb)
}

async fn recommend(
    State(lb): State<Arc<Lb>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    req_headers: HeaderMap,
) -> Response {
    // Header values that are not visible ASCII are not text to axum: such an id is not kept.
    let client_id =
        req_headers.get(headers::REQUEST_ID).and_then(|v| v.to_str().ok()).map(contract::recorded_request_id);
    let wants_json =
        req_headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let parsed = contract::parse_user_id(&raw).and_then(|user| {
        Ok((user, contract::parse_limit(query.as_deref(), lb.config.default_limit, lb.config.max_limit)?))
    });
    let handled = match parsed {
        Ok((user_id, limit)) => lb.recommend(user_id, limit, wants_json, Protocol::Http, client_id).await,
        Err(reason) => lb.reject(reason, Protocol::Http, client_id).await,
    };
    render(handled, wants_json)
}

fn render(handled: Handled, json: bool) -> Response {
    let status = handled.http_status();
    if status != StatusCode::OK {
        let mut h = HeaderMap::new();
        set_header(&mut h, headers::REQUEST_ID, &handled.request_id);
        set_header(&mut h, headers::VARIANT, handled.served_label());
        if let Some(assigned) = handled.assigned {
            set_header(&mut h, headers::ASSIGNED_VARIANT, assigned.as_str());
        }
        return (status, h, format!("{}\n", handled.refusal())).into_response();
    }
    let Some(answer) = handled.into_answer() else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "no answer\n").into_response();
    };
    let mut h = HeaderMap::new();
    answer.write_headers(&mut h);
    if json {
        return (status, h, axum::Json(answer)).into_response();
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    (status, h, answer.ids_line()).into_response()
}

async fn ready(State(lb): State<Arc<Lb>>) -> Response {
    let routing = lb.routing.load();
    let healthy = routing.all_backends().iter().filter(|b| b.enabled() && b.healthy()).count();
    if healthy > 0 {
        (StatusCode::OK, format!("ready: {healthy} healthy backend(s)\n")).into_response()
    } else if !lb.fallback.get().movies.is_empty() {
        (StatusCode::OK, "ready: no healthy backend, serving the fallback list\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no healthy backend and no fallback list\n").into_response()
    }
}

async fn metrics(State(lb): State<Arc<Lb>>) -> Response {
    lb.metrics.history_pending.set(lb.history.queued() as i64);
    lb.metrics.history_journal_bytes.set(lb.history.journal().pending_bytes() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], lb.metrics.render()).into_response()
}
