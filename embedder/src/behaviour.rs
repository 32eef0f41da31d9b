//! Behaviour vectors from the interactions in Postgres: the job `embedder behaviour` runs
//! before it builds a collection with them ([`crate::pipeline`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::pipeline::BehaviourVectors;

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
}

impl BehaviourRun {
    /// One line for humans.
    pub fn render(&self) -> String {
        format!(
            "behaviour vectors {}: {} of {} movies (from {} interactions of {} users at watermark {}), read {:.1} s, factorised {:.1} s",
            self.vectors.version,
            self.vectors.by_movie.len(),
            self.movies,
            self.interactions,
            self.users,
            self.watermark,
            self.read.as_secs_f64(),
            self.factorise.as_secs_f64()
        )
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

/// Reads every interaction up to the watermark and factorises them with `params`.
pub async fn compute(pool: &PgPool, params: &behaviour::Params) -> Result<BehaviourRun, BehaviourJobError> {
    params.check()?;
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
    let started = Instant::now();
    let p = params.clone();
    let vectors = tokio::task::spawn_blocking(move || behaviour::factorise(n_users, n_items, &interactions, &p))
        .await
        .map_err(|e| BehaviourJobError::Task(e.to_string()))??;
    let factorise = started.elapsed();
    let by_movie: HashMap<String, Vec<f32>> =
        names.into_iter().zip(vectors.vectors).filter_map(|(m, v)| Some((m, v?))).collect();
    Ok(BehaviourRun {
        vectors: BehaviourVectors { version: format!("{}-w{watermark}", params.version()), dim: params.dim, by_movie },
        interactions: count,
        users: n_users,
        movies: n_items,
        watermark,
        read,
        factorise,
    })
}
