//! Item–item weights: the EASE and EDLAE closed forms, pruned to sparse rows.
//!
//! With `X` the binary user–item matrix and `G = XᵀX` (co-occurrence counts), EASE (Steck,
//! "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) learns `B` minimising
//! `‖X − XB‖² + λ‖B‖²` with a zero diagonal: `P = (G + Λ)⁻¹`, `B = I − P·diag(1 / diag P)`, i.e.
//! `B[i, j] = −P[i, j] / P[j, j]` off the diagonal. EDLAE (Steck, "Autoencoders that don't
//! overfit towards the identity", NeurIPS 2020) is the same form with the dropout-emphasised
//! regulariser `Λ = λI + p / (1 − p) · diag(G)`: `dropout = 0` is EASE. RDLAE (Moon, Kim and
//! Lee, "It's Enough: Relaxing Diagonal Constraints in Linear Autoencoders for Recommendation",
//! SIGIR 2023) bounds the diagonal by `ξ` instead of fixing it at 0: `B = I − P·diag(m)` with
//! `m_j = max(Λ_j, (1 − ξ) / P[j, j])`, so `relax = 0` is EASE / EDLAE (off the diagonal, up to a
//! common factor) and a larger `ξ` gives the rarely watched columns relatively more weight.
//!
//! A user's score for movie `j` is `Σ_i w_i · B[i, j]` over the movies `i` they watched, so the
//! model is served as sparse vectors: movie `j` holds `{i: B[i, j]}` and a history is the sparse
//! query `{i: w_i}` (one exact sparse dot-product search). Each row `B[i, ·]` is pruned to its
//! `top_k` weights by magnitude (negative weights kept): what movie `i` says about others.
//!
//! Dense over the `max_items` most-watched movies with at least `min_users` users; the solve
//! runs in place (Cholesky, triangular inverse, `L⁻ᵀL⁻¹` into the factor's storage), so it peaks
//! at two `n × n` f64 matrices: 2 × 8n² bytes (n = 10,000: 1.6 GB; n = 27,000: 11.7 GB).

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{LltRegularization, cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::triangular::{BlockStructure, matmul};
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, Par};
use serde::{Deserialize, Serialize};

use crate::{BehaviourError, Interaction};

/// The item-weights job's parameters. Part of the weights' version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemParams {
    /// L2 regularisation λ.
    pub lambda: f64,
    /// EDLAE dropout probability `p` in `[0, 1)` (0: EASE).
    pub dropout: f64,
    /// RDLAE's bound `ξ` on the diagonal, in `[0, 1)` (0: EASE / EDLAE). Left out of the
    /// version's hash at 0, so the weights made before it keep their names.
    #[serde(skip_serializing_if = "is_zero")]
    pub relax: f64,
    /// Movies in the model: the most watched first (memory 16 n² bytes, time ∝ n³).
    pub max_items: usize,
    /// Movies with fewer distinct users get no weights (they reach users through content).
    pub min_users: usize,
    /// Weights kept per row (by magnitude).
    pub top_k: usize,
}

impl Default for ItemParams {
    /// Chosen on the validation splits of the default dataset (temporal, random, held-out
    /// users; EVALUATION.md): λ ∈ {150, 250, 400}, dropout ∈ {0, 0.1, …, 0.33, 0.5},
    /// relax ∈ {0, 0.1, 0.2, 0.3, 0.5, 0.7}, top_k ∈ {200, 500, 1000, all}, min_users ∈ {1, 2}.
    fn default() -> Self {
        Self { lambda: 250.0, dropout: 0.0, relax: 0.0, max_items: 12_000, min_users: 1, top_k: 1_000 }
    }
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

impl ItemParams {
    /// A one-line error for values the solve cannot use.
    pub fn check(&self) -> Result<(), BehaviourError> {
        let bad = |m: String| Err(BehaviourError::Params(m));
        if !(self.lambda.is_finite() && self.lambda > 0.0) {
            return bad(format!("item weights: lambda must be positive, got {}", self.lambda));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("item weights: dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.relax) {
            return bad(format!("item weights: relax must be in [0, 1), got {}", self.relax));
        }
        if self.max_items == 0 || self.top_k == 0 {
            return bad("item weights: max_items and top_k must be at least 1".into());
        }
        Ok(())
    }

    /// `ease-<hash>`: names the weights in collection versions (another parameter, another
    /// version).
    pub fn version(&self) -> String {
        format!("ease-{}", crate::params_hash(self))
    }
}

/// The pruned weights: `rows[i]` is what movie `i` says about others, `(j, B[i, j])` sorted by
/// `j`; empty for a movie outside the model.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemWeights {
    /// One row per item index.
    pub rows: Vec<Vec<(u32, f32)>>,
}

impl ItemWeights {
    /// Movies with weights.
    pub fn len(&self) -> usize {
        self.rows.iter().filter(|r| !r.is_empty()).count()
    }

    /// True when no movie has weights.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored form: `columns[j]` = `{i: B[i, j]}` sorted by `i` (movie `j`'s sparse vector).
    pub fn columns(&self) -> Vec<Vec<(u32, f32)>> {
        let mut columns = vec![Vec::new(); self.rows.len()];
        for (i, row) in self.rows.iter().enumerate() {
            for &(j, w) in row {
                columns[j as usize].push((i as u32, w));
            }
        }
        columns
    }

    /// `Σ_i w_i · B[i, j]` for every `j` reached from the weighted `query` items (the sparse
    /// search an engine runs, computed here), as `(j, score)` in no particular order.
    pub fn scores(&self, query: &[(u32, f32)], scratch: &mut Vec<f32>) -> Vec<(u32, f32)> {
        scratch.clear();
        scratch.resize(self.rows.len(), 0.0);
        let mut touched = Vec::new();
        for &(i, w) in query {
            for &(j, b) in self.rows.get(i as usize).map(Vec::as_slice).unwrap_or_default() {
                if scratch[j as usize] == 0.0 {
                    touched.push(j);
                }
                scratch[j as usize] += w * b;
            }
        }
        touched.sort_unstable();
        touched.dedup();
        touched.into_iter().map(|j| (j, scratch[j as usize])).collect()
    }
}

/// Fits the weights on the interactions of `n_users` users with `n_items` items (duplicate pairs
/// count once).
pub fn fit(
    n_users: usize,
    n_items: usize,
    interactions: &[Interaction],
    params: &ItemParams,
) -> Result<ItemWeights, BehaviourError> {
    params.check()?;
    let mut user_items: Vec<Vec<u32>> = vec![Vec::new(); n_users];
    for x in interactions {
        if x.user as usize >= n_users || x.item as usize >= n_items {
            return Err(BehaviourError::OutOfRange { user: x.user, item: x.item, n_users, n_items });
        }
        user_items[x.user as usize].push(x.item);
    }
    let mut users = vec![0usize; n_items];
    for items in &mut user_items {
        items.sort_unstable();
        items.dedup();
        for &i in items.iter() {
            users[i as usize] += 1;
        }
    }
    // The model's movies: most watched first (ties: index), at least `min_users` users.
    let mut model: Vec<u32> = (0..n_items as u32).filter(|&i| users[i as usize] >= params.min_users.max(1)).collect();
    model.sort_by(|&a, &b| users[b as usize].cmp(&users[a as usize]).then(a.cmp(&b)));
    model.truncate(params.max_items);
    model.sort_unstable();
    let n = model.len();
    let mut rows = vec![Vec::new(); n_items];
    if n < 2 {
        return Ok(ItemWeights { rows });
    }
    let mut index = vec![u32::MAX; n_items];
    for (a, &i) in model.iter().enumerate() {
        index[i as usize] = a as u32;
    }

    // G + Λ, lower triangle (the Cholesky reads only it).
    let mut a = Mat::<f64>::zeros(n, n);
    let mut local = Vec::new();
    for items in &user_items {
        local.clear();
        local.extend(items.iter().map(|&i| index[i as usize]).filter(|&k| k != u32::MAX));
        for (x, &p) in local.iter().enumerate() {
            for &q in &local[..=x] {
                // `items` is sorted, so `p >= q`: the lower triangle.
                a[(p as usize, q as usize)] += 1.0;
            }
        }
    }
    let emphasis = params.dropout / (1.0 - params.dropout);
    let mut regulariser = vec![0.0; n];
    for (k, r) in regulariser.iter_mut().enumerate() {
        let g = a[(k, k)];
        a[(k, k)] = g + params.lambda + emphasis * g;
        *r = params.lambda + emphasis * g;
    }

    let par = Par::rayon(0);
    let mut buffer = MemBuffer::new(cholesky_in_place_scratch::<f64>(n, par, Default::default()));
    cholesky_in_place(a.as_mut(), LltRegularization::default(), par, MemStack::new(&mut buffer), Default::default())
        .map_err(|_| BehaviourError::Params("item weights: G + Λ is not positive definite (raise lambda)".into()))?;
    drop(buffer);
    let mut l_inv = Mat::<f64>::zeros(n, n);
    invert_lower_triangular(l_inv.as_mut(), a.as_ref(), par);
    // P = L⁻ᵀ L⁻¹, lower triangle, into the factor's storage.
    matmul(
        a.as_mut(),
        BlockStructure::TriangularLower,
        Accum::Replace,
        l_inv.transpose(),
        BlockStructure::TriangularUpper,
        l_inv.as_ref(),
        BlockStructure::TriangularLower,
        1.0,
        par,
    );
    drop(l_inv);
    let p = |r: usize, c: usize| if r >= c { a[(r, c)] } else { a[(c, r)] };
    // Column j's divisor: m_j = max(Λ_j, (1 − ξ) / P[j, j]) written as (1 − ξ) / d_j with
    // d_j = min(P[j, j], (1 − ξ) / Λ_j); the common factor (1 − ξ) does not change a ranking, and
    // ξ = 0 is EASE's P[j, j] itself.
    let divisor: Vec<f64> = (0..n)
        .map(|k| if params.relax == 0.0 { p(k, k) } else { p(k, k).min((1.0 - params.relax) / regulariser[k]) })
        .collect();
    for r in 0..n {
        let mut row: Vec<(u32, f32)> =
            (0..n).filter(|&c| c != r).map(|c| (model[c], (-p(r, c) / divisor[c]) as f32)).collect();
        if row.len() > params.top_k {
            row.select_nth_unstable_by(params.top_k - 1, |x, y| y.1.abs().total_cmp(&x.1.abs()).then(x.0.cmp(&y.0)));
            row.truncate(params.top_k);
        }
        row.retain(|&(_, w)| w != 0.0);
        row.sort_unstable_by_key(|&(j, _)| j);
        row.shrink_to_fit();
        rows[model[r] as usize] = row;
    }
    Ok(ItemWeights { rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn x(pairs: &[(u32, u32)]) -> Vec<Interaction> {
        pairs.iter().map(|&(user, item)| Interaction { user, item }).collect()
    }

    #[test]
    fn ease_matches_the_closed_form_on_a_small_matrix_and_prunes_by_magnitude() {
        // 4 users, 3 items: 0 and 1 co-occur often, 2 mostly alone.
        let data = x(&[(0, 0), (0, 1), (1, 0), (1, 1), (2, 1), (2, 2), (3, 2), (3, 0)]);
        let params = ItemParams { lambda: 1.0, min_users: 1, top_k: 10, ..ItemParams::default() };
        let w = fit(4, 3, &data, &params).expect("fit");
        // Reference: P = (G + I)⁻¹ by faer's dense inverse, B = −P / diag.
        let g = faer::mat![[3.0 + 1.0, 2.0, 1.0], [2.0, 3.0 + 1.0, 1.0], [1.0, 1.0, 2.0 + 1.0]];
        let p = faer::linalg::solvers::DenseSolveCore::inverse(&g.llt(faer::Side::Lower).expect("llt"));
        for (i, row) in w.rows.iter().enumerate() {
            assert_eq!(row.len(), 2, "zero diagonal, both others kept");
            for &(j, b) in row {
                let expected = -p[(i, j as usize)] / p[(j as usize, j as usize)];
                assert!((f64::from(b) - expected).abs() < 1e-6, "B[{i},{j}] = {b} vs {expected}");
            }
        }
        // Item 0 is supported more by 1 than by 2.
        let b01 = w.rows[1].iter().find(|e| e.0 == 0).expect("1→0").1;
        let b21 = w.rows[2].iter().find(|e| e.0 == 0).expect("2→0").1;
        assert!(b01 > b21);
        let pruned = fit(4, 3, &data, &ItemParams { top_k: 1, ..params.clone() }).expect("fit");
        for (i, row) in pruned.rows.iter().enumerate() {
            let best = w.rows[i].iter().map(|e| e.1.abs()).fold(0.0f32, f32::max);
            assert_eq!(row.len(), 1);
            assert_eq!(row[0].1.abs(), best, "row {i} keeps its largest weight (ties: the lower index)");
        }
        // The scores a sparse search computes: user 0 (items 0, 1) → item 2.
        let mut scratch = Vec::new();
        let s = w.scores(&[(0, 1.0), (1, 1.0)], &mut scratch);
        let two = s.iter().find(|e| e.0 == 2).expect("2 reached").1;
        let by_columns: f32 = w.columns()[2].iter().filter(|e| e.0 < 2).map(|e| e.1).sum();
        assert!((two - by_columns).abs() < 1e-6, "rows and columns agree");
    }

    #[test]
    fn dropout_shrinks_popular_items_and_rare_items_get_no_weights() {
        let data = x(&[(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 0), (3, 1)]);
        let base = ItemParams { lambda: 1.0, min_users: 2, ..ItemParams::default() };
        let ease = fit(4, 4, &data, &base).expect("ease");
        let edlae = fit(4, 4, &data, &ItemParams { dropout: 0.5, ..base.clone() }).expect("edlae");
        assert!(ease.rows[2].is_empty() && ease.rows[3].is_empty(), "one user (or none): no weights");
        assert_eq!(ease.len(), 2);
        let w = |m: &ItemWeights| m.rows[1][0].1;
        assert!(w(&edlae) < w(&ease), "stronger regularisation of the popular item 0");
        assert!(fit(4, 4, &data, &ItemParams { dropout: 1.0, ..ItemParams::default() }).is_err());
        assert!(fit(1, 1, &x(&[(0, 3)]), &ItemParams::default()).is_err(), "out of range");
        assert_ne!(ItemParams::default().version(), ItemParams { top_k: 100, ..ItemParams::default() }.version());
    }

    #[test]
    fn a_relaxed_diagonal_lifts_the_rare_columns_and_zero_is_ease() {
        // Item 0 is watched by everyone, item 2 by two users; both co-occur with item 1.
        let data = x(&[(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 2), (3, 0), (3, 1), (3, 2), (4, 0)]);
        let base = ItemParams { lambda: 2.0, min_users: 1, top_k: 10, ..ItemParams::default() };
        let ease = fit(5, 3, &data, &base).expect("ease");
        assert_eq!(ItemParams { relax: 0.0, ..base.clone() }.version(), base.version(), "0 keeps the name");
        let relaxed = fit(5, 3, &data, &ItemParams { relax: 0.5, ..base.clone() }).expect("rdlae");
        assert_ne!(ItemParams { relax: 0.5, ..base.clone() }.version(), base.version());
        let w = |m: &ItemWeights, i: usize, j: u32| m.rows[i].iter().find(|e| e.0 == j).expect("weight").1;
        // What item 1 says about the rare item 2, relative to what it says about the popular 0.
        let ratio = |m: &ItemWeights| w(m, 1, 2) / w(m, 1, 0);
        assert!(ratio(&relaxed) > ratio(&ease), "{} vs {}", ratio(&relaxed), ratio(&ease));
        // Reference for the relaxed form: B = I − P·diag(max(Λ, (1 − ξ) / diag P)), up to (1 − ξ).
        let g = faer::mat![[5.0 + 2.0, 3.0, 2.0], [3.0, 3.0 + 2.0, 1.0], [2.0, 1.0, 2.0 + 2.0]];
        let p = faer::linalg::solvers::DenseSolveCore::inverse(&g.llt(faer::Side::Lower).expect("llt"));
        for (i, row) in relaxed.rows.iter().enumerate() {
            for &(j, b) in row {
                let j = j as usize;
                let m = f64::max(2.0, 0.5 / p[(j, j)]);
                let expected = -p[(i, j)] * m / 0.5;
                assert!((f64::from(b) - expected).abs() < 1e-5, "B[{i},{j}] = {b} vs {expected}");
            }
        }
        assert!(fit(5, 3, &data, &ItemParams { relax: 1.0, ..base }).is_err());
    }
}
