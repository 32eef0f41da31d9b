//! Retention: what `recommendations_history` still refers to is kept, and `prune` deletes
//! history older than a time together with what only that history referred to.
//!
//! Invariant: a popularity run's list or a vector collection that a history row names is never
//! deleted by the normal commands (the embedder keeps such collections as `retained`; a
//! popularity refresh only replaces the `popularity` table, every run's list stays in
//! `popularity_run_movies`). Only [`prune_history`] and the two plans below remove them, and
//! only once no remaining row names them. Releases and models are kept: they are the audit
//! trail of what was released and served (a few rows each), not data of the pruned answers.
//! Events (`watch_events`, `rating_events`) are training data and stay as well.
//!
//! The lookups use the indexes of migration 0004 (`history_popularity_run(inputs)`,
//! `history_collection(inputs)`), so none of them scans history.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// Of `names`, the collections some history row at or after `since` names (all rows when
/// `since` is `None`).
pub async fn referenced_collections(
    pool: &PgPool,
    names: &[String],
    since: Option<DateTime<Utc>>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c FROM unnest($1::text[]) c
         WHERE EXISTS (SELECT 1 FROM recommendations_history h
                       WHERE history_collection(h.inputs) = c AND ($2::timestamptz IS NULL OR h.ts >= $2))
         ORDER BY c",
    )
    .bind(names)
    .bind(since)
    .fetch_all(pool)
    .await
}

/// What pruning history before a time removes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PrunePlan {
    /// The cut: history rows older than this go.
    pub before: DateTime<Utc>,
    /// History rows older than the cut.
    pub history_rows: u64,
    /// Popularity runs whose kept list goes: computed before the cut, not the latest run, and
    /// named by no history row at or after the cut.
    pub popularity_runs: Vec<i64>,
    /// Vector collections that go: `retained` (kept only because history named them), in the
    /// store, and named by no history row at or after the cut.
    pub collections: Vec<String>,
}

/// Works out what [`prune_history`] and the drops would remove; `stored` are the collections the
/// vector store holds. Read-only.
pub async fn plan(pool: &PgPool, before: DateTime<Utc>, stored: &[String]) -> Result<PrunePlan, sqlx::Error> {
    let history_rows: i64 = sqlx::query_scalar("SELECT count(*) FROM recommendations_history WHERE ts < $1")
        .bind(before)
        .fetch_one(pool)
        .await?;
    let popularity_runs: Vec<i64> = sqlx::query_scalar(
        "SELECT r.run_id FROM popularity_runs r
         WHERE r.computed_at < $1
           AND r.run_id < (SELECT max(run_id) FROM popularity_runs)
           AND EXISTS (SELECT 1 FROM popularity_run_movies m WHERE m.run_id = r.run_id)
           AND NOT EXISTS (SELECT 1 FROM recommendations_history h
                           WHERE history_popularity_run(h.inputs) = r.run_id AND h.ts >= $1)
         ORDER BY r.run_id",
    )
    .bind(before)
    .fetch_all(pool)
    .await?;
    let retained: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM embedding_collections WHERE name = ANY($1) AND state = 'retained' ORDER BY name",
    )
    .bind(stored)
    .fetch_all(pool)
    .await?;
    let still = referenced_collections(pool, &retained, Some(before)).await?;
    let collections = retained.into_iter().filter(|c| !still.contains(c)).collect();
    Ok(PrunePlan { before, history_rows: history_rows as u64, popularity_runs, collections })
}

/// Drops the monthly partitions of `recommendations_history` that end at or before `before`
/// (every row in them is older than the cut): (partition, rows it held) each. What is left
/// older than the cut goes by [`prune_history`]. Also makes sure the next three months'
/// partitions exist.
pub async fn drop_history_partitions(pool: &PgPool, before: DateTime<Utc>) -> Result<Vec<(String, u64)>, sqlx::Error> {
    let dropped: Vec<(String, i64)> =
        sqlx::query_as("SELECT partition, rows FROM history_drop_partitions($1)").bind(before).fetch_all(pool).await?;
    sqlx::query("SELECT history_ensure_partitions(now(), now() + interval '3 months')").execute(pool).await?;
    Ok(dropped.into_iter().map(|(p, n)| (p, n.max(0) as u64)).collect())
}

/// Deletes history rows older than `before`, `batch` rows per transaction (a crash loses
/// nothing: the next run deletes the rest). Calls `progress` with the rows deleted so far.
pub async fn prune_history(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
    mut progress: impl FnMut(u64),
) -> Result<u64, sqlx::Error> {
    let mut deleted = 0_u64;
    loop {
        let n = sqlx::query(
            "DELETE FROM recommendations_history WHERE (request_id, ts) IN
               (SELECT request_id, ts FROM recommendations_history WHERE ts < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(batch.max(1))
        .execute(pool)
        .await?
        .rows_affected();
        deleted += n;
        progress(deleted);
        if n == 0 {
            return Ok(deleted);
        }
    }
}

/// Deletes the kept lists of `runs` — each only if, now, no history row names it and it is not
/// the latest run (checked again here, in the same statement). Returns the runs deleted.
pub async fn prune_popularity_runs(pool: &PgPool, runs: &[i64]) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "WITH gone AS (
           DELETE FROM popularity_run_movies m
           WHERE m.run_id = ANY($1)
             AND m.run_id < (SELECT max(run_id) FROM popularity_runs)
             AND NOT EXISTS (SELECT 1 FROM recommendations_history h WHERE history_popularity_run(h.inputs) = m.run_id)
           RETURNING m.run_id)
         SELECT DISTINCT run_id FROM gone ORDER BY run_id",
    )
    .bind(runs)
    .fetch_all(pool)
    .await
}

/// Records that `names` were dropped from the store.
pub async fn mark_dropped(pool: &PgPool, names: &[String]) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE embedding_collections SET state = 'dropped', updated_at = now() WHERE name = ANY($1)")
        .bind(names)
        .execute(pool)
        .await?;
    Ok(())
}
