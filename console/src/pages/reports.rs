//! `/reports?hours=`: `lazyrec-report` over the last hours (1 by default, as the CLI) as charts — the feedback loop (the
//! most recommended movies against their organic watching), popularity bias (Lorenz curves of
//! exposure and of organic watching), fairness by group with 95 % intervals, and drift.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::Html;
use chrono::Utc;
use maud::html;
use report::{Params, Range, Report};

use crate::charts::{BarGroup, COLORS, Lines, Series, bars};
use crate::html::{at, figure, frame, pct};
use crate::{App, PageError, PageResult};

/// The longest range a page computes (30 days).
const MAX_HOURS: i64 = 720;

/// The default range, in hours (as `lazyrec-report`).
const DEFAULT_HOURS: i64 = 1;

/// How long a computed report is shown before it is computed again.
pub const FRESH: Duration = Duration::from_secs(60);

/// How often the default range is recomputed in the background (within [`FRESH`]).
pub const REFRESH: Duration = Duration::from_secs(45);

/// A report and when it was computed.
pub struct Computed {
    /// The report.
    pub report: Report,
    /// How long the queries took.
    pub took: Duration,
}

async fn compute(pool: &sqlx::PgPool, hours: i64) -> Result<Computed, sqlx::Error> {
    let until = Utc::now();
    let params = Params {
        range: Range { since: until - chrono::Duration::hours(hours), until },
        baseline: None,
        current: None,
        conversion_window: chrono::Duration::seconds(600),
        top: 15,
        popular: 100,
    };
    let t = Instant::now();
    let report = Report::compute(pool, &params).await?;
    Ok(Computed { report, took: t.elapsed() })
}

/// Recomputes the default range every [`REFRESH`] (until aborted), so its page is served from a
/// report at most [`FRESH`] old without waiting for the queries.
pub async fn refresh_default(app: Arc<App>) {
    loop {
        match compute(&app.pool, DEFAULT_HOURS).await {
            Ok(c) => {
                tracing::debug!(took_ms = c.took.as_millis() as u64, "default report refreshed");
                app.reports.insert(DEFAULT_HOURS, Arc::new(c)).await;
            }
            Err(e) => tracing::warn!(error = %e, "refreshing the default report"),
        }
        tokio::time::sleep(REFRESH).await;
    }
}

/// `?hours=` (1 by default, as `lazyrec-report`).
#[derive(serde::Deserialize)]
pub struct Asked {
    hours: Option<i64>,
}

/// `GET /reports`.
pub async fn page(State(app): State<Arc<App>>, Query(q): Query<Asked>) -> PageResult {
    let hours = q.hours.unwrap_or(DEFAULT_HOURS);
    if !(1..=MAX_HOURS).contains(&hours) {
        return Err(PageError::BadRequest(format!("hours must be 1..={MAX_HOURS}, got {hours}")));
    }
    // Loads of the same range while it is being computed wait for that one computation.
    let computed = app.reports.try_get_with(hours, async { compute(&app.pool, hours).await.map(Arc::new) }).await?;
    let r = &computed.report;
    let e = &r.exposure;
    let pc = |v: &[(f64, f64)]| v.iter().map(|(x, y)| (100.0 * x, 100.0 * y)).collect::<Vec<_>>();
    let lorenz = Lines {
        x_label: "share of the catalog, least exposed first (%)".into(),
        y_label: "share of the total (%)".into(),
        bands: vec![],
        series: vec![
            Series {
                name: "recommendation slots".into(),
                points: pc(&e.lorenz_exposure),
                color: COLORS[0],
                dashed: false,
            },
            Series { name: "organic watching".into(), points: pc(&e.lorenz_organic), color: COLORS[2], dashed: false },
            Series {
                name: "equality".into(),
                points: vec![(0.0, 0.0), (100.0, 100.0)],
                color: COLORS[5],
                dashed: true,
            },
        ],
    }
    .svg();
    // Ranks on the axis; the table below names the movies.
    let top: Vec<String> = (1..=e.top.len()).map(|rank| rank.to_string()).collect();
    let feedback = bars(
        "share (%)",
        &top,
        &[
            BarGroup {
                name: "of recommendation slots".into(),
                color: COLORS[0],
                values: e.top.iter().map(|m| (100.0 * m.exposure_share, None)).collect(),
            },
            BarGroup {
                name: "of organic watching".into(),
                color: COLORS[2],
                values: e.top.iter().map(|m| (100.0 * m.organic_share, None)).collect(),
            },
        ],
    );
    let dims: Vec<&str> = {
        let mut d: Vec<&str> = r.fairness.groups.iter().map(|g| g.dimension.as_str()).collect();
        d.dedup();
        d
    };
    let fairness: Vec<(String, String)> = dims
        .iter()
        .map(|dim| {
            let groups: Vec<_> = r.fairness.groups.iter().filter(|g| g.dimension == *dim).take(12).collect();
            let names: Vec<String> = groups.iter().map(|g| g.group.chars().take(12).collect()).collect();
            let share = |s: &report::Share| (100.0 * s.rate, Some((100.0 * s.low, 100.0 * s.high)));
            let svg = bars(
                "%",
                &names,
                &[
                    BarGroup {
                        name: "conversion".into(),
                        color: COLORS[1],
                        values: groups.iter().map(|g| share(&g.conversion)).collect(),
                    },
                    BarGroup {
                        name: "popular exposure".into(),
                        color: COLORS[4],
                        values: groups.iter().map(|g| share(&g.popular_exposure)).collect(),
                    },
                ],
            );
            (dim.to_string(), svg)
        })
        .collect();
    let drift: Vec<(String, Option<f64>, String)> = r
        .drift
        .distributions
        .iter()
        .map(|c| {
            let shares = |d: &report::drift::Distribution| {
                d.counts.iter().map(|&n| (100.0 * n as f64 / d.n.max(1) as f64, None)).collect::<Vec<_>>()
            };
            let svg = bars(
                "% of observations",
                &c.bins,
                &[
                    BarGroup { name: "first half".into(), color: COLORS[5], values: shares(&c.baseline) },
                    BarGroup { name: "second half".into(), color: COLORS[0], values: shares(&c.current) },
                ],
            );
            (c.name.clone(), c.psi, svg)
        })
        .collect();

    let body = html! {
        h1 { "Reports" }
        form method="get" action="/reports" {
            label { "Last " input type="number" name="hours" min="1" max=(MAX_HOURS) value=(hours); " hours" }
            " " button type="submit" { "Compute" }
        }
        p {
            (at(r.range.since)) " .. " (at(r.range.until)) " UTC: " span #answers { (r.answers) } " answers. "
            code { "lazyrec-report --since " (r.range.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                " --until " (r.range.until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)) }
            " prints the same tables. Computed in " (format!("{} ms", computed.took.as_millis()))
            "; shown for up to " (FRESH.as_secs()) " s (the last hour is recomputed every " (REFRESH.as_secs()) " s)."
        }
        h2 { "Popularity bias and the feedback loop" }
        p {
            "Catalog coverage " span #coverage { (pct(e.coverage)) } " (" (e.recommended_movies) " of " (e.catalog) " movies recommended); "
            "the 10 most recommended movies take " (pct(e.top10_share)) " of the slots. Gini of exposure "
            span #gini-exposure { (format!("{:.3}", e.gini_exposure)) } " against " (format!("{:.3}", e.gini_organic))
            " for organic watching; " (e.recommended_watches) " of " (e.watches) " first watches followed an answer that listed the movie."
        }
        div.charts {
            (figure("chart-lorenz", "Lorenz curves: exposure against organic watching", &lorenz))
            (figure("chart-feedback", "The most recommended movies (by rank): their share of slots and of organic watching", &feedback))
        }
        @if !e.top.is_empty() {
            table #feedback {
                tr { th { "rank" } th { "movie" } th { "slots" } th { "of all slots" } th { "organic watches" } th { "amplification" } }
                @for (rank, m) in e.top.iter().enumerate() {
                    tr {
                        td.n { (rank + 1) } td { code { (m.movie_id) } } td.n { (m.slots) } td.n { (pct(m.exposure_share)) }
                        td.n { (m.organic) } td.n { (m.amplification.map_or("never organic".into(), |a| format!("{a:.1}×"))) }
                    }
                }
            }
        }
        h2 { "Fairness by group (95 % intervals)" }
        p { (r.fairness.users_with_profile) " of " (r.fairness.users) " users have a profile; popular = the top " (r.fairness.popular) " movies." }
        div.charts {
            @for (dim, svg) in &fairness { (figure(&format!("chart-fairness-{dim}"), &format!("Conversion and popular exposure by {dim}"), svg)) }
        }
        @if fairness.is_empty() { p.muted { "No user with a profile in the range." } }
        h2 { "Drift: first half against second half" }
        p {
            "New users " (pct(r.drift.new_users.0.rate)) " → " (pct(r.drift.new_users.1.rate)) "; cold-start answers "
            (pct(r.drift.cold_start_answers.0.rate)) " → " (pct(r.drift.cold_start_answers.1.rate)) "."
        }
        div.charts {
            @for (name, psi, svg) in &drift {
                (figure(&format!("chart-drift-{}", name.replace(' ', "-")), &format!("{name}: PSI {}", psi.map_or("—".into(), |p| format!("{p:.3}"))), svg))
            }
        }
    };
    Ok(Html(frame("Reports", "reports", body).into_string()))
}
