//! Behaviour vectors and item weights from the interactions in Postgres: the job `embedder
//! behaviour` runs before it builds a collection with them ([`crate::pipeline`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::pipeline::{BehaviourVectors, ItemEntry};

/// What the computation saw and how long it took.
#[derive(Debug, Clone)]
pub struct BehaviourRun {
    /// The vectors (by movie id) and their version.
    pub vectors: BehaviourVectors,
    /// Interactions read (distinct user–movie pairs).
    pub interactions: usize,
    /// Distinct users.
    pub users: usize,
    /// Distinct movies with interactions.
    pub movies: usize,
    /// The watermark the interactions were read at.
    pub watermark: i64,
    /// Reading from Postgres.
    pub read: Duration,
    /// The factorisation.
    pub factorise: Duration,
    /// The item-weights solve (zero when not asked for).
    pub items: Duration,
    /// Movies with item weights (a dimension in the item model).
    pub item_movies: usize,
    /// Stored item weights (non-zeros over all movies' sparse vectors).
    pub item_weights: usize,
}

impl BehaviourRun {
    /// One line for humans.
    pub fn render(&self) -> String {
        let mut line = format!(
            "behaviour vectors {}: {} of {} movies (from {} interactions of {} users at watermark {}), read {:.1} s, factorised {:.1} s",
            self.vectors.version,
            self.vectors.by_movie.len(),
            self.movies,
            self.interactions,
            self.users,
            self.watermark,
            self.read.as_secs_f64(),
            self.factorise.as_secs_f64()
        );
        if self.item_movies > 0 {
            line.push_str(&format!(
                "; item weights for {} movies ({} weights), solved in {:.1} s",
                self.item_movies,
                self.item_weights,
                self.items.as_secs_f64()
            ));
        }
        line
    }
}

/// Why behaviour vectors could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum BehaviourJobError {
    /// Reading the interactions.
    #[error("reading interactions: {0}")]
    Db(#[from] sqlx::Error),
    /// The factorisation.
    #[error(transparent)]
    Factorise(#[from] behaviour::BehaviourError),
    /// The blocking task died.
    #[error("the factorisation task failed: {0}")]
    Task(String),
}

/// Reads every interaction up to the watermark, factorises them with `params` and, when
/// `items` is given, fits the item weights (EASE / EDLAE) on them too.
pub async fn compute(
    pool: &PgPool,
    params: &behaviour::Params,
    items: Option<&behaviour::items::ItemParams>,
) -> Result<BehaviourRun, BehaviourJobError> {
    params.check()?;
    if let Some(items) = items {
        items.check()?;
    }
    let started = Instant::now();
    let (rows, watermark) = db::interactions::snapshot(pool).await?;
    let read = started.elapsed();
    let mut users: HashMap<i64, u32> = HashMap::new();
    let mut movies: HashMap<String, u32> = HashMap::new();
    let mut names: Vec<String> = Vec::new();
    let mut interactions = Vec::with_capacity(rows.len());
    for row in rows {
        let n = users.len() as u32;
        let user = *users.entry(row.user_id).or_insert(n);
        let item = match movies.get(&row.movie_id) {
            Some(&i) => i,
            None => {
                let i = names.len() as u32;
                movies.insert(row.movie_id.clone(), i);
                names.push(row.movie_id);
                i
            }
        };
        interactions.push(behaviour::Interaction { user, item });
    }
    let (n_users, n_items, count) = (users.len(), names.len(), interactions.len());
    drop((users, movies));
    let (p, ip) = (params.clone(), items.cloned());
    let (vectors, factorise, weights, solve) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let vectors = behaviour::factorise(n_users, n_items, &interactions, &p)?;
        let factorise = started.elapsed();
        let started = Instant::now();
        let weights = ip.map(|ip| behaviour::items::fit(n_users, n_items, &interactions, &ip)).transpose()?;
        Ok::<_, behaviour::BehaviourError>((vectors, factorise, weights, started.elapsed()))
    })
    .await
    .map_err(|e| BehaviourJobError::Task(e.to_string()))??;
    let mut version = params.version();
    let mut by_item = HashMap::new();
    let mut item_weights = 0;
    if let (Some(weights), Some(ip)) = (weights, items) {
        version.push_str(&format!(".{}", ip.version()));
        let columns = weights.columns();
        for (i, (row, column)) in weights.rows.iter().zip(columns).enumerate() {
            if row.is_empty() && column.is_empty() {
                continue;
            }
            item_weights += column.len();
            let vector = (!column.is_empty()).then(|| vectorstore::SparseVector::new(column));
            // A movie's dimension is its index in this run (rows of B).
            by_item.insert(i, ItemEntry { dim: (!row.is_empty()).then_some(i as u32), vector });
        }
    }
    let item_movies = by_item.values().filter(|e| e.dim.is_some()).count();
    let items_by_movie: HashMap<String, ItemEntry> =
        names.iter().enumerate().filter_map(|(i, m)| Some((m.clone(), by_item.remove(&i)?))).collect();
    let by_movie: HashMap<String, Vec<f32>> =
        names.into_iter().zip(vectors.vectors).filter_map(|(m, v)| Some((m, v?))).collect();
    Ok(BehaviourRun {
        vectors: BehaviourVectors {
            version: format!("{version}-w{watermark}"),
            dim: params.dim,
            by_movie,
            items: items_by_movie,
        },
        interactions: count,
        users: n_users,
        movies: n_items,
        watermark,
        read,
        factorise,
        items: solve,
        item_movies,
        item_weights,
    })
}
