//! `/users/{id}`: a user's history (watched and rated, newest first), their variant under the
//! routing now and their first sighting per experiment, their last answers with model versions,
//! and what main's and the nightly's model answer now (asked directly, so nothing is logged).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Empty};
use maud::html;

use crate::html::{at, frame};
use crate::{App, PageError, PageResult};

/// Rows of the history shown (the counts are of everything).
const SHOWN: i64 = 100;

/// `GET /users?id=`.
#[derive(serde::Deserialize)]
pub struct Find {
    id: Option<String>,
}

/// The search form, or a redirect to the user asked for.
pub async fn find(Query(q): Query<Find>) -> Response {
    if let Some(id) = q.id.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        return match id.parse::<i64>() {
            Ok(n) => Redirect::to(&format!("/users/{n}")).into_response(),
            Err(_) => PageError::BadRequest(format!("{id:?} is not a user id (a number)")).into_response(),
        };
    }
    let body = html! {
        h1 { "Users" }
        form method="get" action="/users" {
            label { "User id " input type="text" name="id" autofocus; } " " button type="submit" { "Show" }
        }
    };
    Html(frame("Users", "users", body).into_string()).into_response()
}

/// What a backend answered now.
struct Now {
    variant: &'static str,
    backend: String,
    answer: Result<(String, String), String>,
}

async fn ask(app: &App, backend: &str, user: i64) -> Result<(String, String), String> {
    let uri = format!("{}/recommend/{user}", backend.trim_end_matches('/'));
    let request = hyper::Request::get(&uri).body(Empty::new()).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(2), app.http.request(request))
        .await
        .map_err(|_| "no answer within 2 s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let version = response
        .headers()
        .get(proto::contract::headers::MODEL_VERSION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    if !status.is_success() {
        return Err(format!("HTTP {status}: {text}"));
    }
    Ok((version, text))
}

type Watched = (String, Option<String>, Option<DateTime<Utc>>, Option<i32>, Option<i16>, Option<DateTime<Utc>>);
type Answer = (String, DateTime<Utc>, String, Option<String>, i32, bool, Vec<String>, i64);

/// `GET /users/{id}`.
pub async fn page(State(app): State<Arc<App>>, Path(user): Path<i64>) -> PageResult {
    let (watched, rated): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM user_watched WHERE user_id = $1), (SELECT count(*) FROM ratings WHERE user_id = $1)",
    )
    .bind(user)
    .fetch_one(&app.pool)
    .await?;
    let history: Vec<Watched> = sqlx::query_as(
        "SELECT movie_id, m.title, w.last_ts, w.max_minute, r.rating, r.ts
         FROM (SELECT * FROM user_watched WHERE user_id = $1) w
         FULL JOIN (SELECT * FROM ratings WHERE user_id = $1) r USING (user_id, movie_id)
         LEFT JOIN movies m USING (movie_id)
         ORDER BY greatest(w.last_ts, r.ts) DESC NULLS LAST, movie_id LIMIT $2",
    )
    .bind(user)
    .bind(SHOWN)
    .fetch_all(&app.pool)
    .await?;
    let answers: Vec<Answer> = sqlx::query_as(
        "SELECT request_id, ts, served_variant, model_version, status, degraded, movie_ids, latency_us
         FROM recommendations_history WHERE user_id = $1 ORDER BY ts DESC LIMIT 20",
    )
    .bind(user)
    .fetch_all(&app.pool)
    .await?;
    let sightings: Vec<(String, String, i32, DateTime<Utc>)> = sqlx::query_as(
        "SELECT experiment, variant, bucket, first_seen FROM user_model_map WHERE user_id = $1 ORDER BY first_seen DESC LIMIT 20",
    )
    .bind(user)
    .fetch_all(&app.pool)
    .await?;
    let routing = super::routing(&app).await?;
    let assigned = routing.assignment().map(|(salt, share)| {
        let (bucket, variant) = loadbalancer::assign::assign(&salt, share, user);
        (salt, share, bucket, variant.as_str())
    });
    let (main, nightly) = routing.backends();
    let mut now = Vec::new();
    for (variant, urls) in [("main", &main), ("nightly", &nightly)] {
        if let Some(url) = urls.first() {
            now.push(Now { variant, backend: url.clone(), answer: ask(&app, url, user).await });
        }
    }
    let body = html! {
        h1 { "User " span #user-id { (user) } }
        p {
            span #watched-count { (watched) } " movies watched, " span #rated-count { (rated) } " rated. "
            @match &assigned {
                Some((salt, share, bucket, variant)) => {
                    "Under experiment " code { (salt) } " (nightly share " (crate::html::pct(*share)) ") the user is in bucket "
                    (bucket) ": " strong #variant { (variant) } "."
                }
                None => { "No routing known yet." }
            }
        }
        h2 { "What each model answers now" }
        table #now {
            tr { th { "variant" } th { "backend" } th { "model version" } th { "answer" } }
            @for n in &now {
                tr id=(format!("now-{}", n.variant)) {
                    td { (n.variant) } td { code { (n.backend) } }
                    @match &n.answer {
                        Ok((version, text)) => { td { code { (version) } } td { (text.split(',').map(str::trim).collect::<Vec<_>>().join(", ")) } }
                        Err(why) => { td {} td.error { (why) } }
                    }
                }
            }
        }
        @if now.is_empty() { p.muted { "No backend known." } }
        h2 { "Last answers (" span #answers-count { (answers.len()) } ", newest first)" }
        table #answers {
            tr { th { "at" } th { "request" } th { "served" } th { "model version" } th { "status" } th { "latency" } th { "movies" } }
            @for (request_id, ts, served, model, status, degraded, movies, latency_us) in &answers {
                tr {
                    td { (at(*ts)) }
                    td { a href=(format!("/provenance?request_id={request_id}")) { code { (request_id) } } }
                    td { (served) @if *degraded { " " span.warn { "(degraded)" } } }
                    td { code { (model.as_deref().unwrap_or("—")) } }
                    td.n { (status) }
                    td.n { (format!("{:.1} ms", *latency_us as f64 / 1000.0)) }
                    td { (movies.join(", ")) }
                }
            }
        }
        h2 { "History (newest first" @if watched + rated > SHOWN { ", the latest " (SHOWN) } ")" }
        table #history {
            tr { th { "movie" } th { "title" } th { "last watched" } th { "minutes" } th { "rating" } th { "rated" } }
            @for (movie, title, last, minutes, rating, rated_at) in &history {
                tr {
                    td { code { (movie) } } td { (title.as_deref().unwrap_or("")) }
                    td { (last.map(at).unwrap_or_default()) } td.n { (minutes.map(|m| (m + 1).to_string()).unwrap_or_default()) }
                    td.n { (rating.map(|r| r.to_string()).unwrap_or_default()) } td { (rated_at.map(at).unwrap_or_default()) }
                }
            }
        }
        @if !sightings.is_empty() {
            h2 { "First seen per experiment" }
            table #sightings {
                tr { th { "experiment" } th { "variant" } th { "bucket" } th { "first seen" } }
                @for (experiment, variant, bucket, first) in &sightings {
                    tr { td { code { (experiment) } } td { (variant) } td.n { (bucket) } td { (at(*first)) } }
                }
            }
        }
    };
    Ok(Html(frame(&format!("User {user}"), "users", body).into_string()))
}
