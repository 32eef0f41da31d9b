//! The models an evaluation compares: the baselines (TopPop, ItemKNN-CF, EASE) and every
//! registered serving strategy (`popularity-v1`, `neighbours-v1`, `neighbours-v2`, …), each
//! fitted on the training part of a dataset only.

use std::collections::HashMap;
use std::sync::Arc;

use behaviour::ExactIndex;
use serde::{Deserialize, Serialize};
use strategy::{History, Model, Neighbours, POPULARITY_LIST, Popularity, Search, Stage, Watched};
use vectorstore::Hit;

use crate::dataset::Dataset;

/// A fitted model: a ranked list of item indexes for a user, never an item of the user's
/// training part.
pub trait Recommender: Send + Sync {
    /// The top `k` for `user`.
    fn recommend(&self, user: usize, k: usize) -> Vec<u32>;
}

/// `name[:{json params}]` as given on the command line; `label` names it in reports.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelSpec {
    /// The report label (the spec as written).
    pub label: String,
    /// Model name: a baseline or a registered strategy.
    pub name: String,
    /// Parameters (an object; missing ones take defaults).
    pub params: serde_json::Value,
}

/// The baselines every run includes unless told otherwise.
pub const BASELINES: &[&str] = &[TopPop::NAME, ItemKnn::NAME, Ease::NAME];

impl std::str::FromStr for ModelSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, params) = match s.split_once(':') {
            Some((n, p)) => {
                let v: serde_json::Value =
                    serde_json::from_str(p).map_err(|e| format!("model {n}: parameters are not JSON: {e}"))?;
                if !v.is_object() {
                    return Err(format!("model {n}: parameters must be a JSON object"));
                }
                (n, v)
            }
            None => (s, serde_json::json!({})),
        };
        let known = BASELINES.contains(&name) || strategy::REGISTRY.contains(&name);
        if !known {
            return Err(format!(
                "unknown model {name:?} (baselines: {}; strategies: {})",
                BASELINES.join(", "),
                strategy::REGISTRY.join(", ")
            ));
        }
        Ok(Self { label: s.to_string(), name: name.to_string(), params })
    }
}

/// What some models need beyond the interactions.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Content vectors by item index (unit length), when a vector store was given.
    pub content: Option<Vec<Option<Vec<f32>>>>,
    /// Parameters of the behaviour vectors computed from the training part.
    pub behaviour: behaviour::Params,
    /// Parameters of the item weights computed from the training part.
    pub items: behaviour::items::ItemParams,
}

/// Why a model could not be fitted.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// Bad parameters.
    #[error("{model}: {detail}")]
    Params {
        /// Model.
        model: String,
        /// What is wrong.
        detail: String,
    },
    /// The model needs content vectors and none were given.
    #[error("{0}: needs content vectors (give the evaluator a vector store)")]
    NoContent(String),
    /// Behaviour vectors failed.
    #[error(transparent)]
    Behaviour(#[from] behaviour::BehaviourError),
    /// EASE's linear system.
    #[error("ease: the regularised Gram matrix is not positive definite (raise lambda)")]
    NotPositiveDefinite,
}

fn params<T: for<'de> Deserialize<'de>>(spec: &ModelSpec) -> Result<T, FitError> {
    serde_json::from_value(spec.params.clone())
        .map_err(|e| FitError::Params { model: spec.name.clone(), detail: e.to_string() })
}

/// Fits the model a spec names on `data`'s training part.
pub fn fit(spec: &ModelSpec, data: &Dataset, context: &Context) -> Result<Box<dyn Recommender>, FitError> {
    match spec.name.as_str() {
        TopPop::NAME => Ok(Box::new(TopPop::fit(data))),
        ItemKnn::NAME => Ok(Box::new(ItemKnn::fit(data, params(spec)?)?)),
        Ease::NAME => Ok(Box::new(Ease::fit(data, params(spec)?)?)),
        _ => Ok(Box::new(Served::fit(spec, data, context)?)),
    }
}

/// What every baseline needs to turn scores into a list: each user's known items (never
/// recommended), the popularity order (fills short lists) and the item ids (break ties).
struct Known {
    seen: Vec<rustc_hash::FxHashSet<u32>>,
    order: Vec<u32>,
    names: Vec<String>,
}

impl Known {
    fn new(data: &Dataset) -> Self {
        Self {
            seen: (0..data.users.len()).map(|u| data.history(u).iter().map(|e| e.item).collect()).collect(),
            order: data.popularity(),
            names: data.items.clone(),
        }
    }

    /// The `k` best-scored items `user` has not seen (positive scores only), filled from the
    /// popularity order.
    fn top(&self, user: usize, scores: &[f64], k: usize) -> Vec<u32> {
        let exclude = &self.seen[user];
        fill(top_k(scores, k, exclude, &self.names), k, &self.order, exclude)
    }
}

/// Top `k` of dense scores, skipping `exclude`, ties by item id string.
fn top_k(scores: &[f64], k: usize, exclude: &rustc_hash::FxHashSet<u32>, names: &[String]) -> Vec<u32> {
    let mut cand: Vec<(u32, f64)> = scores
        .iter()
        .enumerate()
        .filter(|&(i, s)| *s > 0.0 && !exclude.contains(&(i as u32)))
        .map(|(i, &s)| (i as u32, s))
        .collect();
    let by = |a: &(u32, f64), b: &(u32, f64)| {
        b.1.total_cmp(&a.1).then_with(|| names[a.0 as usize].cmp(&names[b.0 as usize]))
    };
    if cand.len() > k && k > 0 {
        cand.select_nth_unstable_by(k - 1, by);
        cand.truncate(k);
    }
    cand.sort_by(by);
    cand.into_iter().map(|c| c.0).collect()
}

/// Fills a short list from the popularity order.
fn fill(mut list: Vec<u32>, k: usize, order: &[u32], exclude: &rustc_hash::FxHashSet<u32>) -> Vec<u32> {
    if list.len() < k {
        let chosen: rustc_hash::FxHashSet<u32> = list.iter().copied().collect();
        list.extend(order.iter().filter(|i| !exclude.contains(i) && !chosen.contains(i)).take(k - list.len()));
    }
    list
}

/// TopPop: the most popular items (distinct training users) the user has not seen.
pub struct TopPop {
    known: Known,
}

impl TopPop {
    /// Name.
    pub const NAME: &'static str = "toppop";

    fn fit(data: &Dataset) -> Self {
        Self { known: Known::new(data) }
    }
}

impl Recommender for TopPop {
    fn recommend(&self, user: usize, k: usize) -> Vec<u32> {
        self.known.top(user, &[], k)
    }
}

/// Items by user and users by item (distinct), from the training part.
struct Incidence {
    user_items: Vec<Vec<u32>>,
    item_users: Vec<Vec<u32>>,
}

impl Incidence {
    fn new(data: &Dataset) -> Self {
        let mut user_items: Vec<Vec<u32>> = data.train.iter().map(|e| e.iter().map(|x| x.item).collect()).collect();
        let mut item_users = vec![Vec::new(); data.items.len()];
        for (u, items) in user_items.iter_mut().enumerate() {
            items.sort_unstable();
            items.dedup();
            for &i in items.iter() {
                item_users[i as usize].push(u as u32);
            }
        }
        Self { user_items, item_users }
    }

    /// Calls `visit(j, count)` for every item `j` co-occurring with `item` (itself included),
    /// counted via the users who have it; `acc` (zeros, one slot per item) and `touched` are
    /// scratch space, left as they were found.
    fn cooccurrence(&self, item: usize, acc: &mut [f64], touched: &mut Vec<u32>, mut visit: impl FnMut(u32, f64)) {
        for &u in &self.item_users[item] {
            for &j in &self.user_items[u as usize] {
                if acc[j as usize] == 0.0 {
                    touched.push(j);
                }
                acc[j as usize] += 1.0;
            }
        }
        for &j in touched.iter() {
            visit(j, acc[j as usize]);
            acc[j as usize] = 0.0;
        }
        touched.clear();
    }
}

/// ItemKNN-CF parameters. Defaults: 50 neighbours, shrink 10 (chosen on the validation split of
/// ml-latest-small from k ∈ {20, 50, 100, 200}, shrink ∈ {0, 10, 50}).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ItemKnnParams {
    /// Neighbours kept per target item.
    pub k: usize,
    /// Shrink term in the cosine's denominator.
    pub shrink: f64,
}

impl Default for ItemKnnParams {
    fn default() -> Self {
        Self { k: 50, shrink: 10.0 }
    }
}

/// ItemKNN-CF: `sim(i, j) = |U_i ∩ U_j| / (sqrt(|U_i|)·sqrt(|U_j|) + shrink)` on the binary
/// user–item matrix; each target item `j` keeps its `k` most similar items; a user's score for
/// `j` is the sum of `sim(i, j)` over the training items `i` among them (the classic
/// `X · W` with a top-k-per-column `W`).
pub struct ItemKnn {
    /// `by_source[i]`: (target j, sim(i, j)) for every j that kept i.
    by_source: Vec<Vec<(u32, f64)>>,
    known: Known,
}

impl ItemKnn {
    /// Name.
    pub const NAME: &'static str = "itemknn-cf";

    fn fit(data: &Dataset, p: ItemKnnParams) -> Result<Self, FitError> {
        if p.k == 0 || !p.shrink.is_finite() || p.shrink < 0.0 {
            return Err(FitError::Params {
                model: Self::NAME.into(), detail: "k ≥ 1 and shrink ≥ 0 needed".into()
            });
        }
        let inc = Incidence::new(data);
        let n = data.items.len();
        let norms: Vec<f64> = inc.item_users.iter().map(|u| (u.len() as f64).sqrt()).collect();
        let mut by_source: Vec<Vec<(u32, f64)>> = vec![Vec::new(); n];
        let mut acc = vec![0.0; n];
        let mut touched = Vec::new();
        for j in 0..n {
            if inc.item_users[j].is_empty() {
                continue;
            }
            let mut sims: Vec<(u32, f64)> = Vec::new();
            inc.cooccurrence(j, &mut acc, &mut touched, |i, count| {
                if i as usize != j {
                    sims.push((i, count / (norms[i as usize] * norms[j] + p.shrink)));
                }
            });
            let by = |a: &(u32, f64), b: &(u32, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
            if sims.len() > p.k {
                sims.select_nth_unstable_by(p.k - 1, by);
                sims.truncate(p.k);
            }
            for (i, s) in sims {
                by_source[i as usize].push((j as u32, s));
            }
        }
        Ok(Self { by_source, known: Known::new(data) })
    }
}

impl Recommender for ItemKnn {
    fn recommend(&self, user: usize, k: usize) -> Vec<u32> {
        let mut scores = vec![0.0; self.known.names.len()];
        for &i in &self.known.seen[user] {
            for &(j, s) in &self.by_source[i as usize] {
                scores[j as usize] += s;
            }
        }
        self.known.top(user, &scores, k)
    }
}

/// EASE parameters. Default λ = 250 (chosen on the validation split of ml-latest-small from
/// {100, 250, 500, 1000, 2000}; Steck 2019 used 500 for MovieLens-20M); the item–item
/// model is fitted on at most `max_items` most popular items (memory and time grow as n² and n³).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EaseParams {
    /// L2 regularisation λ.
    pub lambda: f64,
    /// Items in the model (most popular first).
    pub max_items: usize,
}

impl Default for EaseParams {
    fn default() -> Self {
        Self { lambda: 250.0, max_items: 12_000 }
    }
}

/// EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): the closed
/// form `P = (XᵀX + λI)⁻¹`, `B = I − P·diag(1/diag(P))` (zero diagonal); a user's scores are
/// `X_u · B`. Solved with faer's Cholesky factorisation.
pub struct Ease {
    /// Dense B over the model's items (row-major by model index).
    b: faer::Mat<f64>,
    model_items: Vec<u32>,
    model_index: Vec<u32>,
    known: Known,
}

impl Ease {
    /// Name.
    pub const NAME: &'static str = "ease";

    fn fit(data: &Dataset, p: EaseParams) -> Result<Self, FitError> {
        if !p.lambda.is_finite() || p.lambda <= 0.0 || p.max_items == 0 {
            return Err(FitError::Params {
                model: Self::NAME.into(),
                detail: "lambda > 0 and max_items ≥ 1 needed".into(),
            });
        }
        let known = Known::new(data);
        let model_items: Vec<u32> = known.order.iter().copied().take(p.max_items).collect();
        let mut model_index = vec![u32::MAX; data.items.len()];
        for (m, &i) in model_items.iter().enumerate() {
            model_index[i as usize] = m as u32;
        }
        let inc = Incidence::new(data);
        let m = model_items.len();
        let mut g = faer::Mat::<f64>::zeros(m, m);
        let mut acc = vec![0.0; data.items.len()];
        let mut touched = Vec::new();
        for (a, &i) in model_items.iter().enumerate() {
            inc.cooccurrence(i as usize, &mut acc, &mut touched, |j, count| {
                let b = model_index[j as usize];
                if b != u32::MAX {
                    g[(a, b as usize)] = count;
                }
            });
            g[(a, a)] += p.lambda;
        }
        let llt = g.llt(faer::Side::Lower).map_err(|_| FitError::NotPositiveDefinite)?;
        drop(g);
        let mut pinv = faer::linalg::solvers::DenseSolveCore::inverse(&llt);
        drop(llt);
        for c in 0..m {
            let d = pinv[(c, c)];
            for r in 0..m {
                pinv[(r, c)] = if r == c { 0.0 } else { -pinv[(r, c)] / d };
            }
        }
        Ok(Self { b: pinv, model_items, model_index, known })
    }
}

impl Recommender for Ease {
    fn recommend(&self, user: usize, k: usize) -> Vec<u32> {
        let mut model_scores = vec![0.0; self.model_items.len()];
        for &i in &self.known.seen[user] {
            let a = self.model_index[i as usize];
            if a == u32::MAX {
                continue;
            }
            let row = self.b.row(a as usize);
            for (s, &v) in model_scores.iter_mut().zip(row.iter()) {
                *s += v;
            }
        }
        let mut scores = vec![0.0; self.known.names.len()];
        for (a, &i) in self.model_items.iter().enumerate() {
            scores[i as usize] = model_scores[a];
        }
        self.known.top(user, &scores, k)
    }
}

/// A registered serving strategy, answered by the server's pipeline ([`Model::answer`]) with
/// neighbour lists from exact searches: behaviour vectors factorised from the training part,
/// content vectors from the vector store (when given); the popularity list is the training
/// part's, as long as a server's.
pub struct Served {
    model: Model,
    histories: Vec<History>,
    popularity: Popularity,
    content: Vec<Arc<Vec<Hit>>>,
    behaviour: Vec<Arc<Vec<Hit>>>,
    items: Option<ItemIndex>,
    index: HashMap<String, u32>,
    /// Content vectors by item (for an item-weights plan's probe).
    content_vectors: Option<Arc<Vec<Option<Vec<f32>>>>>,
    /// Content vectors of the items without item weights (the new-movie search).
    fresh: Option<ExactIndex>,
    names: Vec<String>,
}

/// Item weights fitted on the training part, searched as an engine searches them: the exact
/// sparse dot product of the plan's query with every movie's weights, watched movies excluded,
/// best first (ties: movie id).
struct ItemIndex {
    weights: behaviour::items::ItemWeights,
    names: Vec<String>,
}

impl ItemIndex {
    fn query(&self, history: &History, plan: &strategy::Plan, index: &HashMap<String, u32>) -> Vec<Hit> {
        if plan.items == 0 {
            return Vec::new();
        }
        let query: Vec<(u32, f32)> = plan
            .seeds
            .iter()
            .zip(&plan.weights)
            .filter_map(|(&s, &w)| index.get(&history.watched[s].movie_id).map(|&i| (i, w)))
            .collect();
        let seen: rustc_hash::FxHashSet<u32> =
            history.watched.iter().filter_map(|w| index.get(&w.movie_id).copied()).collect();
        let mut scratch = Vec::new();
        let mut hits: Vec<(u32, f32)> =
            self.weights.scores(&query, &mut scratch).into_iter().filter(|(j, _)| !seen.contains(j)).collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| self.names[a.0 as usize].cmp(&self.names[b.0 as usize])));
        hits.truncate(plan.items);
        hits.into_iter().map(|(j, score)| Hit { id: 0, movie_id: self.names[j as usize].clone(), score }).collect()
    }
}

fn neighbour_lists(vectors: &[Option<Vec<f32>>], dim: usize, limit: usize, names: &[String]) -> Vec<Arc<Vec<Hit>>> {
    let empty: Arc<Vec<Hit>> = Arc::new(Vec::new());
    let mut out: Vec<Arc<Vec<Hit>>> = (0..vectors.len()).map(|_| empty.clone()).collect();
    if limit == 0 {
        return out;
    }
    let index = ExactIndex::new(dim, vectors);
    for (k, list) in index.all_neighbours(limit).into_iter().enumerate() {
        let hits =
            list.into_iter().map(|(i, score)| Hit { id: 0, movie_id: names[i as usize].clone(), score }).collect();
        out[index.ids()[k] as usize] = Arc::new(hits);
    }
    out
}

impl Served {
    fn fit(spec: &ModelSpec, data: &Dataset, context: &Context) -> Result<Self, FitError> {
        let model = Model::build(
            &strategy::ModelSpec { strategy: spec.name.clone(), params: spec.params.clone() },
            Search { exact: true, ef: None },
        )
        .map_err(|e| FitError::Params { model: spec.name.clone(), detail: e.to_string() })?;
        let (content_k, behaviour_k) = model.spaces().iter().fold((0, 0), |(c, b), &(space, k)| match space {
            vectorstore::Space::Content => (k, b),
            vectorstore::Space::Behaviour => (c, k),
        });
        // Content is optional for a strategy that also uses behaviour vectors (benchmark files
        // have no titles); one that uses content only cannot run without it.
        let content = match (&context.content, content_k) {
            (_, 0) => Vec::new(),
            (None, _) if behaviour_k > 0 => Vec::new(),
            (None, _) => return Err(FitError::NoContent(spec.name.clone())),
            (Some(vectors), k) => {
                let dim = vectors.iter().flatten().map(Vec::len).next().unwrap_or(0);
                neighbour_lists(vectors, dim, k, &data.items)
            }
        };
        let behaviour = if behaviour_k == 0 {
            Vec::new()
        } else {
            let v = behaviour::factorise(data.users.len(), data.items.len(), &data.interactions(), &context.behaviour)?;
            neighbour_lists(&v.vectors, v.dim, behaviour_k, &data.items)
        };
        let items = if model.uses_items() {
            let weights =
                behaviour::items::fit(data.users.len(), data.items.len(), &data.interactions(), &context.items)?;
            Some(ItemIndex { weights, names: data.items.clone() })
        } else {
            None
        };
        // New movies: what the store's content search among points without item weights finds
        // (a movie has a sparse vector when some row kept a weight for it).
        let one = Watched { movie_id: String::new(), last_event_id: 0, rating: None };
        let wants_fresh = model.plan(&History { watermark: 0, watched: vec![one] }).fresh > 0;
        let (content_vectors, fresh) = match (&items, &context.content) {
            (Some(items), Some(vectors)) if wants_fresh => {
                let mut reached = vec![false; data.items.len()];
                for row in &items.weights.rows {
                    for &(j, _) in row {
                        reached[j as usize] = true;
                    }
                }
                let unweighted: Vec<Option<Vec<f32>>> =
                    vectors.iter().zip(&reached).map(|(v, &r)| if r { None } else { v.clone() }).collect();
                let dim = vectors.iter().flatten().map(Vec::len).next().unwrap_or(0);
                (Some(Arc::new(vectors.clone())), Some(ExactIndex::new(dim, &unweighted)))
            }
            _ => (None, None),
        };
        let histories = (0..data.users.len())
            .map(|u| data.history(u))
            .map(|entries| {
                History {
                    watermark: 0,
                    watched: entries
                        .iter()
                        .map(|e| Watched {
                            movie_id: data.items[e.item as usize].clone(),
                            last_event_id: e.order,
                            rating: e.rating,
                        })
                        .collect(),
                }
                .canonical()
            })
            .collect();
        let mut order = data.popularity();
        order.truncate(POPULARITY_LIST);
        let counts = data.item_users();
        let popularity = Popularity {
            movies: order.iter().map(|&i| data.items[i as usize].clone()).collect(),
            watermark: 0,
            users: order.iter().map(|&i| counts[i as usize] as u64).collect(),
        };
        let index = data.items.iter().enumerate().map(|(i, m)| (m.clone(), i as u32)).collect();
        Ok(Self {
            model,
            histories,
            popularity,
            content,
            behaviour,
            items,
            index,
            content_vectors,
            fresh,
            names: data.items.clone(),
        })
    }
}

impl Served {
    /// The plan's new-movie candidates: the exact content search, near the unit mean of the
    /// probe's content vectors, among the items without weights, watched ones excluded.
    fn fresh_candidates(&self, history: &History, plan: &strategy::Plan) -> Vec<Hit> {
        let (Some(vectors), Some(index)) = (&self.content_vectors, &self.fresh) else { return Vec::new() };
        if plan.fresh == 0 {
            return Vec::new();
        }
        let probe = plan
            .probe
            .iter()
            .filter_map(|&p| self.index.get(&history.watched[p].movie_id))
            .filter_map(|&i| vectors[i as usize].clone());
        let Some(query) = strategy::fetch::mean_direction(probe) else { return Vec::new() };
        let seen = history.seen();
        index
            .search(&query, plan.fresh + history.watched.len(), None)
            .into_iter()
            .map(|(i, score)| Hit { id: 0, movie_id: self.names[i as usize].clone(), score })
            .filter(|h| !seen.contains(h.movie_id.as_str()))
            .take(plan.fresh)
            .collect()
    }
}

impl Recommender for Served {
    fn recommend(&self, user: usize, k: usize) -> Vec<u32> {
        let history = &self.histories[user];
        let plan = self.model.plan(history);
        let pick = |lists: &[Arc<Vec<Hit>>]| -> Vec<Arc<Vec<Hit>>> {
            if lists.is_empty() {
                return Vec::new();
            }
            plan.seeds
                .iter()
                .map(|&s| {
                    self.index.get(&history.watched[s].movie_id).map(|&i| lists[i as usize].clone()).unwrap_or_default()
                })
                .collect()
        };
        let items = self.items.as_ref().map(|w| w.query(history, &plan, &self.index)).unwrap_or_default();
        let fresh = self.fresh_candidates(history, &plan);
        let neighbours = Neighbours { content: pick(&self.content), behaviour: pick(&self.behaviour), items, fresh };
        let stage = Stage::Ready { history, neighbours: &neighbours, collection: None };
        self.model
            .answer(stage, &self.popularity, 0, k)
            .items
            .into_iter()
            .filter_map(|item| self.index.get(&item.movie_id).copied())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Row, Split};

    fn rows(pairs: &[(&str, &str)]) -> Vec<Row> {
        pairs
            .iter()
            .enumerate()
            .map(|(n, (u, i))| Row { user: (*u).into(), item: (*i).into(), rating: None, order: n as i64 })
            .collect()
    }

    fn ids(data: &Dataset, list: &[u32]) -> Vec<String> {
        list.iter().map(|&i| data.items[i as usize].clone()).collect()
    }

    fn user(data: &Dataset, name: &str) -> usize {
        data.users.iter().position(|u| u == name).expect("user")
    }

    #[test]
    fn toppop_ranks_by_distinct_users_and_skips_what_the_user_has() {
        // a: 3 users, b: 2, c: 1 (ties by id would put a before b).
        let data = Dataset::from_train_test(
            "fixture",
            &rows(&[("u1", "a"), ("u2", "a"), ("u3", "a"), ("u1", "b"), ("u2", "b"), ("u3", "c")]),
            &rows(&[("u3", "b")]),
        );
        let m = TopPop::fit(&data);
        assert_eq!(ids(&data, &m.recommend(user(&data, "u3"), 3)), vec!["b"]);
        assert_eq!(ids(&data, &m.recommend(user(&data, "u1"), 3)), vec!["c"]);
    }

    #[test]
    fn itemknn_recommends_what_co_occurs_with_the_users_items() {
        // Two clusters by construction: {x1, x2, x3} always together, {y1, y2} together; y1 is
        // far more popular than anything in x. A user with x1 must get x2, x3 before y1.
        let mut pairs = Vec::new();
        let names: Vec<String> = (0..20).map(|u| format!("u{u}")).collect();
        for (u, name) in names.iter().enumerate() {
            if u < 5 {
                pairs.extend([(name.as_str(), "x1"), (name.as_str(), "x2"), (name.as_str(), "x3")]);
            } else {
                pairs.extend([(name.as_str(), "y1"), (name.as_str(), "y2")]);
            }
        }
        pairs.push(("me", "x1"));
        let data = Dataset::from_train_test("fixture", &rows(&pairs), &[]);
        let p = ItemKnnParams { k: 10, shrink: 0.0 };
        let m = ItemKnn::fit(&data, p).expect("fit");
        let got = ids(&data, &m.recommend(user(&data, "me"), 3));
        assert_eq!(&got[..2], ["x2", "x3"], "{got:?}");
        assert_eq!(got[2], "y1", "filled from popularity");
        // sim(x1, x2) = 5 / (sqrt 6 · sqrt 5): the cosine, by hand.
        let x1 = data.items.iter().position(|i| i == "x1").expect("x1");
        let (_, s) = m.by_source[x1].iter().find(|(j, _)| data.items[*j as usize] == "x2").expect("x2 kept x1");
        assert!((s - 5.0 / (6f64.sqrt() * 5f64.sqrt())).abs() < 1e-12, "{s}");
    }

    #[test]
    fn ease_prefers_co_occurring_items_and_never_returns_seen_ones() {
        let mut pairs = Vec::new();
        let names: Vec<String> = (0..30).map(|u| format!("u{u}")).collect();
        for (u, name) in names.iter().enumerate() {
            let group = if u % 2 == 0 { ["a", "b", "c"] } else { ["d", "e", "f"] };
            pairs.extend(group.iter().take(2 + u % 3 / 2).map(|i| (name.as_str(), *i)));
        }
        pairs.push(("me", "a"));
        let data = Dataset::from_rows("fixture", &rows(&pairs), Split::Files);
        let m = Ease::fit(&data, EaseParams { lambda: 1.0, max_items: 100 }).expect("fit");
        let got = ids(&data, &m.recommend(user(&data, "me"), 2));
        assert!(!got.contains(&"a".to_string()));
        let mut got2 = got.clone();
        got2.sort();
        assert_eq!(got2, vec!["b", "c"], "{got:?}");
    }
}
