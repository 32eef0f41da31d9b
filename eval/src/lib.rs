//! lazyrec's offline evaluator — a library, because the release gate calls it, and the
//! `lazyrec-eval` command.
//!
//! A [`Dataset`](dataset::Dataset) (the data in Postgres split per user by time, or benchmark
//! train/test files) is scored with ranking metrics at several K ([`metrics`]) for the baselines
//! (TopPop, ItemKNN-CF, EASE) and any registered serving strategy ([`models`]), all fitted on the
//! training part only; the test part is never used for tuning (a validation split is carved
//! from training with [`Dataset::validation`](dataset::Dataset::validation)). The
//! [`Report`] renders as an aligned table and as JSON; [`gate`] compares two models.

pub mod dataset;
pub mod files;
pub mod metrics;
pub mod models;
pub mod source;

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use serde::Serialize;

use crate::dataset::{Dataset, Summary};
use crate::metrics::{Accumulator, At};
use crate::models::{Context, ModelSpec};

/// A test item with fewer training users than this counts as a new movie in
/// [`ModelResult::new_movie_recall`].
pub const NEW_MOVIE_USERS: usize = 5;

/// One model's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelResult {
    /// The label (spec as written).
    pub label: String,
    /// Model name.
    pub name: String,
    /// Parameters as given (defaults apply to missing ones).
    pub params: serde_json::Value,
    /// Scores per K; empty when the model could not run.
    pub at: BTreeMap<usize, At>,
    /// Recall at the largest K on the test items with fewer than [`NEW_MOVIE_USERS`] training
    /// users (movies new or rare in training), over the users that have such items.
    pub new_movie_recall: Option<f64>,
    /// Wall time of fit + recommend, seconds.
    pub seconds: f64,
    /// Why it did not run, if it did not.
    pub error: Option<String>,
}

/// An evaluation's result.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    /// The dataset.
    pub dataset: Summary,
    /// Cut-offs.
    pub ks: Vec<usize>,
    /// Behaviour-vector parameters used by strategies that need them.
    pub behaviour: behaviour::Params,
    /// Whether content vectors were available.
    pub content_vectors: bool,
    /// Users with at least one new-movie test item (see [`NEW_MOVIE_USERS`]).
    pub new_movie_users: usize,
    /// Results, in the order asked.
    pub models: Vec<ModelResult>,
}

/// Evaluates `specs` on `data`. A model that cannot be fitted is reported with its error (the
/// others still run). `progress` is called after each model.
pub fn evaluate(
    data: &Dataset,
    specs: &[ModelSpec],
    ks: &[usize],
    context: &Context,
    mut progress: impl FnMut(&ModelResult),
) -> Report {
    let kmax = ks.iter().copied().max().unwrap_or(20);
    let order = data.popularity();
    let percentile = metrics::percentiles(&order, data.items.len());
    let catalog = order.len();
    let users: Vec<usize> = data.test_users().collect();
    let trained = data.item_users();
    let new_movies: Vec<HashSet<u32>> = users
        .iter()
        .map(|&u| data.test[u].iter().copied().filter(|&i| trained[i as usize] < NEW_MOVIE_USERS).collect())
        .collect();
    let new_movie_users = new_movies.iter().filter(|s| !s.is_empty()).count();
    let mut results = Vec::with_capacity(specs.len());
    for spec in specs {
        let started = Instant::now();
        let (at, new_movie_recall, error) = match models::fit(spec, data, context) {
            Err(e) => (BTreeMap::new(), None, Some(e.to_string())),
            Ok(model) => {
                let lists = recommend_all(model.as_ref(), &users, kmax);
                let mut acc = Accumulator::new(ks);
                let mut new_recall = 0.0;
                for ((&u, list), new) in users.iter().zip(&lists).zip(&new_movies) {
                    let relevant: HashSet<u32> = data.test[u].iter().copied().collect();
                    acc.add(list, &relevant, &percentile);
                    if !new.is_empty() {
                        let hits = list.iter().take(kmax).filter(|i| new.contains(i)).count();
                        new_recall += hits as f64 / new.len() as f64;
                    }
                }
                let new_recall = (new_movie_users > 0).then(|| new_recall / new_movie_users as f64);
                (acc.finish(catalog), new_recall, None)
            }
        };
        let result = ModelResult {
            label: spec.label.clone(),
            name: spec.name.clone(),
            params: spec.params.clone(),
            at,
            new_movie_recall,
            seconds: started.elapsed().as_secs_f64(),
            error,
        };
        progress(&result);
        results.push(result);
    }
    Report {
        dataset: data.summary(),
        ks: ks.to_vec(),
        behaviour: context.behaviour.clone(),
        content_vectors: context.content.is_some(),
        new_movie_users,
        models: results,
    }
}

/// Lists for `users`, in parallel on the available cores (the order of `users` is kept).
fn recommend_all(model: &dyn models::Recommender, users: &[usize], k: usize) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism().map(usize::from).unwrap_or(1).max(1);
    let chunk = users.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = users
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|&u| model.recommend(u, k)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    })
}

impl Report {
    /// An aligned text table: one row per model, recall / NDCG / MAP / precision / hit-rate /
    /// MRR at each K, then coverage and popularity bias at the largest K, and wall time.
    pub fn render(&self) -> String {
        let d = &self.dataset;
        let mut out = format!(
            "dataset: {} — {}\n  {} users ({} evaluated, {} skipped without test items), {} items, {} train / {} test interactions\n  new@K: recall on test items with fewer than {NEW_MOVIE_USERS} training users ({} users have some)\n",
            d.name,
            d.split,
            d.users,
            d.test_users,
            d.skipped_users,
            d.items,
            d.train_interactions,
            d.test_interactions,
            self.new_movie_users
        );
        let kmax = self.ks.iter().copied().max().unwrap_or(20);
        let width = self.models.iter().map(|m| m.label.chars().count()).max().unwrap_or(5).max(5);
        let mut header = format!("{:<width$}", "model");
        for k in &self.ks {
            for m in ["recall", "ndcg", "map", "prec", "hit", "mrr"] {
                header.push_str(&format!(" {:>9}", format!("{m}@{k}")));
            }
        }
        header.push_str(&format!(
            " {:>9} {:>9} {:>9} {:>8}",
            format!("cov@{kmax}"),
            format!("pop@{kmax}"),
            format!("new@{kmax}"),
            "time s"
        ));
        out.push_str(&header);
        out.push('\n');
        for m in &self.models {
            let mut line = format!("{:<width$}", m.label);
            if let Some(e) = &m.error {
                line.push_str(&format!(" n/a: {e}"));
            } else {
                for k in &self.ks {
                    let a = m.at.get(k).copied().unwrap_or_default();
                    for v in [a.recall, a.ndcg, a.map, a.precision, a.hit_rate, a.mrr] {
                        line.push_str(&format!(" {v:>9.4}"));
                    }
                }
                let a = m.at.get(&kmax).copied().unwrap_or_default();
                let new = m.new_movie_recall.map_or_else(|| "-".to_string(), |r| format!("{r:.4}"));
                line.push_str(&format!(" {:>9.4} {:>9.4} {new:>9} {:>8.1}", a.coverage, a.popularity_bias, m.seconds));
            }
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// A model's result by label (or, when unambiguous, by name).
    pub fn model(&self, label: &str) -> Option<&ModelResult> {
        self.models.iter().find(|m| m.label == label).or_else(|| {
            let mut by_name = self.models.iter().filter(|m| m.name == label);
            match (by_name.next(), by_name.next()) {
                (Some(m), None) => Some(m),
                _ => None,
            }
        })
    }
}

/// The gate metric: `<metric>@<k>`, e.g. `ndcg@20`.
#[derive(Debug, Clone, PartialEq)]
pub struct GateMetric {
    /// Metric name ([`At::get`]).
    pub metric: String,
    /// Cut-off.
    pub k: usize,
}

impl std::str::FromStr for GateMetric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (metric, k) =
            s.split_once('@').ok_or_else(|| format!("gate metric {s:?}: expected <metric>@<k>, e.g. ndcg@20"))?;
        let k: usize = k.parse().map_err(|_| format!("gate metric {s:?}: {k:?} is not a cut-off"))?;
        if At::default().get(metric).is_none() {
            return Err(format!(
                "gate metric {s:?}: unknown metric {metric:?} (hit_rate, precision, recall, ndcg, map, mrr, coverage, popularity_bias)"
            ));
        }
        Ok(Self { metric: metric.into(), k })
    }
}

/// The gate's verdict.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    /// True when the candidate may go on.
    pub pass: bool,
    /// The candidate's value.
    pub candidate: f64,
    /// The reference's value.
    pub reference: f64,
    /// One line saying why.
    pub reason: String,
}

/// Why the gate could not judge.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GateError {
    /// The model is not in the evaluation.
    #[error("gate: no model {0:?} in this evaluation")]
    Missing(String),
    /// The model failed to fit or run.
    #[error("gate: {model} did not run: {error}")]
    DidNotRun {
        /// Its label.
        model: String,
        /// Its error.
        error: String,
    },
    /// The metric was not computed.
    #[error("gate: {model} has no {metric}@{k} (evaluate with --k {k})")]
    NoMetric {
        /// Its label.
        model: String,
        /// The metric.
        metric: String,
        /// At this cut-off.
        k: usize,
    },
}

/// Fails when the candidate is worse than the reference on `metric` by more than `tolerance`
/// (relative: `candidate < reference × (1 − tolerance)`).
pub fn gate(
    report: &Report,
    candidate: &str,
    reference: &str,
    metric: &GateMetric,
    tolerance: f64,
) -> Result<Verdict, GateError> {
    let value = |label: &str| -> Result<f64, GateError> {
        let m = report.model(label).ok_or_else(|| GateError::Missing(label.to_string()))?;
        if let Some(e) = &m.error {
            return Err(GateError::DidNotRun { model: label.to_string(), error: e.clone() });
        }
        m.at.get(&metric.k).and_then(|a| a.get(&metric.metric)).ok_or_else(|| GateError::NoMetric {
            model: label.to_string(),
            metric: metric.metric.to_string(),
            k: metric.k,
        })
    };
    let (c, r) = (value(candidate)?, value(reference)?);
    let floor = r * (1.0 - tolerance);
    let pass = c >= floor;
    let change = if r > 0.0 { (c / r - 1.0) * 100.0 } else { 0.0 };
    let reason = format!(
        "gate {}: {candidate} {}@{} = {c:.4} vs {reference} {r:.4} ({change:+.1} %, tolerance {:.1} %)",
        if pass { "passed" } else { "FAILED" },
        metric.metric,
        metric.k,
        tolerance * 100.0
    );
    Ok(Verdict { pass, candidate: c, reference: r, reason })
}
