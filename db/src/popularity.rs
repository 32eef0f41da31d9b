//! The popularity table: how many distinct users were active on a movie (watched or rated it)
//! in a recent window, blended with TMDB popularity, recomputed by a command and stamped with
//! the ingest watermark it saw. The server's cold-start answer is this list.
//!
//! `score = w_activity · ln(1+users)/ln(1+max users) + (1-w_activity) · ln(1+tmdb)/ln(1+max tmdb)`.
//! The window ends at the newest event at or below the watermark (logs may be historical), so
//! the same data gives the same table whenever it is computed.

use serde::Serialize;
use sqlx::PgPool;

/// Parameters of a refresh.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PopularityParams {
    /// Window length in days.
    pub window_days: i32,
    /// Weight of in-window activity (the rest goes to TMDB popularity).
    pub activity_weight: f64,
}

impl Default for PopularityParams {
    fn default() -> Self {
        Self { window_days: 30, activity_weight: 0.7 }
    }
}

/// What a refresh produced.
#[derive(Debug, Clone, PartialEq)]
pub struct PopularityRun {
    /// Run id (`popularity_runs.run_id`).
    pub run_id: i64,
    /// The watermark the table reflects.
    pub watermark: i64,
    /// Movies ranked.
    pub movies: i64,
}

/// Recomputes the table in one repeatable-read transaction.
pub async fn refresh(pool: &PgPool, params: PopularityParams) -> Result<PopularityRun, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let watermark: i64 = sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark").fetch_one(&mut *tx).await?;
    let window_end: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT greatest((SELECT max(last_ts) FROM user_watched WHERE last_event_id <= $1),
                         (SELECT max(ts) FROM ratings WHERE event_id <= $1))",
    )
    .bind(watermark)
    .fetch_one(&mut *tx)
    .await?;
    let window_start = window_end.map(|end| end - chrono::Duration::days(i64::from(params.window_days)));
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO popularity_runs (watermark, window_start, window_end, params, movies) VALUES ($1, $2, $3, $4, 0) RETURNING run_id",
    )
    .bind(watermark)
    .bind(window_start)
    .bind(window_end)
    .bind(serde_json::to_value(params).unwrap_or_default())
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM popularity").execute(&mut *tx).await?;
    let movies = sqlx::query(
        "WITH activity AS (
            SELECT movie_id, count(DISTINCT user_id) AS users FROM (
                SELECT user_id, movie_id FROM user_watched WHERE last_event_id <= $1 AND last_ts >= $2
                UNION ALL
                SELECT user_id, movie_id FROM ratings WHERE event_id <= $1 AND ts >= $2
            ) a GROUP BY movie_id
         ), candidates AS (
            SELECT coalesce(m.movie_id, a.movie_id) AS movie_id,
                   coalesce(a.users, 0) AS users,
                   coalesce(m.popularity, 0) AS tmdb
            FROM movies m FULL OUTER JOIN activity a ON a.movie_id = m.movie_id
         ), scored AS (
            SELECT movie_id, users, tmdb,
                   $3 * ln(1 + users) / greatest(ln(1 + max(users) OVER ()), 1e-9)
                   + (1 - $3) * ln(1 + tmdb) / greatest(ln(1 + max(tmdb) OVER ()), 1e-9) AS score
            FROM candidates
         )
         INSERT INTO popularity (movie_id, rank, score, watch_users, tmdb_score, run_id, watermark)
         SELECT movie_id, row_number() OVER (ORDER BY score DESC, movie_id), score, users, tmdb, $4, $1
         FROM scored",
    )
    .bind(watermark)
    .bind(window_start)
    .bind(params.activity_weight)
    .bind(run_id)
    .execute(&mut *tx)
    .await?
    .rows_affected() as i64;
    // Kept per run: answers record the run they used, and a replay reads its list.
    sqlx::query(
        "INSERT INTO popularity_run_movies (run_id, rank, movie_id, watch_users)
         SELECT run_id, rank, movie_id, watch_users FROM popularity WHERE run_id = $1",
    )
    .bind(run_id)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE popularity_runs SET movies = $2 WHERE run_id = $1")
        .bind(run_id)
        .bind(movies as i32)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(PopularityRun { run_id, watermark, movies })
}

/// The top `limit` movie ids, best first.
pub async fn top(pool: &PgPool, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT movie_id FROM popularity ORDER BY rank LIMIT $1").bind(limit).fetch_all(pool).await
}

/// The current popularity list (top `limit`) and the ingest watermark it was computed at. Before
/// the first popularity run the table is empty; TMDB popularity from the catalog stands in (with
/// the current watermark).
pub async fn current(pool: &PgPool, limit: i64) -> Result<(Vec<String>, i64), sqlx::Error> {
    let list = current_with_users(pool, limit).await?;
    Ok((list.movies, list.watermark))
}

/// The popularity list a server serves, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentList {
    /// Movie ids, best first.
    pub movies: Vec<String>,
    /// Distinct users per movie in the run's window, aligned with `movies`; empty for the
    /// catalog fallback.
    pub users: Vec<u64>,
    /// The ingest watermark the run saw (the current one for the catalog fallback).
    pub watermark: i64,
    /// The run (`popularity_runs.run_id`); 0 for the catalog fallback before any run.
    pub run_id: i64,
}

/// [`current`] with each movie's distinct users in the window (`watch_users`) and the run id, read
/// in one statement (so the list and its run id agree).
pub async fn current_with_users(pool: &PgPool, limit: i64) -> Result<CurrentList, sqlx::Error> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT movie_id, watch_users, watermark, run_id FROM popularity ORDER BY rank, movie_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    if let Some((_, _, watermark, run_id)) = rows.first() {
        let (watermark, run_id) = (*watermark, *run_id);
        let users = rows.iter().map(|r| r.1.max(0) as u64).collect();
        return Ok(CurrentList { movies: rows.into_iter().map(|r| r.0).collect(), users, watermark, run_id });
    }
    let movies: Vec<String> = sqlx::query_scalar(
        "SELECT movie_id FROM movies ORDER BY popularity DESC NULLS LAST, vote_count DESC NULLS LAST, movie_id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let watermark: i64 =
        sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark").fetch_optional(pool).await?.unwrap_or(0);
    Ok(CurrentList { movies, users: Vec::new(), watermark, run_id: 0 })
}
