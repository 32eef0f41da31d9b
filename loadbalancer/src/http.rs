//! The HTTP front (axum): the course contract `GET /recommend/{user_id}` → `text/plain`, up to
//! 20 comma-separated movie ids on one line (JSON with `Accept: application/json`), plus
//! `/health`, `/ready` (some backend healthy or a fallback list cached) and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;

use crate::core::{Answer, Item, Lb};

pub use proto::contract::headers;

/// The router.
pub fn router(lb: Arc<Lb>) -> Router {
    Router::new()
        .route("/recommend/{user_id}", get(recommend))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(lb)
}

pub use proto::contract::{parse_limit, parse_user_id};

#[derive(Serialize)]
struct JsonAnswer<'a> {
    user_id: i64,
    items: &'a [Item],
    model_version: &'a str,
    variant: &'a str,
    assigned_variant: Option<&'a str>,
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

async fn recommend(
    State(lb): State<Arc<Lb>>,
    Path(raw): Path<String>,
    RawQuery(query): RawQuery,
    req_headers: HeaderMap,
) -> Response {
    let client_id = req_headers.get(headers::REQUEST_ID).and_then(|v| v.to_str().ok()).map(|s| {
        let mut s = s.to_string();
        s.truncate(128);
        s
    });
    let wants_json =
        req_headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let parsed = parse_user_id(&raw)
        .and_then(|user| Ok((user, parse_limit(query.as_deref(), lb.config.default_limit, lb.config.max_limit)?)));
    let (user_id, answer) = match parsed {
        Ok((user_id, limit)) => (user_id, lb.recommend(user_id, limit, wants_json, "http", client_id).await),
        Err(reason) => (-1, lb.reject(reason, "http", client_id).await),
    };
    render(user_id, &answer, wants_json)
}

fn render(user_id: i64, answer: &Answer, json: bool) -> Response {
    let mut h = HeaderMap::new();
    set(&mut h, headers::REQUEST_ID, &answer.request_id);
    set(&mut h, headers::VARIANT, answer.served);
    if let Some(assigned) = answer.assigned {
        set(&mut h, headers::ASSIGNED_VARIANT, assigned.as_str());
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    if answer.status != 200 {
        let reason = answer.error.as_deref().unwrap_or("error");
        return (status, h, format!("{reason}\n")).into_response();
    }
    set(&mut h, headers::MODEL_VERSION, &answer.model_version);
    set(&mut h, headers::DATA_WATERMARK, &answer.watermark.to_string());
    set(&mut h, headers::KIND, &answer.kind);
    if let Some(reason) = &answer.degraded {
        set(&mut h, headers::DEGRADED, reason);
    }
    if json {
        let body = JsonAnswer {
            user_id,
            items: &answer.items,
            model_version: &answer.model_version,
            variant: answer.served,
            assigned_variant: answer.assigned.map(|v| v.as_str()),
            request_id: &answer.request_id,
            data_watermark: answer.watermark,
            kind: &answer.kind,
            degraded: answer.degraded.as_deref(),
        };
        return (status, h, axum::Json(body)).into_response();
    }
    let mut line = String::with_capacity(answer.items.len() * 24);
    for (i, item) in answer.items.iter().enumerate() {
        if i > 0 {
            line.push(',');
        }
        line.push_str(&item.movie_id);
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    (status, h, line).into_response()
}

async fn ready(State(lb): State<Arc<Lb>>) -> Response {
    let routing = lb.routing.load();
    let healthy = routing.all_backends().iter().filter(|b| b.enabled() && b.healthy()).count();
    if healthy > 0 {
        (StatusCode::OK, format!("ready: {healthy} healthy backend(s)\n")).into_response()
    } else if !lb.fallback().movies.is_empty() {
        (StatusCode::OK, "ready: no healthy backend, serving the fallback list\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: no healthy backend and no fallback list\n").into_response()
    }
}

async fn metrics(State(lb): State<Arc<Lb>>) -> Response {
    lb.metrics.history_queue.set(lb.history.queued() as i64);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], lb.metrics.render()).into_response()
}
