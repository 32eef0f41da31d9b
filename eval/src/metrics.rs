//! Ranking metrics at a cut-off K, with binary relevance (an item is relevant when it is among
//! the user's held-out items):
//! - hit-rate: 1 when any of the top K is relevant;
//! - precision: relevant in the top K / K;
//! - recall: relevant in the top K / relevant items;
//! - NDCG: DCG (`1 / log2(rank + 1)` per relevant item) over the ideal DCG of min(relevant, K) hits;
//! - MAP: the mean over relevant ranks of precision at that rank, divided by min(relevant, K);
//! - MRR: 1 / rank of the first relevant item (0 when none).
//!
//! Means are over evaluated users (users with held-out items). Catalog coverage is the share of
//! items (those in the training data) that appear in anybody's top K; popularity bias is the
//! mean popularity percentile of the recommended items (1 = the most popular item, 0 = the least
//! popular or unseen in training).

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

/// One user's scores at one K.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct At {
    /// Hit-rate.
    pub hit_rate: f64,
    /// Precision.
    pub precision: f64,
    /// Recall.
    pub recall: f64,
    /// NDCG.
    pub ndcg: f64,
    /// MAP (mean average precision).
    pub map: f64,
    /// MRR (mean reciprocal rank).
    pub mrr: f64,
    /// Catalog coverage (set by [`Accumulator::finish`]).
    pub coverage: f64,
    /// Mean popularity percentile of recommended items (set by [`Accumulator::finish`]).
    pub popularity_bias: f64,
}

impl At {
    /// The named metric (`hit_rate`, `precision`, `recall`, `ndcg`, `map`, `mrr`, `coverage`,
    /// `popularity_bias`).
    pub fn get(&self, name: &str) -> Option<f64> {
        Some(match name {
            "hit_rate" | "hit-rate" | "hr" => self.hit_rate,
            "precision" => self.precision,
            "recall" => self.recall,
            "ndcg" => self.ndcg,
            "map" => self.map,
            "mrr" => self.mrr,
            "coverage" => self.coverage,
            "popularity_bias" => self.popularity_bias,
            _ => return None,
        })
    }
}

/// Scores one ranked list (item indexes, best first) against the relevant items at `k`.
pub fn score(ranked: &[u32], relevant: &HashSet<u32>, k: usize) -> At {
    let mut at = At::default();
    if relevant.is_empty() || k == 0 {
        return at;
    }
    let (mut hits, mut dcg, mut ap) = (0usize, 0.0, 0.0);
    for (i, item) in ranked.iter().take(k).enumerate() {
        if relevant.contains(item) {
            hits += 1;
            dcg += 1.0 / ((i + 2) as f64).log2();
            ap += hits as f64 / (i + 1) as f64;
            if hits == 1 {
                at.mrr = 1.0 / (i + 1) as f64;
            }
        }
    }
    let ideal: f64 = (0..relevant.len().min(k)).map(|i| 1.0 / ((i + 2) as f64).log2()).sum();
    at.hit_rate = f64::from(u8::from(hits > 0));
    at.precision = hits as f64 / k as f64;
    at.recall = hits as f64 / relevant.len() as f64;
    at.ndcg = dcg / ideal;
    at.map = ap / relevant.len().min(k) as f64;
    at
}

/// Sums per-user scores for several Ks, and what coverage and popularity bias need.
#[derive(Debug, Clone)]
pub struct Accumulator {
    ks: Vec<usize>,
    sums: Vec<At>,
    users: usize,
    recommended: Vec<HashSet<u32>>,
    percentile_sum: Vec<f64>,
    percentile_count: Vec<usize>,
}

impl Accumulator {
    /// For these cut-offs.
    pub fn new(ks: &[usize]) -> Self {
        Self {
            ks: ks.to_vec(),
            sums: vec![At::default(); ks.len()],
            users: 0,
            recommended: vec![HashSet::new(); ks.len()],
            percentile_sum: vec![0.0; ks.len()],
            percentile_count: vec![0; ks.len()],
        }
    }

    /// Adds one user's list. `percentile[item]` is the item's popularity percentile.
    pub fn add(&mut self, ranked: &[u32], relevant: &HashSet<u32>, percentile: &[f64]) {
        self.users += 1;
        for (j, &k) in self.ks.iter().enumerate() {
            let s = score(ranked, relevant, k);
            let sum = &mut self.sums[j];
            sum.hit_rate += s.hit_rate;
            sum.precision += s.precision;
            sum.recall += s.recall;
            sum.ndcg += s.ndcg;
            sum.map += s.map;
            sum.mrr += s.mrr;
            for &item in ranked.iter().take(k) {
                self.recommended[j].insert(item);
                self.percentile_sum[j] += percentile.get(item as usize).copied().unwrap_or(0.0);
                self.percentile_count[j] += 1;
            }
        }
    }

    /// Means per K (key: K), with coverage over `catalog` items.
    pub fn finish(self, catalog: usize) -> BTreeMap<usize, At> {
        let n = self.users.max(1) as f64;
        let mut out = BTreeMap::new();
        for (j, &k) in self.ks.iter().enumerate() {
            let s = self.sums[j];
            out.insert(
                k,
                At {
                    hit_rate: s.hit_rate / n,
                    precision: s.precision / n,
                    recall: s.recall / n,
                    ndcg: s.ndcg / n,
                    map: s.map / n,
                    mrr: s.mrr / n,
                    coverage: self.recommended[j].len() as f64 / catalog.max(1) as f64,
                    popularity_bias: self.percentile_sum[j] / self.percentile_count[j].max(1) as f64,
                },
            );
        }
        out
    }
}

/// Popularity percentiles by item index from the popularity order (most popular first):
/// `1 − rank / (n − 1)`; items absent from the order get 0.
pub fn percentiles(order: &[u32], n_items: usize) -> Vec<f64> {
    let mut out = vec![0.0; n_items];
    let denominator = order.len().saturating_sub(1).max(1) as f64;
    for (rank, &item) in order.iter().enumerate() {
        out[item as usize] = 1.0 - rank as f64 / denominator;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn scores_match_hand_computed_values() {
        // Ranked [5, 1, 7, 2, 9]; relevant {1, 2, 3}; K = 4.
        // Hits at ranks 2 and 4. precision 2/4, recall 2/3, hit 1, MRR 1/2.
        // DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3) + 1/log2(4).
        // AP = (1/2 + 2/4) / min(3, 4) = 1/3.
        let relevant: HashSet<u32> = [1, 2, 3].into();
        let s = score(&[5, 1, 7, 2, 9], &relevant, 4);
        assert!(close(s.precision, 0.5));
        assert!(close(s.recall, 2.0 / 3.0));
        assert!(close(s.hit_rate, 1.0));
        assert!(close(s.mrr, 0.5));
        let dcg = 1.0 / 3f64.log2() + 1.0 / 5f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2() + 0.5;
        assert!(close(s.ndcg, dcg / idcg), "{} vs {}", s.ndcg, dcg / idcg);
        assert!(close(s.map, 1.0 / 3.0));
        // K = 1: the first item misses.
        let s1 = score(&[5, 1, 7, 2, 9], &relevant, 1);
        assert_eq!((s1.hit_rate, s1.precision, s1.ndcg, s1.mrr, s1.map), (0.0, 0.0, 0.0, 0.0, 0.0));
        // A perfect list.
        let p = score(&[1, 2, 3], &relevant, 3);
        assert!(close(p.ndcg, 1.0) && close(p.map, 1.0) && close(p.recall, 1.0));
    }

    #[test]
    fn means_coverage_and_popularity_bias() {
        let order = [0u32, 1, 2, 3, 4]; // item 0 most popular
        let pct = percentiles(&order, 6);
        assert_eq!(pct, vec![1.0, 0.75, 0.5, 0.25, 0.0, 0.0]);
        let mut acc = Accumulator::new(&[2]);
        acc.add(&[0, 1], &[1].into(), &pct); // hit at rank 2
        acc.add(&[0, 2], &[4].into(), &pct); // miss
        let at = acc.finish(6)[&2];
        assert!(close(at.hit_rate, 0.5));
        assert!(close(at.recall, 0.5));
        assert!(close(at.mrr, 0.25));
        assert!(close(at.coverage, 3.0 / 6.0));
        assert!(close(at.popularity_bias, (1.0 + 0.75 + 1.0 + 0.5) / 4.0));
    }
}
