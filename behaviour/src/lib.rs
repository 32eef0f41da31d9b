//! Behaviour vectors: a vector per movie learned from who watched and rated what.
//!
//! The user–item matrix `X` (a user's row: 1 for each movie they watched or rated, divided by
//! `len(user)^user_exponent` so heavy users do not dominate, each column scaled by
//! `users(item)^-item_exponent`) is factorised by a randomised truncated SVD (Halko, Martinsson
//! & Tropp 2011: a Gaussian sketch, `power_iterations` rounds of subspace iteration with QR in
//! between, then the SVD of the small projected matrix), all with `faer`. A movie's vector is its
//! row of `V·Σ^singular_exponent`, normalised to unit length: with exponent 1 the cosine of two
//! movies approximates the cosine of their (weighted) columns of `X` — item-based collaborative
//! filtering in a space a vector index can search. Movies with fewer than `min_users` users get
//! no vector (they reach users through their content vector).
//!
//! Deterministic: the same interactions and parameters give the same vectors (seeded sketch,
//! single-threaded sums in a fixed order inside faer's kernels for a fixed thread count).

pub mod items;

use faer::sparse::{SparseColMat, Triplet};
use faer::{Mat, MatRef};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One interaction: user `user` watched or rated item `item` (dense indexes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interaction {
    /// User index in `0..n_users`.
    pub user: u32,
    /// Item index in `0..n_items`.
    pub item: u32,
}

/// The factorisation's parameters. Part of the behaviour collection's version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Vector dimension (rank of the factorisation).
    pub dim: usize,
    /// Extra sketch columns beyond `dim` (accuracy of the randomised SVD).
    pub oversample: usize,
    /// Rounds of subspace iteration (accuracy for slowly decaying spectra).
    pub power_iterations: usize,
    /// A user's row is divided by `len^user_exponent`.
    pub user_exponent: f64,
    /// An item's column is multiplied by `users^-item_exponent`.
    pub item_exponent: f64,
    /// Item vectors are rows of `V·Σ^singular_exponent`.
    pub singular_exponent: f64,
    /// Items with fewer distinct users get no vector.
    pub min_users: usize,
    /// Seed of the random sketch.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            dim: 64,
            oversample: 16,
            power_iterations: 3,
            user_exponent: 0.35,
            item_exponent: 0.15,
            singular_exponent: 1.0,
            min_users: 2,
            seed: 42,
        }
    }
}

impl Params {
    /// A one-line error for parameters that cannot work.
    pub fn check(&self) -> Result<(), BehaviourError> {
        let bad = |m: String| Err(BehaviourError::Params(m));
        if self.dim == 0 || self.dim > 1024 {
            return bad(format!("dim must be in 1..=1024, got {}", self.dim));
        }
        if self.power_iterations > 20 {
            return bad(format!("power_iterations must be at most 20, got {}", self.power_iterations));
        }
        for (name, v) in [
            ("user_exponent", self.user_exponent),
            ("item_exponent", self.item_exponent),
            ("singular_exponent", self.singular_exponent),
        ] {
            if !v.is_finite() || !(0.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [0, 2], got {v}"));
            }
        }
        if self.min_users == 0 {
            return bad("min_users must be at least 1".into());
        }
        Ok(())
    }

    /// `svd-<first 8 hex of a hash of the parameters>`: names the algorithm and its parameters
    /// in collection versions.
    pub fn version(&self) -> String {
        format!("svd-{}", params_hash(self))
    }
}

/// The first 8 hex of FNV-1a over a value's canonical JSON: stable across builds, no extra
/// dependency. Names parameter sets in collection versions.
pub(crate) fn params_hash(value: &impl Serialize) -> String {
    let text = serde_json::to_string(value).unwrap_or_default();
    let mut h: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{h:08x}")
}

/// Why the factorisation could not run.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    /// Bad parameters.
    #[error("behaviour vectors: {0}")]
    Params(String),
    /// An interaction names a user or item outside the stated sizes.
    #[error("behaviour vectors: interaction ({user}, {item}) outside {n_users} users × {n_items} items")]
    OutOfRange {
        /// User index.
        user: u32,
        /// Item index.
        item: u32,
        /// Users.
        n_users: usize,
        /// Items.
        n_items: usize,
    },
    /// Too little data for the asked rank.
    #[error(
        "behaviour vectors: {items} items with at least {min_users} users and {users} users: too few for dim {dim}"
    )]
    TooLittleData {
        /// Items that qualify.
        items: usize,
        /// Users.
        users: usize,
        /// The threshold.
        min_users: usize,
        /// Asked rank.
        dim: usize,
    },
    /// faer's SVD did not converge.
    #[error("behaviour vectors: the SVD did not converge")]
    Svd,
    /// The sparse matrix could not be built.
    #[error("behaviour vectors: {0}")]
    Matrix(String),
}

/// Unit-length vectors for the items that qualified.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemVectors {
    /// Dimension.
    pub dim: usize,
    /// `vectors[item]`: the item's unit vector, or `None` (too few users).
    pub vectors: Vec<Option<Vec<f32>>>,
    /// The leading singular values (diagnostics).
    pub singular_values: Vec<f64>,
}

impl ItemVectors {
    /// Items with a vector.
    pub fn len(&self) -> usize {
        self.vectors.iter().filter(|v| v.is_some()).count()
    }

    /// True when no item has a vector.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Factorises the interactions of `n_users` users with `n_items` items. Duplicate pairs count
/// once.
pub fn factorise(
    n_users: usize,
    n_items: usize,
    interactions: &[Interaction],
    params: &Params,
) -> Result<ItemVectors, BehaviourError> {
    params.check()?;
    let mut pairs: Vec<(u32, u32)> = Vec::with_capacity(interactions.len());
    for i in interactions {
        if i.user as usize >= n_users || i.item as usize >= n_items {
            return Err(BehaviourError::OutOfRange { user: i.user, item: i.item, n_users, n_items });
        }
        pairs.push((i.user, i.item));
    }
    pairs.sort_unstable();
    pairs.dedup();
    let mut user_len = vec![0usize; n_users];
    let mut item_users = vec![0usize; n_items];
    for &(u, i) in &pairs {
        user_len[u as usize] += 1;
        item_users[i as usize] += 1;
    }
    // Only qualifying items are columns; users keep all their rows (their other items still
    // shape the space through the normalisation).
    let mut column = vec![u32::MAX; n_items];
    let mut items = Vec::new();
    for (i, &n) in item_users.iter().enumerate() {
        if n >= params.min_users {
            column[i] = items.len() as u32;
            items.push(i);
        }
    }
    let active_users = user_len.iter().filter(|&&n| n > 0).count();
    let rank = params.dim + params.oversample;
    if items.len() < rank.max(2) || active_users < rank.max(2) {
        return Err(BehaviourError::TooLittleData {
            items: items.len(),
            users: active_users,
            min_users: params.min_users,
            dim: params.dim,
        });
    }
    let mut triplets = Vec::with_capacity(pairs.len());
    let mut triplets_t = Vec::with_capacity(pairs.len());
    for &(u, i) in &pairs {
        let c = column[i as usize];
        if c == u32::MAX {
            continue;
        }
        let value = (user_len[u as usize] as f64).powf(-params.user_exponent)
            * (item_users[i as usize] as f64).powf(-params.item_exponent);
        triplets.push(Triplet::new(u, c, value));
        triplets_t.push(Triplet::new(c, u, value));
    }
    let x = SparseColMat::<u32, f64>::try_new_from_triplets(n_users, items.len(), &triplets)
        .map_err(|e| BehaviourError::Matrix(format!("{e:?}")))?;
    let xt = SparseColMat::<u32, f64>::try_new_from_triplets(items.len(), n_users, &triplets_t)
        .map_err(|e| BehaviourError::Matrix(format!("{e:?}")))?;
    drop((triplets, triplets_t, pairs));

    // Range finder on the item side: Z spans the top right-singular subspace of X.
    let mut rng = rand::rngs::StdRng::seed_from_u64(params.seed);
    let omega = Mat::<f64>::from_fn(n_users, rank, |_, _| gaussian(&mut rng));
    let mut z = orthonormal((&xt * &omega).as_ref());
    for _ in 0..params.power_iterations {
        let y = orthonormal((&x * &z).as_ref());
        z = orthonormal((&xt * &y).as_ref());
    }
    // X ≈ (X Z) Zᵀ; the SVD of the thin matrix X Z = U S Wᵀ gives X ≈ U S (Z W)ᵀ, so the
    // item-side singular vectors are V = Z W.
    let xz = &x * &z;
    let svd = xz.thin_svd().map_err(|_| BehaviourError::Svd)?;
    let v = &z * svd.V();
    let s = svd.S().column_vector();
    let singular_values: Vec<f64> = (0..params.dim).map(|k| s[k]).collect();
    let mut vectors = vec![None; n_items];
    for (c, &item) in items.iter().enumerate() {
        let mut vec: Vec<f64> =
            (0..params.dim).map(|k| v[(c, k)] * singular_values[k].powf(params.singular_exponent)).collect();
        let norm = vec.iter().map(|a| a * a).sum::<f64>().sqrt();
        if norm > 0.0 && norm.is_finite() {
            vec.iter_mut().for_each(|a| *a /= norm);
            vectors[item] = Some(vec.into_iter().map(|a| a as f32).collect());
        }
    }
    Ok(ItemVectors { dim: params.dim, vectors, singular_values })
}

/// Standard normal by Box–Muller (two uniforms in (0, 1]).
fn gaussian(rng: &mut impl Rng) -> f64 {
    let u1: f64 = 1.0 - rng.random::<f64>();
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

fn orthonormal(m: MatRef<'_, f64>) -> Mat<f64> {
    m.qr().compute_thin_Q()
}

/// Exact cosine neighbours among unit vectors (the evaluator's index, and the reference a
/// vector index's recall is measured against).
#[derive(Debug, Clone)]
pub struct ExactIndex {
    dim: usize,
    ids: Vec<u32>,
    data: Vec<f32>,
}

impl ExactIndex {
    /// Indexes `vectors[item]` for every item that has one (all of dimension `dim`).
    pub fn new(dim: usize, vectors: &[Option<Vec<f32>>]) -> Self {
        let mut ids = Vec::new();
        let mut data = Vec::new();
        for (i, v) in vectors.iter().enumerate() {
            if let Some(v) = v.as_ref().filter(|v| v.len() == dim) {
                ids.push(i as u32);
                data.extend_from_slice(v);
            }
        }
        Self { dim, ids, data }
    }

    /// Items in the index.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The `limit` items nearest `query` by dot product (cosine for unit vectors), best first,
    /// ties by item index; `skip` is left out.
    pub fn search(&self, query: &[f32], limit: usize, skip: Option<u32>) -> Vec<(u32, f32)> {
        if query.len() != self.dim || limit == 0 {
            return Vec::new();
        }
        let mut scored: Vec<(u32, f32)> = self
            .data
            .chunks_exact(self.dim)
            .zip(&self.ids)
            .filter(|(_, id)| Some(**id) != skip)
            .map(|(v, &id)| (id, v.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if scored.len() > limit {
            scored.select_nth_unstable_by(limit - 1, by_score);
            scored.truncate(limit);
        }
        scored.sort_by(by_score);
        scored
    }
}

impl ExactIndex {
    /// The `limit` nearest neighbours of every indexed item (itself excluded), best first, ties
    /// by item index: `out[k]` belongs to the `k`-th indexed item ([`ExactIndex::ids`]).
    /// Computed in blocks with faer's matrix product.
    pub fn all_neighbours(&self, limit: usize) -> Vec<Vec<(u32, f32)>> {
        let n = self.ids.len();
        if n == 0 || limit == 0 {
            return vec![Vec::new(); n];
        }
        let data = faer::MatRef::from_row_major_slice(&self.data, n, self.dim);
        let mut out = Vec::with_capacity(n);
        const BLOCK: usize = 512;
        let by_score = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        for start in (0..n).step_by(BLOCK) {
            let rows = BLOCK.min(n - start);
            let sims: Mat<f32> = data.subrows(start, rows) * data.transpose();
            for r in 0..rows {
                let me = self.ids[start + r];
                let mut scored: Vec<(u32, f32)> =
                    (0..n).map(|c| (self.ids[c], sims[(r, c)])).filter(|&(id, _)| id != me).collect();
                if scored.len() > limit {
                    scored.select_nth_unstable_by(limit - 1, by_score);
                    scored.truncate(limit);
                }
                scored.sort_by(by_score);
                out.push(scored);
            }
        }
        out
    }

    /// The indexed items, in index order.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two disjoint taste groups: items 0..10 watched by users 0..50, items 10..20 by users
    /// 50..100, every user watching 6 items of their group.
    fn two_groups() -> Vec<Interaction> {
        let mut out = Vec::new();
        for u in 0..100u32 {
            let base = if u < 50 { 0 } else { 10 };
            for k in 0..6 {
                out.push(Interaction { user: u, item: base + (u * 7 + k * 3) % 10 });
            }
        }
        out
    }

    #[test]
    fn items_of_one_taste_group_are_each_others_neighbours() {
        let params = Params { dim: 4, oversample: 4, ..Params::default() };
        let v = factorise(100, 20, &two_groups(), &params).expect("factorise");
        assert_eq!(v.len(), 20);
        let index = ExactIndex::new(v.dim, &v.vectors);
        let all = index.all_neighbours(5);
        for (k, &item) in index.ids().iter().enumerate() {
            assert_eq!(all[k].len(), 5);
            assert!(all[k].iter().all(|&(n, _)| n / 10 == item / 10 && n != item), "item {item}: {:?}", all[k]);
        }
        for item in 0..20u32 {
            let query = v.vectors[item as usize].as_ref().expect("vector");
            let near = index.search(query, 5, Some(item));
            assert_eq!(near.len(), 5);
            for (n, sim) in near {
                assert_eq!(n / 10, item / 10, "item {item}: neighbour {n} (cos {sim}) is from the other group");
            }
        }
        let again = factorise(100, 20, &two_groups(), &params).expect("again");
        assert_eq!(v, again, "same inputs, same vectors");
    }

    #[test]
    fn rare_items_get_no_vector_and_bad_input_is_an_error() {
        let mut data = two_groups();
        data.push(Interaction { user: 3, item: 20 });
        let params = Params { dim: 4, oversample: 4, ..Params::default() };
        let v = factorise(100, 21, &data, &params).expect("factorise");
        assert!(v.vectors[20].is_none(), "one user is below min_users");
        assert!(matches!(factorise(100, 20, &data, &params), Err(BehaviourError::OutOfRange { .. })));
        assert!(matches!(
            factorise(100, 21, &data, &Params { dim: 64, ..Params::default() }),
            Err(BehaviourError::TooLittleData { .. })
        ));
        assert!(Params { dim: 0, ..Params::default() }.check().is_err());
        assert_ne!(Params::default().version(), Params { dim: 32, ..Params::default() }.version());
    }
}
