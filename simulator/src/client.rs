//! The course contract from the client's side: `GET /recommend/<user>` → up to 20 movie ids,
//! comma-separated on one line, within the time budget.

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use proto::contract::headers;

/// The most ids a valid answer has.
pub const MAX_IDS: usize = 20;

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A response arrived within the timeout.
    Response {
        /// HTTP status.
        status: u16,
        /// The ids when the body is a valid list (status 200, ≤ 20 well-formed ids).
        ids: Option<Vec<String>>,
        /// The first line of the body (for error lines), trimmed to 80 bytes.
        text: String,
        /// The `x-variant` header (who answered), when present.
        variant: Option<String>,
    },
    /// No response within the timeout.
    Timeout,
    /// The connection failed.
    Failed(String),
}

/// One request's result.
#[derive(Debug, Clone)]
pub struct Reply {
    /// What happened.
    pub outcome: Outcome,
    /// How long it took (the timeout for a timeout).
    pub latency: Duration,
}

/// A pooled keep-alive HTTP client for one target.
#[derive(Clone)]
pub struct Client {
    http: HyperClient<HttpConnector, Empty<Bytes>>,
    base: String,
    /// `host:port`, as the course log names the server.
    pub server: String,
    timeout: Duration,
}

impl Client {
    /// A client of `base` (`http://host:port`).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, String> {
        let base = base.trim_end_matches('/').to_string();
        let authority = base
            .strip_prefix("http://")
            .ok_or_else(|| format!("target {base:?} must be an http:// URL"))?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        if authority.is_empty() {
            return Err(format!("target {base:?} has no host"));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HyperClient::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector);
        Ok(Self { http, base, server: authority, timeout })
    }

    /// Asks for `user`'s recommendations.
    pub async fn recommend(&self, user: i64) -> Reply {
        let started = Instant::now();
        let uri = format!("{}/recommend/{user}", self.base);
        let request = async {
            let uri: hyper::Uri = uri.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
            let response = self.http.get(uri).await.map_err(|e| lifecycle::error_chain(&e))?;
            let status = response.status().as_u16();
            let variant = response.headers().get(headers::VARIANT).and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = response.into_body().collect().await.map_err(|e| lifecycle::error_chain(&e))?.to_bytes();
            Ok::<_, String>((status, variant, body))
        };
        let outcome = match tokio::time::timeout(self.timeout, request).await {
            Err(_elapsed) => return Reply { outcome: Outcome::Timeout, latency: self.timeout },
            Ok(Err(e)) => Outcome::Failed(e),
            Ok(Ok((status, variant, body))) => {
                let text = String::from_utf8_lossy(&body);
                let first = text.lines().next().unwrap_or_default().trim();
                let ids = if status == 200 { parse_ids(first) } else { None };
                let mut short = first.chars().take(80).collect::<String>();
                short.retain(|c| !c.is_control());
                Outcome::Response { status, ids, text: short, variant }
            }
        };
        Reply { outcome, latency: started.elapsed() }
    }
}

/// The ids of a valid answer line: at most [`MAX_IDS`], none empty or with spaces.
pub fn parse_ids(line: &str) -> Option<Vec<String>> {
    if line.is_empty() {
        return Some(Vec::new());
    }
    let ids: Vec<String> = line.split(',').map(|id| id.trim().to_string()).collect();
    (ids.len() <= MAX_IDS && ids.iter().all(|id| !id.is_empty() && !id.contains(char::is_whitespace))).then_some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_valid_lists_of_at_most_twenty_ids() {
        assert_eq!(parse_ids("a+1,b+2"), Some(vec!["a+1".to_string(), "b+2".to_string()]));
        assert_eq!(parse_ids(""), Some(vec![]));
        assert_eq!(parse_ids("a,,b"), None);
        assert_eq!(parse_ids("{\"items\": 1}"), None);
        assert_eq!(parse_ids(&vec!["m"; 21].join(",")), None);
        assert!(Client::new("localhost:8082", Duration::from_millis(1)).is_err());
        assert_eq!(
            Client::new("http://localhost:8082/", Duration::from_millis(1)).expect("client").server,
            "localhost:8082"
        );
    }
}
