//! What a strategy ranks from: the user's history and the popularity list.

use std::collections::{HashMap, HashSet};

use proto::contract::{Item, popularity_score};

/// How many popularity entries an answer may read: the server loads this many, a replay reads
/// as many of a run's list, the evaluator ranks within as many.
pub const POPULARITY_LIST: usize = 1_000;

/// One watched (or rated) movie of the user.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    /// Course movie id.
    pub movie_id: String,
    /// The latest event about it (watch or rating): orders the history by recency.
    pub last_event_id: i64,
    /// The latest rating on a 1–5 scale, if any.
    pub rating: Option<f64>,
}

/// What the model knows about a user, as of `watermark`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// The ingest watermark the history was read at.
    pub watermark: i64,
    /// Most recent first (ties: movie id).
    pub watched: Vec<Watched>,
}

impl History {
    /// Sorts into the canonical order (most recent first, then movie id).
    pub fn canonical(mut self) -> Self {
        self.watched.sort_by(|a, b| b.last_event_id.cmp(&a.last_event_id).then_with(|| a.movie_id.cmp(&b.movie_id)));
        self
    }

    /// The watched movie ids.
    pub fn seen(&self) -> HashSet<&str> {
        self.watched.iter().map(|w| w.movie_id.as_str()).collect()
    }
}

/// The popularity list, best first, with the watermark it was computed at.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Popularity {
    /// Movie ids, most popular first.
    pub movies: Vec<String>,
    /// The watermark of the popularity run.
    pub watermark: i64,
    /// Distinct users per movie, aligned with `movies` (empty when unknown).
    pub users: Vec<u64>,
}

impl Popularity {
    /// A score in (0, 1] by rank: `1 / (1 + rank / half_rank)` (1 for the most popular, ½ at
    /// `half_rank`), 0 when absent.
    pub fn rank_scores(&self, half_rank: f64) -> HashMap<&str, f64> {
        self.movies
            .iter()
            .enumerate()
            .map(|(i, m)| (m.as_str(), 1.0 / (1.0 + i as f64 / half_rank.max(1e-9))))
            .collect()
    }

    /// `ln(users / users of the most popular)` per movie (≤ 0), and the value for a movie absent
    /// from the list (half the least popular listed movie's users: the list may be cut at a
    /// limit); `None` when the counts are unknown.
    pub fn log_shares(&self) -> Option<(HashMap<&str, f64>, f64)> {
        let max = *self.users.iter().max()?;
        let min = *self.users.iter().min()?;
        if self.users.len() != self.movies.len() || max == 0 {
            return None;
        }
        let share = |u: f64| (u.max(0.5) / max as f64).ln();
        let listed = self.movies.iter().zip(&self.users).map(|(m, &u)| (m.as_str(), share(u as f64))).collect();
        Some((listed, share(min as f64 / 2.0)))
    }

    /// The first `limit` movies not in `exclude`, scored by rank.
    pub fn top_excluding(&self, exclude: &HashSet<&str>, limit: usize) -> Vec<Item> {
        let n = self.movies.len();
        self.movies
            .iter()
            .enumerate()
            .filter(|(_, m)| !exclude.contains(m.as_str()))
            .take(limit)
            .map(|(i, m)| Item { movie_id: m.clone(), score: popularity_score(i, n) })
            .collect()
    }
}

/// A stored rating on its scale (5 or 10) as stars out of 5 (the one rule for every reader of
/// ratings: the server's history, the replay's history as of a watermark, the evaluator).
pub fn five_star(rating: Option<i16>, scale: Option<i16>) -> Option<f64> {
    match (rating, scale) {
        (Some(r), Some(s)) if s > 0 => Some(f64::from(r) * 5.0 / f64::from(s)),
        _ => None,
    }
}
