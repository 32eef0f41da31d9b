//! `/provenance?request_id=`: the document `lazyrec-provenance show` prints for one answer, and
//! a replay button (`POST /provenance/replay`, read-only: it computes the answer again from the
//! recorded inputs with `provenance::replay::Replayer`, as `lazyrec-provenance replay` does).

use std::sync::Arc;

use axum::extract::{Form, Query, State};
use axum::response::Html;
use maud::{Markup, html};
use provenance::replay::{Outcome, ReplayError, Replayer};

use crate::html::{at, frame};
use crate::{App, PageError, PageResult};

/// The request id asked for.
#[derive(serde::Deserialize)]
pub struct Asked {
    request_id: Option<String>,
}

fn form(request_id: &str) -> Markup {
    html! {
        form method="get" action="/provenance" {
            label { "Request id " input type="text" name="request_id" size="40" value=(request_id) autofocus; }
            " " button type="submit" { "Show" }
        }
    }
}

async fn document(app: &App, request_id: &str) -> Result<Markup, PageError> {
    let Some(p) = db::provenance::provenance(&app.pool, request_id).await? else {
        return Err(PageError::NotFound(format!("no recommendation with request id {request_id:?}")));
    };
    Ok(html! {
        table #provenance {
            tr { th { "request" } td #request-id { code { (p.request_id) } } }
            tr { th { "at" } td { (at(p.ts)) } }
            tr { th { "user" } td { @if let Some(u) = p.user_id { a href=(format!("/users/{u}")) { (u) } } } }
            tr { th { "served by" } td { (p.served_variant) " " (p.backend.as_deref().unwrap_or("")) } }
            tr { th { "model version" } td #model-version { code { (p.model_version.as_deref().unwrap_or("—")) } } }
            tr { th { "release" } td #release { @if let Some(r) = p.release_id { a href=(format!("/releases/{r}")) { (r) } " " (p.release_tag.as_deref().unwrap_or("")) } } }
            tr { th { "data watermark" } td #data-watermark { (p.data_watermark.map(|w| w.to_string()).unwrap_or_default()) } }
            tr { th { "collection" } td { code { (p.collection.as_deref().unwrap_or("—")) } } }
            tr { th { "movies" } td #movies { (p.movie_ids.join(",")) } }
        }
        form method="post" action="/provenance/replay" {
            input type="hidden" name="request_id" value=(request_id);
            button type="submit" #replay { "Replay" }
            span.muted { " computes the answer again from the recorded inputs (read-only)" }
        }
        h2 { "The document (" code { "lazyrec-provenance show" } ")" }
        pre #document { (p.render()) }
    })
}

/// `GET /provenance`.
pub async fn page(State(app): State<Arc<App>>, Query(q): Query<Asked>) -> PageResult {
    let id = q.request_id.as_deref().map(str::trim).unwrap_or("");
    let body = html! {
        h1 { "Provenance" }
        (form(id))
        @if !id.is_empty() { (document(&app, id).await?) }
    };
    Ok(Html(frame("Provenance", "provenance", body).into_string()))
}

/// `POST /provenance/replay`.
pub async fn replay(State(app): State<Arc<App>>, Form(q): Form<Asked>) -> PageResult {
    let id = q.request_id.as_deref().map(str::trim).unwrap_or("").to_string();
    if id.is_empty() {
        return Err(PageError::BadRequest("no request id".into()));
    }
    let store = app
        .store
        .get_or_try_init(|| async {
            let open = app.config.store.clone();
            tokio::task::spawn_blocking(move || open()).await.map_err(anyhow::Error::from)?
        })
        .await?
        .clone();
    let mut replayer = Replayer::new(app.pool.clone(), store);
    let (recorded, outcome) = match replayer.replay(&id).await {
        Err(ReplayError::NotFound(id)) => {
            return Err(PageError::NotFound(format!("no recommendation with request id {id:?}")));
        }
        other => other.map_err(anyhow::Error::from)?,
    };
    let body = html! {
        h1 { "Provenance" }
        (form(&id))
        h2 { "Replay" }
        table #replay-result {
            tr { th { "recorded" } td #recorded { (recorded.movie_ids.join(",")) } }
            @match &outcome {
                Outcome::Identical => tr { th { "replayed" } td #replay-outcome.ok { "identical" } },
                Outcome::Different { replayed } => {
                    tr { th { "replayed" } td #replay-outcome.error { "DIFFERENT: " (replayed.join(",")) } }
                }
                Outcome::NotReproducible { why } => tr { th { "replayed" } td #replay-outcome.warn { "not reproducible: " (why) } },
            }
        }
        (document(&app, &id).await?)
    };
    Ok(Html(frame("Replay", "provenance", body).into_string()))
}
