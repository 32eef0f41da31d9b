//! The HTTP adapter (axum): the course contract `GET /recommend/{user_id}` → `text/plain`, up to
//! 20 comma-separated movie ids on one line, best first; JSON with scores for clients that
//! accept `application/json`; `/health`, `/ready`, `/metrics`. Rendering, headers and input
//! rules are [`proto::contract`]'s.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::contract::{self, headers, set_header};
use tracing::Instrument;

use crate::core::Core;

/// The router.
pub fn router(core: Arc<Core>) -> Router {
    Router::new()
        .route("/recommend/{user_id}", get(recommend))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(core)
}

/// A request id from the caller (visible ASCII, ≤ 128 bytes) or a fresh UUID.
pub fn request_id(given: Option<&str>) -> String {
    match contract::usable_request_id(given) {
        Some(id) => id.to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    }
}

async fn recommend(
    State(core): State<Arc<Core>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    req_headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(req_headers.get(headers::REQUEST_ID).and_then(|v| v.to_str().ok()));
    let parsed = contract::parse_user_id(&raw).and_then(|user| {
        Ok((user, contract::parse_limit(query.as_deref(), core.config.default_limit, core.config.max_limit)?))
    });
    let (user_id, limit) = match parsed {
        Ok(ok) => ok,
        Err(reason) => {
            core.metrics.requests.with_label_values(&["http", "bad_request"]).inc();
            tracing::info!(%request_id, error = %reason, "bad request");
            let mut h = HeaderMap::new();
            set_header(&mut h, headers::MODEL_VERSION, core.model_version());
            set_header(&mut h, headers::VARIANT, core.variant());
            set_header(&mut h, headers::REQUEST_ID, &request_id);
            set_header(&mut h, headers::DATA_WATERMARK, &core.watermark().to_string());
            return (reason.http_status(), h, format!("{reason}\n")).into_response();
        }
    };
    let span = tracing::info_span!("recommend", request_id = %request_id, user_id, protocol = "http");
    let answer = core.recommend(user_id, limit).instrument(span).await;
    let kind = answer.kind;
    let wants_json =
        req_headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let answer = core.contract_answer(user_id, request_id, answer);
    let mut h = HeaderMap::new();
    answer.write_headers(&mut h);
    let response = if wants_json {
        (StatusCode::OK, h, axum::Json(answer)).into_response()
    } else {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        (StatusCode::OK, h, answer.ids_line()).into_response()
    };
    core.metrics.requests.with_label_values(&["http", kind.as_str()]).inc();
    core.metrics.latency.with_label_values(&["http"]).observe(started.elapsed().as_secs_f64());
    response
}

/// Readiness; the model version rides along so a deployer can check what it deployed.
async fn ready(State(core): State<Arc<Core>>) -> Response {
    let mut h = HeaderMap::new();
    set_header(&mut h, headers::MODEL_VERSION, core.model_version());
    match core.readiness() {
        Ok(()) => (StatusCode::OK, h, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, h, format!("not ready: {why}\n")).into_response(),
    }
}

async fn metrics(State(core): State<Arc<Core>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], core.metrics.render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_from_callers_are_checked() {
        assert_eq!(request_id(Some("abc-1")), "abc-1");
        assert_ne!(request_id(Some("bad id")), "bad id");
        let long = "é".repeat(100);
        assert_ne!(request_id(Some(&long)), long);
    }
}
