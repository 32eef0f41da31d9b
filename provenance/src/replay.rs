//! Recomputes a past answer with the model, data and vectors it was made from, and compares.
//!
//! A history row names its model version (→ `models`: strategy and parameters), its data
//! watermark, and in `inputs.data_versions` the popularity run and the vector collection it
//! read. The replay rebuilds the user's history **as of the watermark** (events above it are
//! ignored: the summaries are used where they have not moved since, the event tables where they
//! have), reads that popularity run's list (`popularity_run_movies`), searches that collection
//! with the search parameters recorded with the model (`models.search`), and answers with the
//! same pipeline ([`strategy::Model::answer`]) — strategies are append-only, so a newer binary
//! answers as the one that did.
//!
//! A row whose inputs are gone or were never recorded is [`Outcome::NotReproducible`], never a
//! match.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::PgPool;
use strategy::{
    DataVersions, Exclude, History, Model, ModelSpec, Neighbours, POPULARITY_LIST, Popularity, Search, Stage, Watched,
    five_star, without_code,
};
use vectorstore::{Hit, ItemDims, Space, VectorStore, point_id};

/// Failures of the replay machinery itself (not of a row's reproducibility).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The vector store failed.
    #[error("vector store: {0}")]
    Store(#[from] vectorstore::StoreError),
    /// No such history row.
    #[error("no recommendation with request id {0:?}")]
    NotFound(String),
}

/// A history row, as far as a replay needs it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Recorded {
    /// The request id.
    pub request_id: String,
    /// When it was answered.
    pub ts: chrono::DateTime<chrono::Utc>,
    /// The user.
    pub user_id: Option<i64>,
    /// HTTP status sent.
    pub status: i32,
    /// main, nightly, fallback.
    pub served_variant: String,
    /// personal, cold_start, degraded, fallback.
    pub kind: Option<String>,
    /// A degraded answer.
    pub degraded: bool,
    /// The model version that answered.
    pub model_version: Option<String>,
    /// The data watermark of the answer.
    pub data_watermark: Option<i64>,
    /// The popularity run and collection the answer read (absent on rows recorded before).
    pub data_versions: Option<DataVersions>,
    /// Movies asked for.
    pub limit: Option<i64>,
    /// The answer.
    pub movie_ids: Vec<String>,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// The same list, in the same order.
    Identical,
    /// Another list.
    Different {
        /// What the replay computed.
        replayed: Vec<String>,
    },
    /// The inputs cannot be had (pruned, never recorded, or the answer was not the model's).
    NotReproducible {
        /// Why.
        why: String,
    },
}

/// A neighbour list: (collection, space, movie point, k, search). A server caches lists without
/// k or search parameters (it serves one model); a replay serves many, and two models may ask
/// for different lengths or search differently.
type ListKey = (String, Space, u64, usize, Search);

/// Replays rows; keeps what several rows share (strategies, popularity lists, neighbour lists,
/// the store's collections).
pub struct Replayer {
    pool: PgPool,
    store: Arc<dyn VectorStore>,
    models: HashMap<String, Result<Model, String>>,
    popularity: HashMap<i64, Option<Arc<Popularity>>>,
    lists: HashMap<ListKey, Arc<Vec<Hit>>>,
    collections: Option<Vec<String>>,
    dims: HashMap<String, Arc<ItemDims>>,
}

fn not_reproducible(why: impl Into<String>) -> Outcome {
    Outcome::NotReproducible { why: why.into() }
}

impl Replayer {
    /// A replayer over `pool` and `store`.
    pub fn new(pool: PgPool, store: Arc<dyn VectorStore>) -> Self {
        Self {
            pool,
            store,
            models: HashMap::new(),
            popularity: HashMap::new(),
            dims: HashMap::new(),
            lists: HashMap::new(),
            collections: None,
        }
    }

    /// Reads history row `request_id`.
    pub async fn recorded(&self, request_id: &str) -> Result<Recorded, ReplayError> {
        type Row = (
            String,
            chrono::DateTime<chrono::Utc>,
            Option<i64>,
            i32,
            String,
            Option<String>,
            bool,
            Option<String>,
            Option<i64>,
            Option<serde_json::Value>,
            Option<i64>,
            Vec<String>,
        );
        let row: Option<Row> = sqlx::query_as(
            "SELECT request_id, ts, user_id, status, served_variant, inputs->>'kind', degraded, model_version,
                    data_watermark, inputs->'data_versions', (inputs->>'limit')::bigint, movie_ids
             FROM recommendations_history WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_optional(&self.pool)
        .await?;
        let r = row.ok_or_else(|| ReplayError::NotFound(request_id.to_string()))?;
        Ok(Recorded {
            request_id: r.0,
            ts: r.1,
            user_id: r.2,
            status: r.3,
            served_variant: r.4,
            kind: r.5,
            degraded: r.6,
            model_version: r.7,
            data_watermark: r.8,
            // A value that is not a data-versions object names nothing a replay could read.
            data_versions: r.9.and_then(|v| serde_json::from_value(v).ok()),
            limit: r.10,
            movie_ids: r.11,
        })
    }

    /// Replays history row `request_id`.
    pub async fn replay(&mut self, request_id: &str) -> Result<(Recorded, Outcome), ReplayError> {
        let recorded = self.recorded(request_id).await?;
        let outcome = self.replay_recorded(&recorded).await?;
        Ok((recorded, outcome))
    }

    /// Replays a row already read.
    pub async fn replay_recorded(&mut self, r: &Recorded) -> Result<Outcome, ReplayError> {
        if r.status != 200 {
            return Ok(not_reproducible(format!("status {}: no list was answered", r.status)));
        }
        if r.served_variant == "fallback" {
            return Ok(not_reproducible("the load balancer's fallback list answered, not a model"));
        }
        let (Some(user_id), Some(watermark), Some(model_version)) = (r.user_id, r.data_watermark, &r.model_version)
        else {
            return Ok(not_reproducible("the row has no user, watermark or model version"));
        };
        let Some(versions) = &r.data_versions else {
            return Ok(not_reproducible("recorded before answers named their popularity run and collection"));
        };
        if r.degraded && versions.exclude.is_none() {
            return Ok(not_reproducible("a degraded answer recorded without which list it cut"));
        }
        let model = match self.model(model_version).await? {
            Ok(m) => m,
            Err(why) => return Ok(not_reproducible(why)),
        };
        let run = versions.popularity;
        if run == 0 {
            return Ok(not_reproducible("answered before the first popularity run (catalog order, not kept)"));
        }
        let Some(popularity) = self.popularity(run).await? else {
            return Ok(not_reproducible(format!("popularity run {run} is gone (pruned)")));
        };
        let limit = r.limit.unwrap_or(20).max(0) as usize;
        let history = self.history_as_of(user_id, watermark).await?;
        let mut neighbours = Neighbours::default();
        // A degraded answer read no list; the pipeline gets the stage the server had reached.
        let stage = match versions.exclude {
            Some(Exclude::None) => Stage::NoHistory,
            Some(Exclude::History) => Stage::NoNeighbours(&history),
            None => {
                let plan = model.plan(&history);
                if plan.items > 0 && !(plan.seeds.is_empty() && plan.probe.is_empty()) {
                    let Some(collection) = &versions.collection else {
                        return Ok(not_reproducible(format!("no vector collection in {versions}")));
                    };
                    if !self.has_collection(collection).await? {
                        return Ok(not_reproducible(format!("vector collection {collection} is gone")));
                    }
                    let dims = self.item_dims(collection).await?;
                    let found = strategy::fetch::item_candidates(
                        self.store.as_ref(),
                        collection,
                        &dims,
                        &history,
                        &plan,
                        model.search(),
                    )
                    .await?;
                    (neighbours.items, neighbours.fresh) = (found.weighted, found.fresh);
                } else if !plan.seeds.is_empty() && plan.spaces().next().is_some() {
                    let Some(collection) = &versions.collection else {
                        return Ok(not_reproducible(format!("no vector collection in {versions}")));
                    };
                    if !self.has_collection(collection).await? {
                        return Ok(not_reproducible(format!("vector collection {collection} is gone")));
                    }
                    for (space, k) in plan.spaces() {
                        let mut lists = Vec::with_capacity(plan.seeds.len());
                        for &i in &plan.seeds {
                            let movie = &history.watched[i].movie_id;
                            lists.push(self.neighbour_list(collection, space, movie, k, model.search()).await?);
                        }
                        match space {
                            Space::Content => neighbours.content = lists,
                            Space::Behaviour => neighbours.behaviour = lists,
                        }
                    }
                }
                Stage::Ready { history: &history, neighbours: &neighbours, collection: versions.collection.as_deref() }
            }
        };
        let decision = model.answer(stage, &popularity, run, limit);
        let replayed: Vec<String> = decision.items.into_iter().map(|i| i.movie_id).collect();
        Ok(if replayed == r.movie_ids { Outcome::Identical } else { Outcome::Different { replayed } })
    }

    /// The model recorded under `model_version`, built by this binary (its parameter hash must
    /// match: strategies are append-only, so the same parameters rank the same way).
    async fn model(&mut self, model_version: &str) -> Result<Result<Model, String>, ReplayError> {
        if let Some(m) = self.models.get(model_version) {
            return Ok(m.clone());
        }
        let built = match db::models::find(&self.pool, model_version).await? {
            None => Err(format!("model {model_version} is not in `models` (served before models were recorded)")),
            Some(recorded) => {
                let search = match recorded.search.map(serde_json::from_value::<Search>).transpose() {
                    Ok(search) => search.unwrap_or_default(),
                    Err(e) => return Ok(Err(format!("model {model_version}: bad search parameters: {e}"))),
                };
                let spec = ModelSpec { strategy: recorded.strategy.clone(), params: recorded.params };
                match Model::build(&spec, search) {
                    Err(e) => Err(format!("model {model_version}: {e}")),
                    Ok(m) if without_code(m.version()) != without_code(model_version) => Err(format!(
                        "model {model_version}: this build's {} has another parameter hash ({})",
                        recorded.strategy,
                        m.version()
                    )),
                    Ok(m) => Ok(m),
                }
            }
        };
        self.models.insert(model_version.to_string(), built.clone());
        Ok(built)
    }

    async fn popularity(&mut self, run: i64) -> Result<Option<Arc<Popularity>>, ReplayError> {
        if let Some(p) = self.popularity.get(&run) {
            return Ok(p.clone());
        }
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT movie_id, watch_users FROM popularity_run_movies WHERE run_id = $1 ORDER BY rank, movie_id LIMIT $2",
        )
        .bind(run)
        .bind(POPULARITY_LIST as i64)
        .fetch_all(&self.pool)
        .await?;
        let watermark: Option<i64> = sqlx::query_scalar("SELECT watermark FROM popularity_runs WHERE run_id = $1")
            .bind(run)
            .fetch_optional(&self.pool)
            .await?;
        let list = match watermark {
            Some(watermark) if !rows.is_empty() => Some(Arc::new(Popularity {
                users: rows.iter().map(|r| r.1.max(0) as u64).collect(),
                movies: rows.into_iter().map(|r| r.0).collect(),
                watermark,
            })),
            _ => None,
        };
        self.popularity.insert(run, list.clone());
        Ok(list)
    }

    /// The item dimensions of a collection (read once: collections are immutable).
    async fn item_dims(&mut self, collection: &str) -> Result<Arc<ItemDims>, ReplayError> {
        if let Some(dims) = self.dims.get(collection) {
            return Ok(dims.clone());
        }
        let dims = Arc::new(ItemDims::from_digests(&self.store.digests(collection).await?));
        self.dims.insert(collection.to_string(), dims.clone());
        Ok(dims)
    }

    async fn has_collection(&mut self, name: &str) -> Result<bool, ReplayError> {
        if self.collections.is_none() {
            self.collections = Some(self.store.collections().await?);
        }
        Ok(self.collections.as_ref().is_some_and(|c| c.iter().any(|n| n == name)))
    }

    async fn neighbour_list(
        &mut self,
        collection: &str,
        space: Space,
        movie_id: &str,
        k: usize,
        search: Search,
    ) -> Result<Arc<Vec<Hit>>, ReplayError> {
        let id = point_id(movie_id);
        let key = (collection.to_string(), space, id, k, search);
        if let Some(list) = self.lists.get(&key) {
            return Ok(list.clone());
        }
        let list =
            vectorstore::neighbours_of(self.store.as_ref(), collection, space, id, k, search.exact, search.ef).await?;
        let list = Arc::new(list);
        self.lists.insert(key, list.clone());
        Ok(list)
    }

    /// The user's history as the server read it at `watermark`: watched or rated movies with
    /// the last event id at or below it and the rating of that time. Summary rows that have not
    /// moved past the watermark are used as they are; for those that have, the event tables
    /// give the state of that time.
    pub async fn history_as_of(&self, user_id: i64, watermark: i64) -> Result<History, ReplayError> {
        type Row = (String, Option<i64>, Option<i16>, Option<i16>);
        let rows: Vec<Row> = sqlx::query_as(
            "WITH cur AS (
               SELECT movie_id, w.first_event_id AS w_first, w.last_event_id AS w_last,
                      r.rating, r.scale, r.event_id AS r_id
               FROM (SELECT movie_id, first_event_id, last_event_id FROM user_watched WHERE user_id = $1) w
               FULL JOIN (SELECT movie_id, rating, scale, event_id FROM ratings WHERE user_id = $1) r USING (movie_id)
             ), asof AS (
               SELECT cur.movie_id,
                      CASE WHEN cur.w_last <= $2 THEN cur.w_last
                           WHEN cur.w_first <= $2 THEN (
                             SELECT max(e.event_id) FROM watch_events e
                             WHERE e.event_id BETWEEN cur.w_first AND $2 AND e.user_id = $1 AND e.movie_id = cur.movie_id)
                      END AS watch_id,
                      CASE WHEN cur.r_id <= $2 THEN cur.rating ELSE old.rating END AS rating,
                      CASE WHEN cur.r_id <= $2 THEN cur.scale ELSE old.scale END AS scale,
                      CASE WHEN cur.r_id <= $2 THEN cur.r_id ELSE old.event_id END AS rating_id
               FROM cur
               LEFT JOIN LATERAL (
                 SELECT e.rating, e.scale, e.event_id FROM rating_events e
                 WHERE cur.r_id > $2 AND e.event_id <= $2 AND e.user_id = $1 AND e.movie_id = cur.movie_id
                 ORDER BY e.ts DESC, e.event_id DESC LIMIT 1
               ) old ON true
             )
             SELECT movie_id, greatest(watch_id, rating_id), rating, scale FROM asof
             WHERE watch_id IS NOT NULL OR rating_id IS NOT NULL",
        )
        .bind(user_id)
        .bind(watermark)
        .fetch_all(&self.pool)
        .await?;
        let watched = rows
            .into_iter()
            .filter_map(|(movie_id, last_event_id, rating, scale)| {
                Some(Watched { movie_id, last_event_id: last_event_id?, rating: five_star(rating, scale) })
            })
            .collect();
        Ok(History { watermark, watched }.canonical())
    }
}

/// A sample's tally.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Tally {
    /// Rows replayed.
    pub rows: u64,
    /// Identical lists.
    pub identical: u64,
    /// Different lists.
    pub different: u64,
    /// Rows whose inputs cannot be had, by reason.
    pub not_reproducible: std::collections::BTreeMap<String, u64>,
    /// The first few differences: (request id, recorded, replayed).
    pub first_differences: Vec<(String, Vec<String>, Vec<String>)>,
}

impl Tally {
    /// Counts one outcome.
    pub fn add(&mut self, r: &Recorded, outcome: &Outcome) {
        self.rows += 1;
        match outcome {
            Outcome::Identical => self.identical += 1,
            Outcome::Different { replayed } => {
                self.different += 1;
                if self.first_differences.len() < 5 {
                    self.first_differences.push((r.request_id.clone(), r.movie_ids.clone(), replayed.clone()));
                }
            }
            Outcome::NotReproducible { why } => {
                // Reasons carry names and numbers; count by their first words.
                let key = why.split(':').next().unwrap_or(why).to_string();
                *self.not_reproducible.entry(key).or_default() += 1;
            }
        }
    }

    /// Identical among the rows that could be replayed (1 when none could).
    pub fn identical_share(&self) -> f64 {
        let replayable = self.identical + self.different;
        if replayable == 0 { 1.0 } else { self.identical as f64 / replayable as f64 }
    }
}

/// A deterministic random sample of `n` history rows since `since` (by a hash of the request id
/// and `seed`).
pub async fn sample(
    pool: &PgPool,
    n: i64,
    since: Option<chrono::DateTime<chrono::Utc>>,
    seed: u64,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT request_id FROM recommendations_history WHERE ($2::timestamptz IS NULL OR ts >= $2)
         ORDER BY md5(request_id || $3), request_id LIMIT $1",
    )
    .bind(n)
    .bind(since)
    .bind(seed.to_string())
    .fetch_all(pool)
    .await
}
