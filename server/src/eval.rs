//! Offline quality: a per-user time split of the data in Postgres, hit-rate@k and NDCG@k of the
//! configured model against the popularity baseline. The release gate builds on this.
//!
//! For every user with at least `min_items` watched/rated movies, the most recent `holdout`
//! share (by event id, i.e. log order) is hidden; the model sees the rest. Popularity is
//! recomputed from the visible part only (distinct users per movie), so neither side peeks.

use std::collections::{HashMap, HashSet};

use serde::Serialize;
use sqlx::PgPool;

use crate::core::Core;
use crate::strategy::{History, Popularity, PopularityV1, Strategy, Watched};

/// Split parameters.
#[derive(Debug, Clone, Copy)]
pub struct EvalSpec {
    /// Cut-off (20 in the course).
    pub k: usize,
    /// Share of each user's most recent items held out.
    pub holdout: f64,
    /// Users with fewer items are skipped.
    pub min_items: usize,
}

impl Default for EvalSpec {
    fn default() -> Self {
        Self { k: 20, holdout: 0.2, min_items: 10 }
    }
}

/// Scores of one model.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Scores {
    /// Share of users with at least one held-out movie in the top k.
    pub hit_rate: f64,
    /// Mean NDCG@k with binary relevance.
    pub ndcg: f64,
}

/// The evaluation's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalReport {
    /// Users evaluated.
    pub users: usize,
    /// The model under test.
    pub model_version: String,
    /// Its scores.
    pub model: Scores,
    /// The popularity baseline.
    pub popularity: Scores,
    /// k.
    pub k: usize,
}

impl EvalReport {
    /// Human-readable lines.
    pub fn render(&self) -> String {
        format!(
            "offline evaluation: {} users, per-user time split (last 20% held out), k = {}\n  {:<40} hit-rate@{k} {:.4}  NDCG@{k} {:.4}\n  {:<40} hit-rate@{k} {:.4}  NDCG@{k} {:.4}",
            self.users,
            self.k,
            self.model_version,
            self.model.hit_rate,
            self.model.ndcg,
            PopularityV1::NAME,
            self.popularity.hit_rate,
            self.popularity.ndcg,
            k = self.k
        )
    }
}

fn ndcg(ranked: &[String], relevant: &HashSet<&str>, k: usize) -> f64 {
    let dcg: f64 = ranked
        .iter()
        .take(k)
        .enumerate()
        .filter(|(_, m)| relevant.contains(m.as_str()))
        .map(|(i, _)| 1.0 / ((i + 2) as f64).log2())
        .sum();
    let ideal: f64 = (0..relevant.len().min(k)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    if ideal > 0.0 { dcg / ideal } else { 0.0 }
}

/// Runs the evaluation on the data in `pool` with the core's model and vector store.
pub async fn run(core: &Core, pool: &PgPool, spec: EvalSpec) -> anyhow::Result<EvalReport> {
    type Row = (i64, String, i64, Option<i16>, Option<i16>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT user_id, movie_id, greatest(w.last_event_id, r.event_id), r.rating, r.scale
         FROM (SELECT user_id, movie_id, last_event_id FROM user_watched) w
         FULL JOIN (SELECT user_id, movie_id, rating, scale, event_id FROM ratings) r USING (user_id, movie_id)
         ORDER BY user_id",
    )
    .fetch_all(pool)
    .await?;
    let mut by_user: HashMap<i64, Vec<Watched>> = HashMap::new();
    for (user, movie_id, last_event_id, rating, scale) in rows {
        let rating = crate::data::five_star(rating, scale);
        by_user.entry(user).or_default().push(Watched { movie_id, last_event_id, rating });
    }
    let mut users: Vec<i64> = by_user.keys().copied().filter(|u| by_user[u].len() >= spec.min_items).collect();
    users.sort_unstable();
    // Split, and popularity from the visible parts only.
    let mut splits = Vec::with_capacity(users.len());
    let mut counts: HashMap<String, usize> = HashMap::new();
    for user in &users {
        let history = History { watermark: 0, watched: by_user[user].clone() }.canonical();
        let hidden = ((history.watched.len() as f64) * spec.holdout).ceil() as usize;
        let (test, train) = history.watched.split_at(hidden);
        for w in train {
            *counts.entry(w.movie_id.clone()).or_default() += 1;
        }
        splits.push((
            History { watermark: 0, watched: train.to_vec() },
            test.iter().map(|w| w.movie_id.clone()).collect::<Vec<_>>(),
        ));
    }
    let mut ranked: Vec<(String, usize)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let popularity = Popularity { movies: ranked.into_iter().map(|r| r.0).collect(), watermark: 0 };
    let baseline = PopularityV1::default();
    let (mut model, mut pop) = (Scores::default(), Scores::default());
    for (train, test) in &splits {
        let relevant: HashSet<&str> = test.iter().map(String::as_str).collect();
        let ours: Vec<String> = core
            .rank_history(train, &popularity, spec.k)
            .await
            .map_err(anyhow::Error::msg)?
            .into_iter()
            .map(|i| i.movie_id)
            .collect();
        let base: Vec<String> =
            baseline.rank(train, &[], &popularity, spec.k).into_iter().map(|i| i.movie_id).collect();
        for (scores, list) in [(&mut model, &ours), (&mut pop, &base)] {
            scores.hit_rate += f64::from(u8::from(list.iter().any(|m| relevant.contains(m.as_str()))));
            scores.ndcg += ndcg(list, &relevant, spec.k);
        }
    }
    let n = splits.len().max(1) as f64;
    for s in [&mut model, &mut pop] {
        s.hit_rate /= n;
        s.ndcg /= n;
    }
    Ok(EvalReport {
        users: splits.len(),
        model_version: core.model_version().to_string(),
        model,
        popularity: pop,
        k: spec.k,
    })
}
