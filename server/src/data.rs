//! The Postgres reads of the request path: a user's history with the watermark it was read at
//! (one statement, so one snapshot), the popularity list, the watermark alone.

use sqlx::PgPool;

use strategy::{History, Model, Popularity, Watched, five_star};

/// Watched or rated movies of `user_id` and the ingest watermark, in one snapshot.
///
/// The ingester updates the summaries and the watermark in one transaction, so a single
/// statement sees exactly the events ≤ the watermark it returns.
pub async fn history(pool: &PgPool, user_id: i64) -> Result<History, sqlx::Error> {
    type Row = (i64, Option<String>, Option<i64>, Option<i16>, Option<i16>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT wm.last_event_id, h.movie_id, h.last_event_id, h.rating, h.scale
         FROM (SELECT coalesce((SELECT last_event_id FROM ingest_watermark), 0) AS last_event_id) wm
         LEFT JOIN LATERAL (
             SELECT movie_id,
                    greatest(w.last_event_id, r.event_id) AS last_event_id,
                    r.rating, r.scale
             FROM (SELECT movie_id, last_event_id FROM user_watched WHERE user_id = $1) w
             FULL JOIN (SELECT movie_id, rating, scale, event_id FROM ratings WHERE user_id = $1) r USING (movie_id)
         ) h ON h.last_event_id <= wm.last_event_id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    let watermark = rows.first().map(|r| r.0).unwrap_or(0);
    let watched = rows
        .into_iter()
        .filter_map(|(_, movie_id, last_event_id, rating, scale)| {
            Some(Watched { movie_id: movie_id?, last_event_id: last_event_id?, rating: five_star(rating, scale) })
        })
        .collect();
    Ok(History { watermark, watched }.canonical())
}

/// The id of the latest popularity run (None before the first `lazyrec-db popularity`).
pub async fn popularity_run(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(run_id) FROM popularity_runs").fetch_one(pool).await
}

/// The current popularity list (top `limit`) with user counts and its run id (0: the catalog
/// fallback); see [`db::popularity::current_with_users`].
pub async fn popularity(pool: &PgPool, limit: i64) -> Result<(Popularity, i64), sqlx::Error> {
    let list = db::popularity::current_with_users(pool, limit).await?;
    Ok((Popularity { movies: list.movies, watermark: list.watermark, users: list.users }, list.run_id))
}

/// The model a server serves, recorded once (`models`: model version → strategy, parameters and
/// search parameters) so a past answer's model version names a buildable model.
pub async fn register_model(pool: &PgPool, model: &Model) -> Result<(), sqlx::Error> {
    let recorded = db::models::RecordedModel {
        strategy: model.strategy_name().to_string(),
        params: model.params(),
        search: Some(serde_json::to_value(model.search()).unwrap_or_default()),
        git_sha: strategy::GIT_SHA.to_string(),
    };
    db::models::register(pool, model.version(), &recorded).await
}

/// The committed ingest watermark.
pub async fn watermark(pool: &PgPool) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar::<_, i64>("SELECT last_event_id FROM ingest_watermark")
        .fetch_optional(pool)
        .await?
        .unwrap_or(0))
}
