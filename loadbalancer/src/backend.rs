//! Talking to one backend server: the pooled HTTP client and one forwarded attempt, decoded
//! through [`proto::contract`] into a typed [`Reply`] or [`AttemptError`].

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::StatusCode;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use proto::contract::{self, DecodeError, headers};

use crate::routing::{Backend, InFlight};

/// The HTTP client for backends: pooled keep-alive connections, no Nagle delay.
pub type BackendClient = Client<HttpConnector, Empty<Bytes>>;

/// The largest backend body read (an answer of 100 movies with scores is ~10 kB): a longer
/// one fails the attempt without being held in memory.
pub const MAX_BODY_BYTES: usize = 64 << 10;
/// How much of a backend's refusal (4xx body) is kept as the reason.
pub const MAX_REASON_BYTES: usize = 512;

/// A fresh client.
pub fn client() -> BackendClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_millis(200)));
    Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// What a backend said.
#[derive(Debug)]
pub enum Reply {
    /// An answer (its request id and variant are the backend's; the caller sets its own).
    Answer(contract::Answer),
    /// The backend refused the request (4xx) with this reason.
    Refused(StatusCode, String),
}

/// Why an attempt on a backend failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AttemptError {
    /// No connection, or it broke before an answer.
    #[error("connect: {0}")]
    Connect(String),
    /// No answer within the attempt's budget.
    #[error("timeout: no answer within {0} ms")]
    Timeout(u128),
    /// A status other than 200 or 4xx.
    #[error("status: {0}")]
    Status(u16),
    /// The body could not be read.
    #[error("body: {0}")]
    Body(String),
    /// The answer breaks the contract (a header or field missing or wrong).
    #[error("contract: {0}")]
    Contract(#[from] DecodeError),
}

impl AttemptError {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            AttemptError::Connect(_) => "connect",
            AttemptError::Timeout(_) => "timeout",
            AttemptError::Status(_) => "status",
            AttemptError::Body(_) => "body",
            AttemptError::Contract(_) => "contract",
        }
    }
}

/// Forwards one request to `backend`. Without `scores` the server's text answer (the course
/// contract) is used, with its provenance from the headers: the cheapest path for both
/// processes; with `scores`, its JSON answer.
/// `_slot` is the backend's request slot, held until the answer is read.
pub async fn forward(
    client: BackendClient,
    backend: Arc<Backend>,
    user_id: i64,
    limit: usize,
    request_id: String,
    scores: bool,
    _slot: InFlight,
) -> Result<Reply, AttemptError> {
    let uri = format!("{}/recommend/{user_id}?limit={limit}", backend.url);
    let accept = if scores { "application/json" } else { "text/plain" };
    let request = hyper::Request::get(uri)
        .header(hyper::header::ACCEPT, accept)
        .header(contract::header_name(headers::REQUEST_ID), request_id.as_str())
        .body(Empty::new())
        .map_err(|e| AttemptError::Connect(format!("request: {e}")))?;
    let response = client.request(request).await.map_err(|e| AttemptError::Connect(with_causes(&e)))?;
    let status = response.status();
    if status != StatusCode::OK && !status.is_client_error() {
        // A failure status: its body is not read (dropping it closes the connection).
        return Err(AttemptError::Status(status.as_u16()));
    }
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| AttemptError::Body(with_causes(e.as_ref())))?
        .to_bytes();
    if status == StatusCode::OK {
        let answer = if scores {
            contract::Answer::from_json(&body)?
        } else {
            contract::Answer::from_text(user_id, &parts.headers, &body)?
        };
        Ok(Reply::Answer(answer))
    } else {
        let reason = String::from_utf8_lossy(&body[..body.len().min(MAX_REASON_BYTES)]).trim().to_string();
        Ok(Reply::Refused(status, reason))
    }
}

/// An error with its causes ("client error (Connect): tcp connect error: Connection refused"):
/// hyper's outer errors say little on their own.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// Checks one backend: `GET /ready` answers 2xx within `timeout`.
pub async fn ready(client: &BackendClient, backend: &Backend, timeout: Duration) -> bool {
    let uri = format!("{}/ready", backend.url);
    let Ok(request) = hyper::Request::get(uri).body(Empty::new()) else { return false };
    let probe = async {
        let response = client.request(request).await.ok()?;
        let ok = response.status().is_success();
        Limited::new(response.into_body(), MAX_BODY_BYTES).collect().await.ok()?;
        Some(ok)
    };
    matches!(tokio::time::timeout(timeout, probe).await, Ok(Some(true)))
}
