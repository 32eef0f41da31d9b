//! Warming a nightly before it is routed: the most recently served users' requests, sent to
//! its backends directly (not through the load balancer, so nothing is logged as history).

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::PgPool;

use crate::store::{self, StoreError};

/// How many recent users' requests warm a nightly before it is routed, and how many at once.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    /// Distinct users, most recently served first (0: no warm-up).
    pub users: i64,
    /// Requests in flight per backend.
    pub concurrency: usize,
}

impl Default for Warmup {
    fn default() -> Self {
        Self { users: 1_000, concurrency: 8 }
    }
}

/// Replays the most recently served users' requests on each backend directly (not through the
/// load balancer: nothing is logged as history) so the nightly's caches hold what main's hold
/// and the latency guardrail compares models, not a cold cache with a warm one. Returns the
/// requests sent, those that failed, and the seconds it took.
pub async fn warm(pool: &PgPool, backends: &[String], w: Warmup) -> Result<(u64, u64, f64), StoreError> {
    use futures_util::StreamExt as _;
    if w.users <= 0 {
        return Ok((0, 0, 0.0));
    }
    let users = store::recent_users(pool, w.users).await?;
    let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    for base in backends {
        let base = base.trim_end_matches('/');
        let outcomes: Vec<bool> = futures_util::stream::iter(users.iter().copied())
            .map(|user| {
                let http = http.clone();
                let uri = format!("{base}/recommend/{user}");
                async move {
                    let Ok(uri) = uri.parse::<hyper::Uri>() else { return false };
                    let request = hyper::Request::get(uri)
                        .header(proto::contract::headers::REQUEST_ID, format!("warmup-{user}"))
                        .body(Full::new(Bytes::new()));
                    let Ok(request) = request else { return false };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(5), http.request(request)).await,
                        Ok(Ok(r)) if r.status() == 200
                    )
                }
            })
            .buffer_unordered(w.concurrency.max(1))
            .collect()
            .await;
        sent += outcomes.len() as u64;
        failed += outcomes.iter().filter(|ok| !**ok).count() as u64;
    }
    Ok((sent, failed, started.elapsed().as_secs_f64()))
}
