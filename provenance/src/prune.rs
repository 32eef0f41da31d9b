//! `prune --before <time>`: deletes history older than the cut together with what only that
//! history referred to — popularity run lists and `retained` vector collections no remaining
//! answer names. The rules are in [`db::retention`]; this adds the vector store.
//!
//! Order, so a crash at any point leaves nothing a remaining row needs deleted: history rows
//! first (in batches), then each run list and collection only after checking again that no
//! remaining row names it. Rerunning finishes an interrupted prune.

use chrono::{DateTime, Utc};
use db::retention::{self, PrunePlan};
use sqlx::PgPool;
use vectorstore::VectorStore;

/// Failures of a prune.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The vector store failed.
    #[error("vector store: {0}")]
    Store(#[from] vectorstore::StoreError),
    /// The cut would delete history that is still needed or still arriving.
    #[error("refusing to prune before {before}: {why}")]
    CutTooRecent {
        /// The cut asked for.
        before: String,
        /// What lies on the wrong side of it.
        why: String,
    },
    /// A load balancer's journal could not be read.
    #[error("reading the journal {0}: {1}")]
    Journal(String, String),
}

/// Refuses a cut that would delete history a running experiment still analyses (its window
/// began before the cut), or that lies inside a load balancer's journal backlog (rows older
/// than the cut still on their way: they would arrive after the prune, naming what it deleted).
pub async fn check_cut(
    pool: &PgPool,
    before: DateTime<Utc>,
    journals: &[std::path::PathBuf],
) -> Result<(), PruneError> {
    let refuse = |why: String| PruneError::CutTooRecent { before: before.to_rfc3339(), why };
    let running: Vec<(i64, String, DateTime<Utc>)> = sqlx::query_as(
        "SELECT release_id, tag, experiment_started_at FROM releases
         WHERE experiment_started_at IS NOT NULL AND experiment_ended_at IS NULL AND experiment_started_at < $1
         ORDER BY experiment_started_at",
    )
    .bind(before)
    .fetch_all(pool)
    .await?;
    if let Some((id, tag, started)) = running.first() {
        return Err(refuse(format!(
            "release {id} ({tag}) runs an experiment since {}; cut before that, or end the experiment first",
            started.to_rfc3339()
        )));
    }
    for dir in journals {
        let backlog = loadbalancer::journal::backlog(dir)
            .map_err(|e| PruneError::Journal(dir.display().to_string(), e.to_string()))?;
        if let Some(b) = backlog.filter(|b| b.oldest < before) {
            return Err(refuse(format!(
                "the load balancer's journal {} still holds rows from {} on ({} bytes not yet in Postgres); cut before that, or let them ship",
                dir.display(),
                b.oldest.to_rfc3339(),
                b.bytes
            )));
        }
    }
    Ok(())
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PruneReport {
    /// The plan it worked from.
    pub plan: PrunePlan,
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// History rows deleted (those in dropped partitions included).
    pub history_rows: u64,
    /// Monthly partitions dropped whole (every row older than the cut), with their rows.
    pub partitions: Vec<(String, u64)>,
    /// Popularity runs whose lists were deleted.
    pub popularity_runs: Vec<i64>,
    /// Collections dropped from the store.
    pub collections: Vec<String>,
}

impl PruneReport {
    /// For humans.
    pub fn render(&self) -> String {
        let p = &self.plan;
        if self.dry_run {
            format!(
                "would delete {} history rows older than {}, the lists of popularity runs {:?}, collections {:?}\n",
                p.history_rows,
                p.before.to_rfc3339(),
                p.popularity_runs,
                p.collections
            )
        } else {
            let partitions = if self.partitions.is_empty() {
                String::new()
            } else {
                let list: Vec<String> = self.partitions.iter().map(|(p, n)| format!("{p} ({n} rows)")).collect();
                format!(" (partitions dropped whole: {})", list.join(", "))
            };
            format!(
                "deleted {} history rows older than {}{partitions}, the lists of popularity runs {:?}, collections {:?}\n",
                self.history_rows,
                p.before.to_rfc3339(),
                self.popularity_runs,
                self.collections
            )
        }
    }
}

/// Prunes history older than `before` and what only it referred to (see the module docs).
/// `progress` gets the history rows deleted so far.
pub async fn prune(
    pool: &PgPool,
    store: &dyn VectorStore,
    before: DateTime<Utc>,
    dry_run: bool,
    progress: impl FnMut(u64),
) -> Result<PruneReport, PruneError> {
    let stored = store.collections().await?;
    let plan = retention::plan(pool, before, &stored).await?;
    if dry_run {
        return Ok(PruneReport { plan, dry_run, ..PruneReport::default() });
    }
    let partitions = retention::drop_history_partitions(pool, before).await?;
    let in_partitions: u64 = partitions.iter().map(|(_, n)| n).sum();
    let history_rows = in_partitions + retention::prune_history(pool, before, 10_000, progress).await?;
    let popularity_runs = retention::prune_popularity_runs(pool, &plan.popularity_runs).await?;
    // Checked again now that the rows are gone (an answer may have named one meanwhile).
    let still = retention::referenced_collections(pool, &plan.collections, None).await?;
    let live = store.live().await?;
    let mut collections = Vec::new();
    for name in &plan.collections {
        if still.contains(name) || live.as_ref() == Some(name) {
            continue;
        }
        store.drop_collection(name).await?;
        retention::mark_dropped(pool, std::slice::from_ref(name)).await?;
        collections.push(name.clone());
    }
    Ok(PruneReport { plan, dry_run, history_rows, partitions, popularity_runs, collections })
}
