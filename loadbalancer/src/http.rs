//! The HTTP front (axum): the course contract `GET /recommend/{user_id}` → `text/plain`, up to
//! 20 comma-separated movie ids on one line (JSON with `Accept: application/json`), plus
//! `/health`, `/ready` (some backend healthy or a fallback list cached) and `/metrics`.
//! Rendering, headers and input rules are [`proto::contract`]'s.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use proto::contract::{self, headers, set_header};

use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::Front;
use crate::core::{Handled, Lb, Protocol};
use crate::metrics::Metrics;

/// Serves `app` on the public port (HTTP/1.1) until `stop` turns true, then drains and returns
/// once every connection is closed. Bounded against hostile clients: at most
/// `limits.max_connections` connections (more are closed at once and counted), and a connection
/// that does not send a request's headers within `limits.header_read_timeout_ms` is closed.
///
/// The drain, for a restart without a failed request: the listener closes first (another
/// replica on the port takes new connections; with `tcp_migrate_req` the queued ones too), then
/// for `limits.drain_ms` open connections are still served, every response saying
/// `Connection: close` — a client's next request on one of them is answered, and the client
/// reconnects (to the other replica) for the one after —, then connections are closed as soon
/// as they are idle.
pub async fn serve(listener: TcpListener, lb: Arc<Lb>, limits: Front, metrics: Metrics, stop: watch::Receiver<bool>) {
    let draining = Arc::new(AtomicBool::new(false));
    let service = FrontService { app: TowerToHyperService::new(router(lb.clone())), lb, draining: draining.clone() };
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let (closing_tx, closing_rx) = watch::channel(false);
    let stop = lifecycle::stopped(stop);
    tokio::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _peer)) => tcp,
                Err(e) => {
                    // Out of file descriptors, mostly: wait for connections to close.
                    tracing::warn!(error = %e, "HTTP front: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.inc();
            continue;
        };
        let _ignored = tcp.set_nodelay(true);
        let conn = builder.serve_connection(TokioIo::new(tcp), service.clone());
        let closing = lifecycle::stopped(closing_rx.clone());
        let metrics = metrics.clone();
        metrics.connections_open.inc();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = closing => {
                    conn.as_mut().graceful_shutdown();
                    let _finished = conn.await;
                }
            }
            metrics.connections_open.dec();
            drop(permit);
        });
    }
    drop(listener);
    draining.store(true, Ordering::Relaxed);
    // Every connection holds a permit until it is closed.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let open = limits.max_connections - permits.available_permits();
    let drained = tokio::time::timeout(Duration::from_millis(limits.drain_ms), permits.acquire_many(all)).await;
    tracing::info!(
        open,
        // Once every permit is back (all closed), `drained` holds them all.
        still_open =
            if matches!(drained, Ok(Ok(_))) { 0 } else { limits.max_connections - permits.available_permits() },
        drained_ms = limits.drain_ms,
        "HTTP front: listener closed, keep-alive connections told to close"
    );
    drop(drained);
    let _sent = closing_tx.send(true);
    // A client that never reads its response does not hold the shutdown up for long.
    if tokio::time::timeout(Duration::from_secs(30), permits.acquire_many(all)).await.is_err() {
        tracing::warn!("HTTP front: connections still open 30 s after the shutdown began; closing them");
    }
}

/// The router.
pub fn router(lb: Arc<Lb>) -> Router {
    Router::new()
        .route("/recommend/{user_id}", get(recommend))
        .route("/health", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(lb)
}

async fn recommend(State(lb): State<Arc<Lb>>, Path(raw): Path<String>, request: Request) -> Response {
    recommend_request(&lb, &raw, request.headers(), request.uri().query()).await
}

/// `GET /recommend/{user_id}`: the request read in place (no copy of its headers).
async fn recommend_request(lb: &Lb, raw: &str, req_headers: &HeaderMap, query: Option<&str>) -> Response {
    // Header values that are not visible ASCII are not text to axum: such an id is not kept.
    let client_id = req_headers
        .get(contract::header_name(headers::REQUEST_ID))
        .and_then(|v| v.to_str().ok())
        .map(contract::recorded_request_id);
    let wants_json =
        req_headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let parsed = contract::parse_user_id(raw)
        .and_then(|user| Ok((user, contract::parse_limit(query, lb.config.default_limit, lb.config.max_limit)?)));
    let handled = match parsed {
        Ok((user_id, limit)) => lb.recommend(user_id, limit, wants_json, Protocol::Http, client_id).await,
        Err(reason) => lb.reject(reason, Protocol::Http, client_id).await,
    };
    render(handled, wants_json)
}

/// The user id segment of a plain `GET /recommend/{user_id}` — one segment, nothing to
/// percent-decode — which the front serves without the router; anything else (other paths,
/// methods, encoded or empty segments) goes through the router, whose answers are the same.
fn plain_recommend_path(request: &hyper::Request<Incoming>) -> Option<&str> {
    let raw = request.uri().path().strip_prefix("/recommend/")?;
    let plain = request.method() == Method::GET && !raw.is_empty() && !raw.contains(['/', '%']);
    plain.then_some(raw)
}

/// The HTTP front's service: the course contract's path served directly (the router's layers
/// of boxed futures cost ≈ 2 % of the proxy's time per request), the rest by the router; while
/// draining, every response says `Connection: close`.
#[derive(Clone)]
struct FrontService {
    lb: Arc<Lb>,
    app: TowerToHyperService<Router>,
    draining: Arc<AtomicBool>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for FrontService {
    type Response = Response;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

    fn call(&self, request: hyper::Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let mut response = match plain_recommend_path(&request) {
                Some(raw) => recommend_request(&this.lb, raw, request.headers(), request.uri().query()).await,
                None => match this.app.call(request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                },
            };
            if this.draining.load(Ordering::Relaxed) {
                response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        })
    }
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
