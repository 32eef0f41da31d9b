//! `/releases`: every release with its state; `/releases/{id}`: its looks over time (conversion
//! per variant, the confidence sequence of the difference as a band with the margin line, p99
//! per variant against the guardrail, the split against the SRM bound), its events and its
//! decision; the promote/abort/rollback buttons when the console has write access, each calling
//! the release controller as the CLI does.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::html;
use release::decision::{Criteria, Decision, Evaluation};
use release::notify::Notifier;
use release::store::{self, State as ReleaseState};
use statrs::distribution::{ContinuousCDF, Normal};

use crate::charts::{Band, COLORS, Lines, Series};
use crate::html::{at, figure, frame, ms, pct};
use crate::{App, PageError, PageResult};

/// `GET /releases`.
pub async fn list(State(app): State<Arc<App>>) -> PageResult {
    let releases = store::list(&app.pool).await.map_err(release::controller::ControlError::from)?;
    let body = html! {
        h1 { "Releases" }
        @if releases.is_empty() { p.muted { "No release yet: push a tag release-recommender-nightly-<v> (docs/releases.md)." } }
        table #releases {
            tr { th { "id" } th { "tag" } th { "state" } th { "model version" } th { "decision" } th { "created" } }
            @for (id, tag, state, model, reason, created) in &releases {
                tr id=(format!("release-{id}")) {
                    td { a href=(format!("/releases/{id}")) { (id) } }
                    td { (tag.as_deref().unwrap_or("—")) }
                    td.state { (state) }
                    td { code { (model) } }
                    td { (reason.as_deref().unwrap_or("")) }
                    td { (at(*created)) }
                }
            }
        }
    };
    Ok(Html(frame("Releases", "releases", body).into_string()))
}

type Head = (
    Option<String>,
    String,
    String,
    String,
    Option<f64>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// The χ² bound of the split at `threshold`: the observed nightly share outside
/// `expected ± z·√(p(1−p)/n)` is a sample-ratio mismatch (1 degree of freedom: χ² = z²).
fn srm_bound(expected: f64, users: u64, threshold: f64) -> Option<(f64, f64)> {
    if users == 0 || !(0.0..1.0).contains(&expected) || expected == 0.0 {
        return None;
    }
    let z = Normal::new(0.0, 1.0).ok()?.inverse_cdf(1.0 - threshold / 2.0);
    let half = z * (expected * (1.0 - expected) / users as f64).sqrt();
    Some((expected - half, expected + half))
}

/// `GET /releases/{id}`.
pub async fn one(State(app): State<Arc<App>>, Path(id): Path<i64>) -> PageResult {
    let head: Option<Head> = sqlx::query_as(
        "SELECT tag, state, strategy, model_version, share, decision, decision_reason, created_at, decided_at
         FROM releases WHERE release_id = $1",
    )
    .bind(id)
    .fetch_optional(&app.pool)
    .await?;
    let Some((tag, state, strategy, model, share, decision, reason, created, decided)) = head else {
        return Err(PageError::NotFound(format!("no release {id}")));
    };
    let events: Vec<(i64, DateTime<Utc>, String, serde_json::Value)> =
        sqlx::query_as("SELECT id, at, step, details FROM release_events WHERE release_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&app.pool)
            .await?;
    let mut unreadable = Vec::new();
    let mut looks: Vec<(DateTime<Utc>, Evaluation)> = Vec::new();
    for (event, t, _, d) in events.iter().filter(|e| e.2 == "evaluate") {
        match serde_json::from_value(d.clone()) {
            Ok(e) => looks.push((*t, e)),
            Err(why) => unreadable.push(format!("event {event}: {why}")),
        }
    }
    let latest = looks.last().map(|(_, e)| e);
    let criteria = latest.and_then(|e| e.criteria).unwrap_or_default();
    let minutes = |e: &Evaluation| e.elapsed_s / 60.0;
    let line = |name: &str, i: usize, points: Vec<(f64, f64)>, dashed: bool| Series {
        name: name.into(),
        points,
        color: COLORS[i],
        dashed,
    };

    let conversion = Lines {
        x_label: "minutes into the experiment".into(),
        y_label: "conversion %".into(),
        bands: vec![],
        series: vec![
            line("main", 0, looks.iter().map(|(_, e)| (minutes(e), 100.0 * e.main.conversion.rate())).collect(), false),
            line(
                "nightly",
                1,
                looks.iter().map(|(_, e)| (minutes(e), 100.0 * e.nightly.conversion.rate())).collect(),
                false,
            ),
        ],
    };
    let difference = Lines {
        x_label: "minutes into the experiment".into(),
        y_label: "nightly − main, points".into(),
        bands: vec![Band {
            name: format!("{:.0} % confidence sequence", 100.0 * (1.0 - criteria.alpha)),
            points: looks
                .iter()
                .map(|(_, e)| {
                    (minutes(e), 100.0 * e.comparison.cs_low.max(-1.0), 100.0 * e.comparison.cs_high.min(1.0))
                })
                .collect(),
            color: COLORS[0],
        }],
        series: vec![
            line("difference", 0, looks.iter().map(|(_, e)| (minutes(e), 100.0 * e.comparison.diff)).collect(), false),
            line("−margin", 3, looks.iter().map(|(_, e)| (minutes(e), -100.0 * criteria.margin)).collect(), true),
        ],
    };
    let latency = Lines {
        x_label: "minutes into the experiment".into(),
        y_label: "p99 ms".into(),
        bands: vec![],
        series: vec![
            line("main", 0, looks.iter().map(|(_, e)| (minutes(e), e.main.p99_ms)).collect(), false),
            line("nightly", 1, looks.iter().map(|(_, e)| (minutes(e), e.nightly.p99_ms)).collect(), false),
            line(
                "guardrail (main + allowed)",
                3,
                looks.iter().map(|(_, e)| (minutes(e), e.main.p99_ms + criteria.max_p99_increase_ms)).collect(),
                true,
            ),
        ],
    };
    let split = Lines {
        x_label: "minutes into the experiment".into(),
        y_label: "users on nightly %".into(),
        bands: vec![Band {
            name: format!("no mismatch (p ≥ {})", criteria.srm_threshold),
            points: looks
                .iter()
                .filter_map(|(_, e)| {
                    srm_bound(e.srm.expected_share, e.srm.control + e.srm.treatment, criteria.srm_threshold)
                        .map(|(lo, hi)| (minutes(e), 100.0 * lo, 100.0 * hi))
                })
                .collect(),
            color: COLORS[2],
        }],
        series: vec![
            line("observed", 1, looks.iter().map(|(_, e)| (minutes(e), 100.0 * e.srm.observed_share)).collect(), false),
            line(
                "configured",
                5,
                looks.iter().map(|(_, e)| (minutes(e), 100.0 * e.srm.expected_share)).collect(),
                true,
            ),
        ],
    };
    let state_parsed = ReleaseState::parse(&state);
    let buttons: Vec<&str> = if !app.config.write {
        Vec::new()
    } else {
        match state_parsed {
            Some(ReleaseState::Deployed) => vec!["look", "promote", "abort"],
            Some(ReleaseState::Promoted | ReleaseState::RolledBack) => vec!["rollback"],
            _ => Vec::new(),
        }
    };

    let body = html! {
        h1 { "Release " (id) " " small.muted { (tag.as_deref().unwrap_or("")) } }
        table #release {
            tr { th { "state" } td #release-state { (state) } }
            tr { th { "strategy" } td { (strategy) } }
            tr { th { "model version" } td { code #release-model { (model) } } }
            tr { th { "nightly share" } td { (share.map_or("—".into(), pct)) } }
            tr { th { "created" } td { (at(created)) } }
            tr { th { "decision" } td #release-decision { (decision.as_deref().unwrap_or("—")) " " (decided.map(at).unwrap_or_default()) } }
            tr { th { "reason" } td #release-reason { (reason.as_deref().unwrap_or("—")) } }
        }
        @if !buttons.is_empty() {
            p #actions {
                @for action in &buttons {
                    form.inline method="post" action=(format!("/releases/{id}/{action}")) {
                        button type="submit" id=(format!("action-{action}")) { (action) }
                    }
                }
                span.muted { "Each button calls the release controller, as lazyrec-release does." }
            }
        }
        h2 { "Looks (" span #looks { (looks.len()) } ")" }
        @if !unreadable.is_empty() { p.error #unreadable-looks { "Looks that do not read: " (unreadable.join("; ")) } }
        @if let Some(e) = latest {
            table #latest-look {
                tr { th { "variant" } th { "responses" } th { "users" } th { "conversion" } th { "failures" } th { "p50" } th { "p99" } }
                @for v in [&e.main, &e.nightly] {
                    tr id=(format!("look-{}", v.variant)) {
                        td { (v.variant) }
                        td.n.requests { (v.requests) }
                        td.n { (v.users) }
                        td.n { (pct(v.conversion.rate())) " (" (v.conversion.hits) " / " (v.conversion.n) ")" }
                        td.n { (pct(v.failure_rate())) }
                        td.n { (ms(v.p50_ms)) }
                        td.n { (ms(v.p99_ms)) }
                    }
                }
            }
            p {
                "Difference " (format!("{:+.2}", 100.0 * e.comparison.diff)) " points, confidence sequence ["
                (format!("{:+.2}, {:+.2}", 100.0 * e.comparison.cs_low, 100.0 * e.comparison.cs_high)) "], always-valid p "
                (format!("{:.4}", e.comparison.p_always_valid)) "; split " (pct(e.srm.observed_share)) " on nightly (SRM p "
                (format!("{:.3}", e.srm.p)) "); " (e.switched_users) " users changed variant. Latest decision: "
                strong #latest-decision { (match &e.decision {
                    Decision::Promote { reason } => format!("promote — {reason}"),
                    Decision::Abort { criterion, reason } => format!("abort ({criterion:?}) — {reason}"),
                    Decision::Continue { reason } => format!("continue — {reason}"),
                }) }
            }
            @if e.criteria.is_none() { p.muted { "(Looks recorded before their criteria were stored: the default criteria are drawn.)" } }
        } @else {
            p.muted { "No look recorded yet." }
        }
        div.charts {
            (figure("chart-conversion", "Conversion per variant", &conversion.svg()))
            (figure("chart-difference", "Nightly − main with its confidence sequence and the non-inferiority margin", &difference.svg()))
            (figure("chart-latency", "p99 per variant against the latency guardrail", &latency.svg()))
            (figure("chart-split", "Users on nightly against the SRM bound", &split.svg()))
        }
        h2 { "Events" }
        table #events {
            tr { th { "at" } th { "step" } th { "details" } }
            @for (_, t, step, details) in events.iter().filter(|e| e.2 != "evaluate") {
                tr { td { (at(*t)) } td { (step) } td { code { (short(details)) } } }
            }
        }
    };
    Ok(Html(frame(&format!("Release {id}"), "releases", body).into_string()))
}

fn short(details: &serde_json::Value) -> String {
    let text = details.to_string();
    if text.len() > 240 {
        let cut = (0..=240).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        format!("{}…", &text[..cut])
    } else {
        text
    }
}

/// `POST /releases/{id}/{action}`: `look` (one look, recorded and acted on), `promote`, `abort`,
/// `rollback` — only with write access.
pub async fn act(State(app): State<Arc<App>>, Path((id, action)): Path<(i64, String)>) -> Result<Response, PageError> {
    if !app.config.write {
        return Ok((
            axum::http::StatusCode::FORBIDDEN,
            Html(
                frame(
                    "Read-only",
                    "releases",
                    html! { h1 { "403 — read-only" } p.error { "This console was started without --write." } },
                )
                .into_string(),
            ),
        )
            .into_response());
    }
    let notify = Notifier::new(app.config.webhook.clone());
    let reason = format!("{action} from the console");
    tracing::info!(release = id, action = %action, "console action");
    match action.as_str() {
        "look" => {
            let params = release::look::LookParams {
                conversion_window: chrono::Duration::seconds(600),
                previous_p: 1.0,
                criteria: Criteria::default(),
            };
            let e = release::look::look(&app.pool, id, &params).await?;
            release::look::act(&app.pool, &app.admin, &notify, id, &e.decision).await?;
        }
        "promote" => release::controller::promote(&app.pool, &app.admin, &notify, id, &reason).await?,
        "abort" => release::controller::abort(&app.pool, &app.admin, &notify, id, &reason).await?,
        "rollback" => {
            release::controller::rollback(&app.pool, &app.admin, &notify, id, None, Duration::from_secs(30)).await?
        }
        other => return Err(PageError::NotFound(format!("no action {other:?} (look, promote, abort, rollback)"))),
    }
    Ok(Redirect::to(&format!("/releases/{id}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_srm_bound_narrows_with_users_and_holds_the_configured_share() {
        let (lo, hi) = srm_bound(0.2, 1_000, 0.001).expect("bound");
        assert!(lo < 0.2 && hi > 0.2);
        // z(0.9995) ≈ 3.29; √(0.16/1000) ≈ 0.01265.
        assert!((hi - 0.2 - 3.2905 * 0.012649).abs() < 1e-3, "{hi}");
        let (lo4, hi4) = srm_bound(0.2, 4_000, 0.001).expect("bound");
        assert!((hi4 - lo4) * 2.0 - (hi - lo) < 1e-9);
        assert!(srm_bound(0.2, 0, 0.001).is_none());
    }
}
