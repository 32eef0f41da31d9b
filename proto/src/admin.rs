//! The load balancer's admin API as types: every request body, the state document every call
//! answers with, and [`AdminClient`], the one client (the release controller uses it, the
//! scripts reach it through `lazyrec-lb admin`).
//!
//! | call | body | effect |
//! |---|---|---|
//! | `GET /admin/state` | | [`AdminState`] |
//! | `PUT /admin/nightly` | [`NightlyRequest`] | set the nightly backends (and share) |
//! | `PUT /admin/share` | [`ShareRequest`] | set the nightly share |
//! | `POST /admin/experiment` | [`ExperimentRequest`] | start an experiment: a new salt |
//! | `DELETE /admin/experiment` | | stop it: share 0, everyone on main |
//! | `POST /admin/promote` | [`PromoteRequest`] | nightly becomes main |
//! | `PUT /admin/main` | [`MainRequest`] | set the main backends (a rollback) |
//! | `POST /admin/backends/drain` | [`BackendRequest`] | stop sending requests to a backend |
//! | `POST /admin/backends/enable` | [`BackendRequest`] | take requests again |
//!
//! A change is answered only once it is persisted (the routing file) and applied; a change
//! that cannot be persisted is refused (503) and not applied, so a caller that got an answer
//! knows the change survives a restart, and one that got an error knows nothing moved.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};

/// `PUT /admin/nightly`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyRequest {
    /// The nightly's backends (empty: no nightly).
    pub backends: Vec<String>,
    /// The nightly share (absent: unchanged, or 0.2 when a nightly appears with share 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
    /// The release the nightly serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<i64>,
}

/// `PUT /admin/main`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainRequest {
    /// Main's backends (at least one).
    pub backends: Vec<String>,
    /// The release main serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<i64>,
}

/// `PUT /admin/share`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRequest {
    /// The nightly share, in 0..=1.
    pub share: f64,
}

/// `POST /admin/experiment`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentRequest {
    /// The experiment name (the assignment salt; absent: a random one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The nightly share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub share: Option<f64>,
}

/// `POST /admin/promote`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    /// The release that becomes main (absent: the nightly's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_id: Option<i64>,
}

/// `POST /admin/backends/drain` and `/enable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendRequest {
    /// The backend's base URL.
    pub url: String,
}

/// One backend in the state document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendState {
    /// Base URL.
    pub url: String,
    /// Takes requests (not drained).
    pub enabled: bool,
    /// Passed its health checks.
    pub healthy: bool,
    /// Requests it answered.
    pub answered: u64,
}

/// The response log's counters in the state document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryState {
    /// Rows journaled, not yet in Postgres.
    pub pending: u64,
    /// Rows stored.
    pub written: u64,
    /// Rows that waited for Postgres.
    pub deferred: u64,
    /// Rows dropped (journal full or failing).
    pub dropped: u64,
    /// Journal bytes not yet shipped.
    pub journal_bytes: u64,
    /// The journal's fsync policy.
    pub fsync: String,
}

/// What a change did (on the answer to a change).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// `set_nightly`, `promote`, …
    pub action: String,
    /// Written to the routing file (always true on an answered change: a change that cannot be
    /// saved is refused).
    pub saved: bool,
    /// Recorded in `release_events` (best effort: Postgres may be down).
    pub recorded: bool,
    /// When the new routing took effect (the load balancer's clock): the boundary of an
    /// experiment's window.
    pub applied_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /admin/state`, and the answer to every change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdminState {
    /// The experiment name (assignment salt).
    pub experiment: String,
    /// The configured nightly share.
    pub share: f64,
    /// The share applied (0 without a usable nightly).
    pub effective_share: f64,
    /// Main's backends.
    pub main: Vec<BackendState>,
    /// The nightly's backends.
    pub nightly: Vec<BackendState>,
    /// The release main serves.
    pub main_release_id: Option<i64>,
    /// The release the nightly serves.
    pub nightly_release_id: Option<i64>,
    /// The fleet's routing version this replica serves (0: its configuration, Postgres not
    /// reached yet).
    #[serde(default)]
    pub routing_version: i64,
    /// The response log.
    pub history: HistoryState,
    /// Movies in the fallback list.
    pub fallback_movies: usize,
    /// Present on the answer to a change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
}

impl AdminState {
    /// The URLs of the nightly's backends.
    pub fn nightly_urls(&self) -> Vec<String> {
        self.nightly.iter().map(|b| b.url.clone()).collect()
    }

    /// Whether `url` (with or without a trailing slash) is routed as main or nightly.
    pub fn routes(&self, url: &str) -> bool {
        let url = url.trim_end_matches('/');
        self.main.iter().chain(&self.nightly).any(|b| b.url == url)
    }
}

/// Why an admin call failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The call could not be built (a bad base URL).
    #[error("load balancer admin {call}: bad request: {detail}")]
    Request {
        /// `METHOD path`.
        call: String,
        /// What was wrong.
        detail: String,
    },
    /// No connection or no answer.
    #[error("load balancer admin {call}: unreachable: {source}")]
    Unreachable {
        /// `METHOD path`.
        call: String,
        /// The transport error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No answer within the client's timeout.
    #[error("load balancer admin {call}: no answer within {0:?}", .timeout)]
    Timeout {
        /// `METHOD path`.
        call: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The load balancer refused the call (4xx: bad input or token; 503: not persisted, so
    /// nothing changed).
    #[error("load balancer admin {call}: {status}: {reason}")]
    Refused {
        /// `METHOD path`.
        call: String,
        /// The HTTP status.
        status: u16,
        /// Its one-line reason.
        reason: String,
    },
    /// The answer is not the contract's.
    #[error("load balancer admin {call}: unexpected answer: {detail}")]
    Malformed {
        /// `METHOD path`.
        call: String,
        /// What was wrong.
        detail: String,
    },
}

/// The typed admin client.
#[derive(Clone)]
pub struct AdminClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
    timeout: Duration,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").field("base", &self.base).finish()
    }
}

impl AdminClient {
    /// A client of the admin API at `base` (`http://host:8084`) with bearer `token`.
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
            timeout: Duration::from_secs(30),
        }
    }

    /// `GET /admin/state`.
    pub async fn state(&self) -> Result<AdminState, AdminError> {
        self.call("GET", "/admin/state", None::<&()>).await
    }

    /// `PUT /admin/nightly`.
    pub async fn set_nightly(&self, r: &NightlyRequest) -> Result<AdminState, AdminError> {
        self.call("PUT", "/admin/nightly", Some(r)).await
    }

    /// `PUT /admin/main`.
    pub async fn set_main(&self, r: &MainRequest) -> Result<AdminState, AdminError> {
        self.call("PUT", "/admin/main", Some(r)).await
    }

    /// `PUT /admin/share`.
    pub async fn set_share(&self, r: &ShareRequest) -> Result<AdminState, AdminError> {
        self.call("PUT", "/admin/share", Some(r)).await
    }

    /// `POST /admin/experiment`.
    pub async fn start_experiment(&self, r: &ExperimentRequest) -> Result<AdminState, AdminError> {
        self.call("POST", "/admin/experiment", Some(r)).await
    }

    /// `DELETE /admin/experiment`.
    pub async fn stop_experiment(&self) -> Result<AdminState, AdminError> {
        self.call("DELETE", "/admin/experiment", None::<&()>).await
    }

    /// `POST /admin/promote`.
    pub async fn promote(&self, r: &PromoteRequest) -> Result<AdminState, AdminError> {
        self.call("POST", "/admin/promote", Some(r)).await
    }

    /// `POST /admin/backends/drain`.
    pub async fn drain(&self, r: &BackendRequest) -> Result<AdminState, AdminError> {
        self.call("POST", "/admin/backends/drain", Some(r)).await
    }

    /// `POST /admin/backends/enable`.
    pub async fn enable(&self, r: &BackendRequest) -> Result<AdminState, AdminError> {
        self.call("POST", "/admin/backends/enable", Some(r)).await
    }

    /// `GET /admin/provenance/{request_id}`: the provenance document, as JSON.
    pub async fn provenance(&self, request_id: &str) -> Result<serde_json::Value, AdminError> {
        self.call("GET", &format!("/admin/provenance/{request_id}"), None::<&()>).await
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, AdminError> {
        let call = format!("{method} {path}");
        let body = match body {
            Some(b) => {
                serde_json::to_vec(b).map_err(|e| AdminError::Request { call: call.clone(), detail: e.to_string() })?
            }
            None => Vec::new(),
        };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| AdminError::Request { call: call.clone(), detail: e.to_string() })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| Box::new(e) as Box<_>)?;
            let status = response.status();
            let bytes = response.into_body().collect().await.map_err(|e| Box::new(e) as Box<_>)?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| AdminError::Timeout { call: call.clone(), timeout: self.timeout })?
            .map_err(|source| AdminError::Unreachable { call: call.clone(), source })?;
        let text = String::from_utf8_lossy(&bytes);
        if !status.is_success() {
            return Err(AdminError::Refused { call, status: status.as_u16(), reason: text.trim().to_string() });
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| AdminError::Malformed { call, detail: format!("{e}: {}", text.trim()) })
    }
}
