//! The fallback list: the popularity list served when no backend answers. Re-read from
//! Postgres periodically and kept on disk, so a restart while Postgres is down still has one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use proto::contract::{Item, popularity_score};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// The model version reported for fallback answers.
pub const FALLBACK_MODEL: &str = "fallback:popularity";

/// A popularity list with the watermark it was computed at.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fallback {
    /// Movie ids, most popular first.
    pub movies: Vec<String>,
    /// Ingest watermark of the list.
    pub watermark: i64,
}

impl Fallback {
    /// The first `limit` movies, scored by rank.
    pub fn items(&self, limit: usize) -> Vec<Item> {
        let n = self.movies.len();
        self.movies
            .iter()
            .take(limit)
            .enumerate()
            .map(|(rank, m)| Item { movie_id: m.clone(), score: popularity_score(rank, n) })
            .collect()
    }
}

/// The list in effect and its file.
#[derive(Debug)]
pub struct FallbackList {
    current: ArcSwap<Fallback>,
    file: PathBuf,
}

impl FallbackList {
    /// The list saved in `file` by an earlier run (empty when there is none).
    pub fn load(file: PathBuf) -> Self {
        let saved =
            std::fs::read(&file).ok().and_then(|b| serde_json::from_slice::<Fallback>(&b).ok()).unwrap_or_default();
        Self { current: ArcSwap::from_pointee(saved), file }
    }

    /// The list in effect.
    pub fn get(&self) -> Arc<Fallback> {
        self.current.load_full()
    }

    /// Replaces the list (ignored when empty: an old list beats none).
    pub fn set(&self, fallback: Fallback) {
        if !fallback.movies.is_empty() {
            self.current.store(Arc::new(fallback));
        }
    }

    /// Re-reads the popularity list from Postgres (within 2 s) and saves it.
    pub async fn refresh(&self, pool: &PgPool, limit: usize) {
        match tokio::time::timeout(Duration::from_secs(2), db::popularity::current(pool, limit as i64)).await {
            Ok(Ok((movies, watermark))) if !movies.is_empty() => {
                let current = self.get();
                if current.watermark == watermark && current.movies == movies {
                    return; // unchanged: nothing to store or save
                }
                let fallback = Fallback { movies, watermark };
                if let Ok(body) = serde_json::to_vec(&fallback)
                    && let Err(e) = std::fs::write(&self.file, body)
                {
                    tracing::debug!(error = %e, file = %self.file.display(), "fallback list not saved");
                }
                self.set(fallback);
            }
            Ok(Ok(_)) => tracing::debug!("no popularity list yet"),
            Ok(Err(e)) => tracing::debug!(error = %e, "fallback list not refreshed"),
            Err(_) => tracing::debug!("fallback list not refreshed: Postgres too slow"),
        }
    }
}
