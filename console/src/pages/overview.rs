//! `/`: the backends and their health, the routing, the last hour's traffic per variant (rate,
//! p50/p99, degraded and fallback shares; per-minute charts) and the ingest watermark and lag.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::html;

use crate::charts::{COLORS, Lines, Series};
use crate::html::{at, figure, frame, ms, pct};
use crate::{App, PageResult};

/// One variant's last hour.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VariantHour {
    /// The assigned variant (`main`, `nightly`; the served one for rows without an assignment).
    pub variant: String,
    /// Responses.
    pub requests: i64,
    /// Median latency at the load balancer, ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile, ms.
    pub p99_ms: Option<f64>,
    /// Degraded answers.
    pub degraded: i64,
    /// Answered from the fallback list.
    pub fallback: i64,
}

/// The last hour per variant, from the history (the `ts` index).
pub async fn last_hour(pool: &sqlx::PgPool) -> Result<Vec<VariantHour>, sqlx::Error> {
    sqlx::query_as(
        "SELECT coalesce(assigned_variant, served_variant) AS variant, count(*) AS requests,
                percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_us) / 1000.0 AS p50_ms,
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) / 1000.0 AS p99_ms,
                count(*) FILTER (WHERE degraded) AS degraded,
                count(*) FILTER (WHERE served_variant = 'fallback') AS fallback
         FROM recommendations_history WHERE ts > now() - interval '1 hour'
         GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(pool)
    .await
}

type MinuteRow = (DateTime<Utc>, String, i64, Option<f64>, i64);

/// `GET /`.
pub async fn page(State(app): State<Arc<App>>) -> PageResult {
    let routing = super::routing(&app).await?;
    let hour = last_hour(&app.pool).await?;
    let minutes: Vec<MinuteRow> = sqlx::query_as(
        "SELECT date_trunc('minute', ts) AS m, coalesce(assigned_variant, served_variant), count(*),
                percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_us) / 1000.0,
                count(*) FILTER (WHERE degraded OR served_variant = 'fallback')
         FROM recommendations_history WHERE ts > now() - interval '1 hour'
         GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&app.pool)
    .await?;
    let watermark: Option<(i64, DateTime<Utc>)> =
        sqlx::query_as("SELECT last_event_id, updated_at FROM ingest_watermark").fetch_optional(&app.pool).await?;
    let sources: Vec<(String, String, i64, i64, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT source, kind, position, accepted, rejected, updated_at FROM ingest_sources ORDER BY updated_at DESC LIMIT 20",
    )
    .fetch_all(&app.pool)
    .await?;
    let now = Utc::now();

    // Per-minute series, x = minutes before now (negative).
    let mut rate: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut p99: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut bad: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (m, variant, n, p, b) in &minutes {
        let x = (*m - now).num_seconds() as f64 / 60.0;
        rate.entry(variant.clone()).or_default().push((x, *n as f64 / 60.0));
        p99.entry(variant.clone()).or_default().push((x, p.unwrap_or(0.0)));
        bad.entry(variant.clone()).or_default().push((x, 100.0 * *b as f64 / (*n).max(1) as f64));
    }
    let lines = |data: BTreeMap<String, Vec<(f64, f64)>>, y: &str| {
        Lines {
            x_label: "minutes ago".into(),
            y_label: y.into(),
            bands: vec![],
            series: data
                .into_iter()
                .enumerate()
                .map(|(i, (name, points))| Series { name, points, color: COLORS[i % COLORS.len()], dashed: false })
                .collect(),
        }
        .svg()
    };

    let body = html! {
        h1 { "Overview" }
        h2 { "Load balancer and backends" }
        @match &routing.live {
            Ok(s) => {
                p {
                    "Experiment " code #experiment { (s.experiment) } ", nightly share " (pct(s.share))
                    " (applied " span #effective-share { (pct(s.effective_share)) } "), routing version "
                    span #routing-version { (s.routing_version) } ", main release "
                    (s.main_release_id.map_or("—".to_string(), |r| r.to_string())) ", nightly release "
                    (s.nightly_release_id.map_or("—".to_string(), |r| r.to_string())) "."
                }
                table #backends {
                    tr { th { "variant" } th { "backend" } th { "health" } th { "enabled" } th { "answered" } }
                    @for (variant, b) in s.main.iter().map(|b| ("main", b)).chain(s.nightly.iter().map(|b| ("nightly", b))) {
                        tr {
                            td { (variant) } td { code { (b.url) } }
                            td class=(if b.healthy { "ok" } else { "error" }) { (if b.healthy { "healthy" } else { "unhealthy" }) }
                            td { (if b.enabled { "yes" } else { "drained" }) }
                            td.n { (b.answered) }
                        }
                    }
                }
                p {
                    "Response log: " (s.history.pending) " rows journaled, not yet in Postgres; "
                    (s.history.written) " written; " (s.history.dropped) " dropped. Fallback list: "
                    (s.fallback_movies) " movies."
                }
            }
            Err(why) => {
                p.error #lb-unreachable { "The load balancer's admin API is unreachable: " (why) }
                @if let Some((version, spec, updated)) = &routing.stored {
                    p { "Stored routing (version " (version) ", " (at(*updated)) "): main " (spec.main.join(", "))
                        "; nightly " (spec.nightly.join(", ")) "; share " (pct(spec.share)) "; experiment " code { (spec.experiment) } "." }
                }
            }
        }
        h2 { "The last hour, per assigned variant" }
        table #traffic {
            tr { th { "variant" } th { "responses" } th { "req/s" } th { "p50" } th { "p99" } th { "degraded" } th { "fallback" } }
            @for v in &hour {
                tr id=(format!("traffic-{}", v.variant)) {
                    td { (v.variant) }
                    td.n.requests { (v.requests) }
                    td.n { (format!("{:.2}", v.requests as f64 / 3600.0)) }
                    td.n { (v.p50_ms.map_or("—".into(), ms)) }
                    td.n { (v.p99_ms.map_or("—".into(), ms)) }
                    td.n { (pct(v.degraded as f64 / v.requests.max(1) as f64)) }
                    td.n { (pct(v.fallback as f64 / v.requests.max(1) as f64)) }
                }
            }
        }
        @if hour.is_empty() { p.muted { "No responses in the last hour." } }
        div.charts {
            (figure("chart-rate", "Requests per second, per minute", &lines(rate, "req/s")))
            (figure("chart-p99", "p99 latency per minute (ms)", &lines(p99, "ms")))
            (figure("chart-degraded", "Degraded or fallback answers per minute (%)", &lines(bad, "%")))
        }
        h2 { "Ingest" }
        @match watermark {
            Some((id, updated)) => p {
                "Watermark: event " span #watermark { (id) } ", advanced " (at(updated)) " ("
                span #ingest-lag { (format!("{:.0} s", (now - updated).num_milliseconds() as f64 / 1000.0)) } " ago)."
            },
            None => p.muted { "Nothing ingested yet." },
        }
        @if !sources.is_empty() {
            table #sources {
                tr { th { "source" } th { "kind" } th { "position" } th { "accepted" } th { "rejected" } th { "updated" } }
                @for (source, kind, position, accepted, rejected, updated) in &sources {
                    tr { td { code { (source) } } td { (kind) } td.n { (position) } td.n { (accepted) } td.n { (rejected) } td { (at(*updated)) } }
                }
            }
        }
    };
    Ok(Html(frame("Overview", "overview", body).into_string()))
}
