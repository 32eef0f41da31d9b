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
}

/// What a prune did (or, dry, would do).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct PruneReport {
    /// The plan it worked from.
    pub plan: PrunePlan,
    /// Whether anything was deleted.
    pub dry_run: bool,
    /// History rows deleted.
    pub history_rows: u64,
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
            format!(
                "deleted {} history rows older than {}, the lists of popularity runs {:?}, collections {:?}\n",
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
    let history_rows = retention::prune_history(pool, before, 10_000, progress).await?;
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
    Ok(PruneReport { plan, dry_run, history_rows, popularity_runs, collections })
}
