//! Reading what an item-weights plan needs from the vector store: the one function the server
//! and the replayer both call, so an answer and its replay send the same query.

use vectorstore::{Hit, ItemDims, ItemsQuery, Space, SparseVector, StoreError, VectorStore, point_id};

use crate::input::History;
use crate::pipeline::Search;
use crate::strategies::Plan;

/// The candidates of an item-weights plan and how many store calls they took.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemCandidates {
    /// From the sparse search (see [`crate::Neighbours::items`]).
    pub weighted: Vec<Hit>,
    /// From the content search among movies without weights (see [`crate::Neighbours::fresh`]).
    pub fresh: Vec<Hit>,
    /// Store calls made: 0 (nothing to ask), 1 (the search) or 2 (the probe's content vectors,
    /// then the search).
    pub calls: u32,
}

/// The sparse query of a plan: `{dim(seed): weight}` over the seeds that have a dimension
/// (movies outside the item model say nothing about others).
pub fn sparse_query(history: &History, plan: &Plan, dims: &ItemDims) -> SparseVector {
    SparseVector::new(
        plan.seeds
            .iter()
            .zip(&plan.weights)
            .filter_map(|(&s, &w)| Some((*dims.dims.get(&history.watched[s].movie_id)?, w)))
            .collect(),
    )
}

/// Runs `plan`'s item-weights search against `collection` (whose item dimensions are `dims`):
/// at most two store calls whatever the history's length — the content vectors of the plan's
/// probe (only when it asks for new movies and the collection has movies without weights),
/// then one search for both lists.
pub async fn item_candidates(
    store: &dyn VectorStore,
    collection: &str,
    dims: &ItemDims,
    history: &History,
    plan: &Plan,
    search: Search,
) -> Result<ItemCandidates, StoreError> {
    let mut out = ItemCandidates::default();
    if plan.items == 0 {
        return Ok(out);
    }
    let query = sparse_query(history, plan, dims);
    let fresh = if plan.fresh > 0 && dims.without > 0 && !plan.probe.is_empty() {
        let ids: Vec<u64> = plan.probe.iter().map(|&i| point_id(&history.watched[i].movie_id)).collect();
        out.calls += 1;
        mean_direction(store.vectors(collection, Space::Content, &ids).await?.into_iter().map(|(_, v)| v))
    } else {
        None
    };
    if query.entries.is_empty() && fresh.is_none() {
        return Ok(out);
    }
    let request = ItemsQuery {
        query,
        limit: plan.items,
        exclude_ids: history.watched.iter().map(|w| point_id(&w.movie_id)).collect(),
        fresh_limit: if fresh.is_some() { plan.fresh } else { 0 },
        fresh,
        exact: search.exact,
        ef: search.ef,
    };
    out.calls += 1;
    let hits = store.search_items(collection, &request).await?;
    (out.weighted, out.fresh) = (hits.weighted, hits.fresh);
    Ok(out)
}

/// The unit mean of `vectors` (`None` when there are none or they cancel out).
pub fn mean_direction(vectors: impl IntoIterator<Item = Vec<f32>>) -> Option<Vec<f32>> {
    let mut sum: Option<Vec<f32>> = None;
    for v in vectors {
        match &mut sum {
            None => sum = Some(v),
            Some(s) if s.len() == v.len() => s.iter_mut().zip(&v).for_each(|(a, b)| *a += b),
            Some(_) => {}
        }
    }
    let mut sum = sum?;
    let norm = sum.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    sum.iter_mut().for_each(|x| *x /= norm);
    Some(sum)
}
