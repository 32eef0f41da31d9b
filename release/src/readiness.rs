//! Whether a release's backends are up and serve its model: `GET /ready` (200) and the model
//! version it reports (`X-Model-Version`).

use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A backend that is not (or not yet) what the release needs.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    /// The URL does not parse.
    #[error("backend {url}: bad URL")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: hyper::http::uri::InvalidUri,
    },
    /// A backend never became ready.
    #[error("{0} did not answer /ready with 200 within {1:?}")]
    NotReady(String, Duration),
    /// A backend serves another model than the release's.
    #[error("{url} serves model {serves:?}, the release is {want:?}")]
    WrongModel {
        /// The backend.
        url: String,
        /// What it reports (`X-Model-Version` of `/ready`).
        serves: String,
        /// The release's model version.
        want: String,
    },
}

/// What a backend's `GET /ready` said: ready or not, and the model version it serves.
async fn probe(http: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Result<Option<String>, ReadyError> {
    let uri: hyper::Uri = format!("{}/ready", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| ReadyError::BadUrl { url: url.to_string(), source: e })?;
    Ok(match tokio::time::timeout(Duration::from_secs(2), http.get(uri)).await {
        Ok(Ok(r)) if r.status() == 200 => Some(
            r.headers()
                .get(proto::contract::headers::MODEL_VERSION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => None,
    })
}

/// Waits until every URL answers `GET /ready` with 200; with `model`, each must also serve that
/// model version (a deploy step that started the wrong model is caught before any user sees it).
pub async fn wait_ready(urls: &[String], within: Duration, model: Option<&str>) -> Result<(), ReadyError> {
    let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + within;
    for url in urls {
        loop {
            if let Some(serves) = probe(&http, url).await? {
                match model {
                    Some(want) if serves != want => {
                        return Err(ReadyError::WrongModel { url: url.clone(), serves, want: want.to_string() });
                    }
                    _ => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(ReadyError::NotReady(url.clone(), within));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
