//! Notifications of release outcomes: a Slack-compatible webhook (`{"text": …}` plus the
//! structured fields). A failure to notify is logged and retried (3 attempts, 0.5 s then 1 s
//! apart) and never fails or blocks the release beyond that.

use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Where notifications go (nowhere when no webhook is configured).
#[derive(Clone)]
pub struct Notifier {
    webhook: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Notifier {
    /// A notifier posting to `webhook` (an `http://` URL; e.g. a Slack incoming webhook behind a
    /// local relay, or the receiver of `ci/`).
    pub fn new(webhook: Option<String>) -> Self {
        Self { webhook, http: Client::builder(TokioExecutor::new()).build_http() }
    }

    /// Sends `text` with `fields`; returns whether it was delivered (for logs and tests).
    pub async fn send(&self, text: &str, fields: serde_json::Value) -> bool {
        let Some(url) = &self.webhook else { return false };
        // A webhook URL is a secret (Slack's carries its key in the path): logs name the host.
        let host = webhook_host(url);
        let body = serde_json::json!({"text": text, "release": fields}).to_string();
        for (attempt, pause) in [(1, 500u64), (2, 1_000), (3, 0)] {
            let request = hyper::Request::post(url.as_str())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.clone())));
            let outcome = match request {
                Ok(r) => tokio::time::timeout(Duration::from_secs(5), self.http.request(r)).await,
                Err(e) => {
                    tracing::warn!(error = %e, host, "notification not sent: bad webhook URL");
                    return false;
                }
            };
            match outcome {
                Ok(Ok(r)) if r.status().is_success() => return true,
                Ok(Ok(r)) => tracing::warn!(status = %r.status(), host, attempt, "webhook refused the notification"),
                Ok(Err(e)) => tracing::warn!(error = %e, host, attempt, "webhook unreachable"),
                Err(_) => tracing::warn!(host, attempt, "webhook did not answer within 5 s"),
            }
            if pause > 0 {
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        tracing::error!(host, text, "notification lost after 3 attempts (the release went on)");
        false
    }
}

/// The host (and port) of a webhook URL, without its user, path or query.
fn webhook_host(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|uri| uri.authority().map(|a| a.as_str().rsplit('@').next().unwrap_or_default().to_string()))
        .unwrap_or_else(|| "<not a URL>".to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn logs_name_the_webhook_host_only() {
        assert_eq!(super::webhook_host("http://hooks.example:8080/services/T0/B0/SECRET?x=1"), "hooks.example:8080");
        assert_eq!(super::webhook_host("http://user:pw@relay.local/k"), "relay.local");
        assert_eq!(super::webhook_host("not a url"), "<not a URL>");
    }
}
