//! The one core behind both adapters (HTTP and gRPC): the lazy request path.
//!
//! 1. The user's history as of the ingest watermark (Postgres; cached per user until the
//!    watermark moves or a short TTL passes).
//! 2. No history → cold start: the popularity list.
//! 3. What the strategy's plan reads from the vector store: neighbour lists of its seed movies
//!    (cached per movie and collection, fetched concurrently), or — for an item-weights
//!    strategy — one sparse search over the whole history ([`strategy::fetch`], at most two
//!    store calls).
//! 4. The strategy ranks. Watched movies are never recommended.
//!
//! Every stage has a deadline. A stage that misses it or fails degrades the answer to the
//! popularity list (minus what is known to be watched) — never to an error.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use moka::future::Cache;
use sqlx::PgPool;
use strategy::{DataVersions, History, Item, Model, Neighbours, Plan, Popularity, Stage};
use vectorstore::point_id;
use vectorstore::{Hit, ItemDims, Space, VectorStore};

use crate::admission::{Gate, Permit, Refused};
use crate::config::Config;
use crate::data;
use crate::metrics::Metrics;

pub use proto::contract::Kind;

/// Neighbour-list lookups one request runs at a time (cache hits return at once; cold lists
/// wait for the vector stage's gate).
const LOOKUPS_PER_REQUEST: usize = 4;
/// An answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Best first.
    pub items: Vec<Item>,
    /// The data watermark the answer was computed from.
    pub watermark: i64,
    /// Personal, cold start or degraded.
    pub kind: Kind,
    /// Why it degraded.
    pub degraded: Option<String>,
    /// What it was computed from beyond the watermark (recorded in the history row's inputs;
    /// replay reads the same).
    pub data_versions: DataVersions,
}

/// Why a stage failed (and so why the answer degraded): the metric label and the reason sent
/// in `X-Degraded` both come from here.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StageError {
    /// The whole request missed its deadline.
    #[error("request deadline")]
    Deadline,
    /// Postgres failed.
    #[error("postgres: {0}")]
    Postgres(String),
    /// Postgres missed the stage deadline.
    #[error("postgres deadline")]
    PostgresTimeout,
    /// No live vector collection.
    #[error("vector store: no live collection")]
    NoCollection,
    /// The live collection has no item weights (an item-weights strategy cannot rank).
    #[error("vector store: collection {0} has no item weights (run `embedder behaviour`)")]
    NoItemWeights(String),
    /// The vector store failed.
    #[error("vector store: {0}")]
    VectorStore(String),
    /// The vector store missed the stage deadline.
    #[error("vector store deadline")]
    VectorStoreTimeout,
    /// Postgres' admission control refused the request (overload).
    #[error("postgres: {0}")]
    PostgresShed(Refused),
    /// The vector store's admission control refused the request (overload).
    #[error("vector store: {0}")]
    VectorStoreShed(Refused),
}

impl StageError {
    /// The `reason` label of `lazyrec_server_degraded_total`.
    pub fn metric(&self) -> &'static str {
        match self {
            StageError::Deadline => "deadline",
            StageError::Postgres(_) => "postgres_error",
            StageError::PostgresTimeout => "postgres_timeout",
            StageError::NoCollection => "no_collection",
            StageError::NoItemWeights(_) => "no_item_weights",
            StageError::VectorStore(_) => "vector_store_error",
            StageError::VectorStoreTimeout => "vector_store_timeout",
            StageError::PostgresShed(_) => "postgres_shed",
            StageError::VectorStoreShed(_) => "vector_store_shed",
        }
    }
}

/// Shared state of one server instance.
pub struct Core {
    /// The validated configuration.
    pub config: Config,
    /// Metrics.
    pub metrics: Metrics,
    /// Request-path reads (a hot standby when configured and there is one).
    pool: PgPool,
    /// The primary: writes (`models`) and the watermark the read lag is measured against. The
    /// same pool as `pool` when there is one host.
    primary: PgPool,
    store: Arc<dyn VectorStore>,
    model: Model,
    collection: RwLock<Option<Live>>,
    /// The popularity list served and its run id (0: the catalog fallback).
    popularity: RwLock<(Arc<Popularity>, i64)>,
    watermark: AtomicI64,
    postgres_ok: AtomicBool,
    store_ok: AtomicBool,
    histories: Cache<i64, Arc<History>>,
    neighbours: Cache<(Arc<str>, Space, u64), Arc<Vec<Hit>>>,
    /// An item-weights plan's candidates by (collection, user, history watermark): the same
    /// history searched in the same collection gives the same candidates.
    candidates: CandidateCache,
    postgres_gate: Gate,
    vector_gate: Gate,
    degraded_log: LogThrottle,
}

/// The server's Postgres pools.
#[derive(Debug, Clone)]
pub struct Pools {
    /// Request-path reads: histories, popularity, the watermark.
    pub reads: PgPool,
    /// The primary (writes; the reference for the read lag). May be `reads` itself.
    pub primary: PgPool,
}

/// (collection, user, history watermark) → what an item-weights plan's search found.
type CandidateCache = Cache<(Arc<str>, i64, i64), Arc<strategy::fetch::ItemCandidates>>;

/// The collection answers read, with its item dimensions when the model reads item weights
/// (loaded once per collection, before requests are switched to it).
#[derive(Debug, Clone)]
struct Live {
    name: Arc<str>,
    dims: Option<Arc<ItemDims>>,
}

/// At most one log line per second for a condition that can hit every request.
#[derive(Debug)]
struct LogThrottle {
    origin: Instant,
    /// The second (since `origin`, plus one) of the last line.
    second: AtomicU64,
    suppressed: AtomicU64,
}

impl LogThrottle {
    fn new() -> Self {
        Self { origin: Instant::now(), second: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    fn allow(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_secs() + 1;
        let last = self.second.load(Ordering::Relaxed);
        if now != last && self.second.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// How a vector lookup waits for the store's admission control.
#[derive(Debug, Clone, Copy)]
enum Admit {
    /// A request: queue at most this long, refused when the queue is full.
    Within(Duration),
    /// Offline work (warming, evaluation, replay): wait for a slot, however long.
    Patiently,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("model_version", &self.model.version())
            .field("store", &self.store.describe())
            .finish()
    }
}

impl Core {
    /// Builds the core (no I/O: Postgres and the store are reached lazily, so the server comes
    /// up and answers — degraded — even when they are not there yet).
    pub fn new(
        config: Config,
        pools: Pools,
        store: Arc<dyn VectorStore>,
        metrics: Metrics,
    ) -> Result<Self, strategy::StrategyError> {
        let model = config.model()?;
        let histories = Cache::builder()
            .max_capacity(config.caches.user_histories)
            .time_to_live(Duration::from_millis(config.caches.user_history_ttl_ms))
            .build();
        let neighbours = Cache::builder().max_capacity(config.caches.neighbour_lists).build();
        let candidates = Cache::builder().max_capacity(config.caches.item_candidates).build();
        let pinned = config.store.collection.as_deref().map(|name| Live { name: Arc::from(name), dims: None });
        let postgres_gate = Gate::new("postgres", config.postgres_limits(), &metrics);
        let vector_gate = Gate::new("vector_store", config.admission.vector_store, &metrics);
        Ok(Self {
            config,
            metrics,
            pool: pools.reads,
            primary: pools.primary,
            store,
            model,
            collection: RwLock::new(pinned),
            popularity: RwLock::new((Arc::new(Popularity::default()), 0)),
            watermark: AtomicI64::new(0),
            postgres_ok: AtomicBool::new(false),
            store_ok: AtomicBool::new(false),
            histories,
            neighbours,
            candidates,
            postgres_gate,
            vector_gate,
            degraded_log: LogThrottle::new(),
        })
    }

    /// `<strategy>@<params hash>+<git sha>`.
    pub fn model_version(&self) -> &str {
        self.model.version()
    }

    /// The variant this instance plays.
    pub fn variant(&self) -> &'static str {
        self.config.variant.as_str()
    }

    /// The last watermark seen.
    pub fn watermark(&self) -> i64 {
        self.watermark.load(Ordering::Relaxed)
    }

    /// The Postgres pool of request-path reads.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The primary's pool (the reads' pool when there is one host).
    pub fn primary(&self) -> &PgPool {
        &self.primary
    }

    /// Records the served model in `models` (model version → strategy and parameters), once per
    /// version; a failure is logged (Postgres may be down at start) and tried again at the next
    /// start.
    pub async fn register_model(&self) {
        let model = self.model.clone();
        match self
            .query_on(self.primary.clone(), self.config.deadlines.request(), None, |pool| async move {
                data::register_model(&pool, &model).await
            })
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "recording the model in `models` failed"),
            Err(_) => tracing::warn!("recording the model in `models` timed out"),
        }
    }

    /// Ready = Postgres answered, the store has the collection, a popularity list is loaded.
    pub fn readiness(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.postgres_ok.load(Ordering::Relaxed) {
            missing.push("postgres is not answering".to_string());
        }
        if !self.store_ok.load(Ordering::Relaxed) {
            missing.push(format!("the vector store ({}) has no live collection", self.store.describe()));
        }
        if self.popularity().movies.is_empty() {
            missing.push("no popularity list loaded".to_string());
        }
        if missing.is_empty() { Ok(()) } else { Err(missing.join("; ")) }
    }

    fn popularity(&self) -> Arc<Popularity> {
        self.popularity_with_run().0
    }

    fn popularity_with_run(&self) -> (Arc<Popularity>, i64) {
        self.popularity.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn collection(&self) -> Option<Arc<str>> {
        self.live().map(|l| l.name)
    }

    fn live(&self) -> Option<Live> {
        self.collection.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The item dimensions of `name`: read once when an item-weights model switches to it.
    async fn load_dims(&self, name: &str, deadline: Duration) -> Result<Option<Arc<ItemDims>>, String> {
        if !self.model.uses_items() {
            return Ok(None);
        }
        // Reading every point's payload takes longer than a request's deadline on a large
        // catalog: give it ten.
        match tokio::time::timeout(deadline * 10, self.store.digests(name)).await {
            Ok(Ok(digests)) => {
                let dims = ItemDims::from_digests(&digests);
                if dims.dims.is_empty() {
                    tracing::warn!(collection = %name, "the collection has no item weights: answers degrade until `embedder behaviour` builds one");
                } else {
                    tracing::info!(collection = %name, movies = dims.dims.len(), without = dims.without, "item dimensions loaded");
                }
                Ok(Some(Arc::new(dims)))
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("timeout reading the item dimensions".into()),
        }
    }

    /// Re-reads the watermark, the popularity list (when the watermark moved or none is
    /// loaded) and the live collection. Run by a background task every `caches.refresh_ms`.
    pub async fn refresh(&self) {
        let deadline = self.config.deadlines.request();
        match self.query(deadline, None, |pool| async move { data::watermark(&pool).await }).await {
            Ok(Ok(wm)) => {
                let before = self.watermark.fetch_max(wm, Ordering::Relaxed);
                self.metrics.watermark.set(wm.max(before));
                self.postgres_ok.store(true, Ordering::Relaxed);
                self.measure_read_lag(deadline, wm).await;
                // The list changes only when a popularity run lands: compare run ids (one tiny
                // query) instead of re-reading the list on every tick while events stream in.
                let (loaded, loaded_run) = self.popularity_with_run();
                let run =
                    match self.query(deadline, None, |pool| async move { data::popularity_run(&pool).await }).await {
                        Ok(Ok(run)) => run.unwrap_or(0),
                        _ => loaded_run,
                    };
                if loaded.movies.is_empty() || run != loaded_run {
                    match self
                        .query(deadline, None, |pool| async move {
                            data::popularity(&pool, strategy::POPULARITY_LIST as i64).await
                        })
                        .await
                    {
                        Ok(Ok((p, list_run))) if !p.movies.is_empty() => {
                            *self.popularity.write().unwrap_or_else(|p| p.into_inner()) = (Arc::new(p), list_run);
                        }
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::warn!(error = %e, "reading the popularity list failed"),
                        Err(_) => tracing::warn!("reading the popularity list timed out"),
                    }
                }
            }
            Ok(Err(e)) => {
                if self.postgres_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "postgres is not answering");
                }
            }
            Err(_) => {
                if self.postgres_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!("postgres did not answer within the request deadline");
                }
            }
        }
        let pinned = self.config.store.collection.clone();
        let live = match pinned {
            Some(name) => match tokio::time::timeout(deadline, self.store.count(&name)).await {
                Ok(Ok(_)) => Ok(Some(name)),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timeout".into()),
            },
            None => match tokio::time::timeout(deadline, self.store.live()).await {
                Ok(Ok(live)) => Ok(live),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("timeout".into()),
            },
        };
        match live {
            Ok(Some(name)) => {
                let current = self.live();
                let changed = current.as_ref().map(|l| &*l.name) != Some(name.as_str());
                let needs_dims = self.model.uses_items() && current.as_ref().is_none_or(|l| l.dims.is_none());
                if changed || needs_dims {
                    match self.load_dims(&name, deadline).await {
                        Ok(dims) => {
                            tracing::info!(collection = %name, "serving vector collection");
                            *self.collection.write().unwrap_or_else(|p| p.into_inner()) =
                                Some(Live { name: Arc::from(name.as_str()), dims });
                        }
                        Err(e) => {
                            tracing::warn!(collection = %name, error = %e, "not switching: reading the item dimensions failed");
                        }
                    }
                }
                self.store_ok.store(true, Ordering::Relaxed);
            }
            Ok(None) => self.store_ok.store(false, Ordering::Relaxed),
            Err(e) => {
                if self.store_ok.swap(false, Ordering::Relaxed) {
                    tracing::warn!(error = %e, store = %self.store.describe(), "the vector store is not answering");
                }
            }
        }
    }

    /// Warms the vector engine before the first request: the neighbour lists of the most
    /// popular movies, fetched (and cached) the way requests fetch them, so the first answer is
    /// not degraded by a cold engine (segment files mapped, index pages faulted in). Bounded by
    /// `within`; a strategy that needs no neighbours needs no warming.
    pub async fn warm(&self, within: Duration) {
        let started = Instant::now();
        if self.model.uses_items() {
            return self.warm_items(within, started).await;
        }
        let spaces = self.model.spaces();
        let Some(collection) = self.collection().filter(|_| !spaces.is_empty()) else { return };
        let popularity = self.popularity();
        let lookups = popularity.movies.iter().take(8).flat_map(|m| {
            let collection = collection.clone();
            spaces.iter().map(move |&(space, k)| self.neighbour_list(collection.clone(), space, m, k, Admit::Patiently))
        });
        match tokio::time::timeout(within, futures_util::future::join_all(lookups)).await {
            Ok(lists) => match lists.into_iter().find_map(Result::err) {
                None => tracing::info!(ms = started.elapsed().as_millis() as u64, "vector engine warm"),
                Some(e) => tracing::warn!(error = %e, "warming the vector engine failed"),
            },
            Err(_) => tracing::warn!(
                ms = within.as_millis() as u64,
                "warming the vector engine took too long; serving anyway"
            ),
        }
    }

    /// Warms an item-weights model: one search the way a request searches, for a history of
    /// the most popular movies (maps the sparse index and the payload pages in).
    async fn warm_items(&self, within: Duration, started: Instant) {
        let popularity = self.popularity();
        let history = History {
            watermark: self.watermark(),
            watched: popularity
                .movies
                .iter()
                .take(20)
                .enumerate()
                .map(|(i, m)| strategy::Watched { movie_id: m.clone(), last_event_id: -(i as i64), rating: None })
                .collect(),
        };
        if history.watched.is_empty() {
            return;
        }
        let plan = self.model.plan(&history);
        match tokio::time::timeout(within, self.item_candidates(None, &history, &plan, Admit::Patiently)).await {
            Ok(Ok(_)) => tracing::info!(ms = started.elapsed().as_millis() as u64, "vector engine warm"),
            Ok(Err(e)) => tracing::warn!(error = %e, "warming the vector engine failed"),
            Err(_) => tracing::warn!(
                ms = within.as_millis() as u64,
                "warming the vector engine took too long; serving anyway"
            ),
        }
    }

    /// The contract's rendering of `answer` (what both adapters send).
    pub fn contract_answer(&self, user_id: i64, request_id: String, answer: Answer) -> proto::contract::Answer {
        proto::contract::Answer {
            user_id,
            items: answer.items,
            model_version: self.model.version().to_string(),
            variant: self.config.variant.into(),
            assigned_variant: None,
            request_id,
            data_watermark: answer.watermark,
            kind: answer.kind,
            degraded: answer.degraded,
            data_versions: Some(answer.data_versions),
        }
    }

    /// The recommendation for `user_id`: never an error.
    pub async fn recommend(&self, user_id: i64, limit: usize) -> Answer {
        match tokio::time::timeout(self.config.deadlines.request(), self.recommend_inner(user_id, limit)).await {
            Ok(answer) => answer,
            Err(_) => self.degraded(StageError::Deadline, None, limit),
        }
    }

    async fn recommend_inner(&self, user_id: i64, limit: usize) -> Answer {
        let history = match self.history(user_id).await {
            Ok(h) => h,
            Err(e) => return self.degraded(e, None, limit),
        };
        let (popularity, run) = self.popularity_with_run();
        let plan = self.model.plan(&history);
        let (neighbours, collection) = if plan.seeds.is_empty() && plan.probe.is_empty() {
            self.metrics.store_calls.observe(0.0);
            (Neighbours::default(), None)
        } else {
            let started = Instant::now();
            let within = self.config.deadlines.vector();
            let result = if plan.items > 0 {
                tokio::time::timeout(
                    within,
                    self.item_candidates(Some(user_id), &history, &plan, Admit::Within(within)),
                )
                .await
            } else {
                tokio::time::timeout(within, self.neighbour_lists(&history, &plan, Admit::Within(within))).await
            };
            self.metrics.stage.with_label_values(&["vector_store"]).observe(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok((lists, collection, calls))) => {
                    self.metrics.store_calls.observe(f64::from(calls));
                    (lists, Some(collection))
                }
                Ok(Err(e)) => return self.degraded(e, Some(&history), limit),
                Err(_) => {
                    return self.degraded(StageError::VectorStoreTimeout, Some(&history), limit);
                }
            }
        };
        let started = Instant::now();
        let stage = Stage::Ready { history: &history, neighbours: &neighbours, collection: collection.as_deref() };
        let decision = self.model.answer(stage, &popularity, run, limit);
        if decision.kind == Kind::Personal {
            self.metrics.stage.with_label_values(&["rerank"]).observe(started.elapsed().as_secs_f64());
        }
        Answer {
            items: decision.items,
            watermark: history.watermark,
            kind: decision.kind,
            degraded: None,
            data_versions: decision.data_versions,
        }
    }

    fn degraded(&self, e: StageError, history: Option<&History>, limit: usize) -> Answer {
        self.metrics.degraded.with_label_values(&[e.metric()]).inc();
        // Under overload every request may degrade: one line per second (with the count of
        // the others), not one per request — logging must not add to the overload.
        if let Some(others) = self.degraded_log.allow() {
            tracing::warn!(reason = %e, others_since_last_line = others, "degraded answer: popularity list");
        }
        let (popularity, run) = self.popularity_with_run();
        let stage = match history {
            Some(history) => Stage::NoNeighbours(history),
            None => Stage::NoHistory,
        };
        let decision = self.model.answer(stage, &popularity, run, limit);
        Answer {
            items: decision.items,
            data_versions: decision.data_versions,
            watermark: history.map(|h| h.watermark).unwrap_or_else(|| self.watermark()),
            kind: decision.kind,
            degraded: Some(e.to_string()),
        }
    }

    /// Sets the read-lag gauge: the primary's watermark minus `read_watermark` (what the reads'
    /// host had). Answers record the watermark of the host they read, in the same snapshot as
    /// the history, so their provenance stays exact whatever the lag; the gauge says how stale.
    async fn measure_read_lag(&self, deadline: Duration, read_watermark: i64) {
        if self.primary.connect_options().get_port() == self.pool.connect_options().get_port()
            && self.primary.connect_options().get_host() == self.pool.connect_options().get_host()
        {
            self.metrics.read_lag_events.set(0);
            return;
        }
        let primary = self.primary.clone();
        if let Ok(Ok(primary_watermark)) =
            self.query_on(primary, deadline, None, |pool| async move { data::watermark(&pool).await }).await
        {
            self.metrics.read_lag_events.set((primary_watermark - read_watermark).max(0));
        }
    }

    /// Runs a Postgres query (connect included) as its own task and waits for it at most
    /// `deadline`. A late query is not cancelled: it runs to its end (bounded by the connections'
    /// `statement_timeout` and the pool's acquire timeout) and its connection stays in the pool;
    /// the admission `permit`, when there is one, is held until then.
    /// Cancelling instead drops a connect mid-handshake: Postgres forks a backend for nothing, the
    /// pool never fills, and a slow database gets a storm of new sessions (seen in a test:
    /// connects slower than the deadline → 72 sessions opened and abandoned in 8 s, no answer).
    async fn query<T, Fut>(
        &self,
        deadline: Duration,
        permit: Option<Permit>,
        query: impl FnOnce(PgPool) -> Fut,
    ) -> Result<Result<T, String>, tokio::time::error::Elapsed>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        self.query_on(self.pool.clone(), deadline, permit, query).await
    }

    /// [`Self::query`] on `pool`.
    async fn query_on<T, Fut>(
        &self,
        pool: PgPool,
        deadline: Duration,
        permit: Option<Permit>,
        query: impl FnOnce(PgPool) -> Fut,
    ) -> Result<Result<T, String>, tokio::time::error::Elapsed>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'static,
    {
        let running = query(pool);
        let task = tokio::spawn(async move {
            let result = running.await;
            drop(permit);
            result
        });
        tokio::time::timeout(deadline, task).await.map(|joined| match joined {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(e) => Err(format!("query task: {e}")),
        })
    }

    async fn history(&self, user_id: i64) -> Result<Arc<History>, StageError> {
        let current = self.watermark();
        if let Some(h) = self.histories.get(&user_id).await
            && h.watermark >= current
        {
            self.metrics.cache_lookup("user_history", true);
            return Ok(h);
        }
        self.metrics.cache_lookup("user_history", false);
        let started = Instant::now();
        let deadline = self.config.deadlines.postgres();
        let permit = match self.postgres_gate.admit(deadline).await {
            Ok(permit) => permit,
            Err(refused) => return Err(StageError::PostgresShed(refused)),
        };
        let result = self
            .query(deadline.saturating_sub(started.elapsed()), Some(permit), |pool| async move {
                data::history(&pool, user_id).await
            })
            .await;
        self.metrics.stage.with_label_values(&["postgres"]).observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(h)) => {
                self.watermark.fetch_max(h.watermark, Ordering::Relaxed);
                let h = Arc::new(h);
                self.histories.insert(user_id, h.clone()).await;
                Ok(h)
            }
            Ok(Err(e)) => Err(StageError::Postgres(e)),
            Err(_) => Err(StageError::PostgresTimeout),
        }
    }

    /// An item-weights plan's candidates (one admission slot, at most two store calls; none
    /// when `user`'s candidates for this history are cached), the collection they came from and
    /// the store calls made.
    async fn item_candidates(
        &self,
        user: Option<i64>,
        history: &History,
        plan: &Plan,
        admit: Admit,
    ) -> Result<(Neighbours, Arc<str>, u32), StageError> {
        let Some(live) = self.live() else {
            return Err(StageError::NoCollection);
        };
        let dims = match &live.dims {
            Some(dims) if !dims.dims.is_empty() => dims.clone(),
            _ => return Err(StageError::NoItemWeights(live.name.to_string())),
        };
        let key = user.map(|u| (live.name.clone(), u, history.watermark));
        if let Some(key) = &key {
            let cached = self.candidates.get(key).await;
            self.metrics.cache_lookup("item_candidates", cached.is_some());
            if let Some(found) = cached {
                let neighbours =
                    Neighbours { items: found.weighted.clone(), fresh: found.fresh.clone(), ..Neighbours::default() };
                return Ok((neighbours, live.name, 0));
            }
        }
        let permit = self.admit_vector(admit).await?;
        let (store, search, collection) = (self.store.clone(), self.model.search(), live.name.clone());
        let (history, plan) = (history.clone(), plan.clone());
        // A detached task holding the slot (as for neighbour lists): a search past the deadline
        // still ends before its slot is given back, so overload cannot pile searches up.
        let fetch = tokio::spawn(async move {
            let _permit = permit;
            strategy::fetch::item_candidates(store.as_ref(), &collection, &dims, &history, &plan, search).await
        });
        let found = fetch
            .await
            .map_err(|e| StageError::VectorStore(format!("task: {e}")))?
            .map_err(|e| StageError::VectorStore(e.to_string()))?;
        if let Some(key) = key {
            self.candidates.insert(key, Arc::new(found.clone())).await;
        }
        let neighbours = Neighbours { items: found.weighted, fresh: found.fresh, ..Neighbours::default() };
        Ok((neighbours, live.name, found.calls))
    }

    /// A slot of the vector stage, as `admit` says to wait for it.
    async fn admit_vector(&self, admit: Admit) -> Result<Permit, StageError> {
        match admit {
            Admit::Within(wait) => self.vector_gate.admit(wait).await,
            Admit::Patiently => self.vector_gate.admit_patiently().await,
        }
        .map_err(StageError::VectorStoreShed)
    }

    /// The plan's neighbour lists, the collection they came from and the store calls made.
    async fn neighbour_lists(
        &self,
        history: &History,
        plan: &Plan,
        admit: Admit,
    ) -> Result<(Neighbours, Arc<str>, u32), StageError> {
        let Some(collection) = self.collection() else {
            return Err(StageError::NoCollection);
        };
        let mut calls = 0;
        let mut out = Neighbours::default();
        for (space, k) in plan.spaces() {
            // A bounded number of lookups at a time: a long history must not fill the vector
            // stage's queue on its own (its cold lists would be shed and the answer degraded).
            let lookups: Vec<_> = plan
                .seeds
                .iter()
                .map(|&i| self.neighbour_list(collection.clone(), space, &history.watched[i].movie_id, k, admit))
                .collect();
            let lists: Vec<_> = futures_util::stream::iter(lookups).buffered(LOOKUPS_PER_REQUEST).collect().await;
            let lists: Vec<(Arc<Vec<Hit>>, u32)> = lists.into_iter().collect::<Result<_, _>>()?;
            calls += lists.iter().map(|(_, c)| c).sum::<u32>();
            let lists = lists.into_iter().map(|(l, _)| l).collect();
            match space {
                Space::Content => out.content = lists,
                Space::Behaviour => out.behaviour = lists,
            }
        }
        Ok((out, collection, calls))
    }

    async fn neighbour_list(
        &self,
        collection: Arc<str>,
        space: Space,
        movie_id: &str,
        k: usize,
        admit: Admit,
    ) -> Result<(Arc<Vec<Hit>>, u32), StageError> {
        let id = point_id(movie_id);
        let key = (collection.clone(), space, id);
        if let Some(hit) = self.neighbours.get(&key).await {
            self.metrics.cache_lookup("neighbours", true);
            return Ok((hit, 0));
        }
        self.metrics.cache_lookup("neighbours", false);
        let permit = self.admit_vector(admit).await?;
        let store = self.store.clone();
        let search = self.model.search();
        let cache = self.neighbours.clone();
        // A detached task holding the slot: when the request's deadline passes, the search still
        // finishes and fills the cache, so a cold cache warms up even under pressure.
        let fetch = tokio::spawn(async move {
            let _permit = permit;
            cache
                .try_get_with(key, async move {
                    vectorstore::neighbours_of(store.as_ref(), &collection, space, id, k, search.exact, search.ef)
                        .await
                        .map(Arc::new)
                })
                .await
        });
        // A list is a point lookup and a search: two calls (another request may have fetched
        // it meanwhile; counted anyway).
        fetch
            .await
            .map_err(|e| StageError::VectorStore(format!("task: {e}")))?
            .map(|list| (list, 2))
            .map_err(|e| StageError::VectorStore(e.to_string()))
    }
}
