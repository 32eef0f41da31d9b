//! One module per page: its queries and its HTML.

pub mod overview;
pub mod provenance;
pub mod releases;
pub mod reports;
pub mod user;

use crate::App;
use loadbalancer::routing::RoutingSpec;

/// The routing as the load balancer serves it (its admin API), else as stored in Postgres (the
/// fleet's source of truth), with where it came from.
pub(crate) struct Routing {
    /// From the load balancer (`Ok`) or why not (`Err`).
    pub live: Result<proto::admin::AdminState, String>,
    /// The stored spec and version (none before a load balancer ran).
    pub stored: Option<(i64, RoutingSpec, chrono::DateTime<chrono::Utc>)>,
}

impl Routing {
    /// Experiment, applied share.
    pub fn assignment(&self) -> Option<(String, f64)> {
        match (&self.live, &self.stored) {
            (Ok(s), _) => Some((s.experiment.clone(), s.effective_share)),
            (Err(_), Some((_, spec, _))) => {
                Some((spec.experiment.clone(), if spec.nightly.is_empty() { 0.0 } else { spec.share }))
            }
            (Err(_), None) => None,
        }
    }

    /// Main's and the nightly's backend URLs.
    pub fn backends(&self) -> (Vec<String>, Vec<String>) {
        match (&self.live, &self.stored) {
            (Ok(s), _) => (s.main.iter().map(|b| b.url.clone()).collect(), s.nightly_urls()),
            (Err(_), Some((_, spec, _))) => (spec.main.clone(), spec.nightly.clone()),
            (Err(_), None) => (Vec::new(), Vec::new()),
        }
    }
}

pub(crate) async fn routing(app: &App) -> Result<Routing, sqlx::Error> {
    let live = match tokio::time::timeout(std::time::Duration::from_secs(1), app.admin.state()).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("the admin API did not answer within 1 s".to_string()),
    };
    let row: Option<(i64, serde_json::Value, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("SELECT version, spec, updated_at FROM lb_routing ORDER BY updated_at DESC LIMIT 1")
            .fetch_optional(&app.pool)
            .await?;
    let stored = row.and_then(|(v, spec, at)| serde_json::from_value(spec).ok().map(|s| (v, s, at)));
    Ok(Routing { live, stored })
}
