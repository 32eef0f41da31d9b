//! The HTTP adapter (axum): the course contract `GET /recommend/{user_id}` → `text/plain`, up to
//! 20 comma-separated movie ids on one line, best first; JSON with scores for clients that
//! accept `application/json`; `/health`, `/ready`, `/metrics`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tracing::Instrument;

use crate::core::{Answer, Core};
use crate::strategy::Item;

pub use proto::contract::headers;

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
    match given {
        Some(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => id.to_string(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

pub use proto::contract::{parse_limit, parse_user_id};

#[derive(Serialize)]
struct JsonAnswer<'a> {
    user_id: i64,
    items: &'a [Item],
    model_version: &'a str,
    variant: &'a str,
    request_id: &'a str,
    data_watermark: i64,
    kind: &'a str,
    degraded: Option<&'a str>,
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(HeaderName::from_static(name), v);
    }
}

fn provenance(core: &Core, request_id: &str, watermark: i64) -> HeaderMap {
    let mut h = HeaderMap::new();
    set(&mut h, headers::MODEL_VERSION, core.model_version());
    set(&mut h, headers::VARIANT, core.variant());
    set(&mut h, headers::REQUEST_ID, request_id);
    set(&mut h, headers::DATA_WATERMARK, &watermark.to_string());
    h
}

async fn recommend(
    State(core): State<Arc<Core>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    req_headers: HeaderMap,
) -> Response {
    let started = Instant::now();
    let request_id = request_id(req_headers.get(headers::REQUEST_ID).and_then(|v| v.to_str().ok()));
    let parsed = parse_user_id(&raw)
        .and_then(|user| Ok((user, parse_limit(query.as_deref(), core.config.default_limit, core.config.max_limit)?)));
    let (user_id, limit) = match parsed {
        Ok(ok) => ok,
        Err(reason) => {
            core.metrics.requests.with_label_values(&["http", "bad_request"]).inc();
            let h = provenance(&core, &request_id, core.watermark());
            return (StatusCode::BAD_REQUEST, h, format!("{reason}\n")).into_response();
        }
    };
    let span = tracing::debug_span!("recommend", request_id = %request_id, user_id, protocol = "http");
    let answer = core.recommend(user_id, limit).instrument(span).await;
    let wants_json =
        req_headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let response = render(&core, user_id, &request_id, &answer, wants_json);
    core.metrics.requests.with_label_values(&["http", answer.kind.as_str()]).inc();
    core.metrics.latency.with_label_values(&["http"]).observe(started.elapsed().as_secs_f64());
    response
}

fn render(core: &Core, user_id: i64, request_id: &str, answer: &Answer, json: bool) -> Response {
    let mut h = provenance(core, request_id, answer.watermark);
    set(&mut h, headers::KIND, answer.kind.as_str());
    if let Some(reason) = &answer.degraded {
        set(&mut h, headers::DEGRADED, reason);
    }
    if json {
        let body = JsonAnswer {
            user_id,
            items: &answer.items,
            model_version: core.model_version(),
            variant: core.variant(),
            request_id,
            data_watermark: answer.watermark,
            kind: answer.kind.as_str(),
            degraded: answer.degraded.as_deref(),
        };
        (StatusCode::OK, h, axum::Json(body)).into_response()
    } else {
        let mut line = String::with_capacity(answer.items.len() * 24);
        for (i, item) in answer.items.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&item.movie_id);
        }
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
        (StatusCode::OK, h, line).into_response()
    }
}

async fn ready(State(core): State<Arc<Core>>) -> Response {
    match core.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
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
    }
}
