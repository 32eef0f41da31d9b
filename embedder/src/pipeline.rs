//! Catalog → texts → vectors → store, resumable; a live collection is never modified.
//!
//! A run computes the collection name for (model, template, HNSW graph, behaviour version,
//! catalog snapshot). When that collection is already live there is nothing to do. Otherwise it
//! is filled batch by batch (only new and changed texts go through the model: vectors are cached
//! in Postgres by (model, text hash)), indexed, counted, and only then made live. So a
//! collection name pins its vectors: a past answer records the name it searched
//! (`recommendations_history.inputs.data_versions`) and a replay searches the same points.
//!
//! After a switch the previous live collection is kept (for rollback), and so is every
//! collection history refers to (state `retained`, until `lazyrec-provenance prune` drops
//! what only pruned history referred to); older ones are dropped. A killed run leaves a
//! collection that is not live; the next run fills it again (vectors come from the cache).
//! A collection that was live before (e.g. the catalog went back to an earlier snapshot) is
//! switched to as it is, never rewritten.
//!
//! A collection may also hold **behaviour vectors** (the `behaviour` named vector, from
//! [`crate::behaviour`]): a run given new ones builds a new collection with them; a run given
//! none carries the live collection's over (movies new to the catalog get none until the next
//! behaviour run). The collection name is `movies_<model>_<template>_<hnsw>_<behaviour>_<catalog>`,
//! so content model, template, HNSW graph parameters and behaviour version all force a new
//! collection when they change.
//!
//! The same job may also give **item weights** (`behaviour::items`, EASE / EDLAE): each movie in
//! the item model gets a dimension (payload `item_dim`) and the sparse `items` vector
//! `{dim(i): B[i, j]}`. They are part of the behaviour version (`<svd>.<ease>-w<watermark>`), so
//! new weights make a new collection, and content runs carry them over like the vectors.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use crate::model::{Model, ModelError};
use crate::text::{MovieFields, TEMPLATE_VERSION, movie_text, text_hash};
use vectorstore::point_id;
use vectorstore::{CollectionSpec, Hnsw, MoviePoint, Space, SparseVector, StoreError, VectorStore};

/// Behaviour vectors to store next to the content vectors.
#[derive(Debug, Clone, PartialEq)]
pub struct BehaviourVectors {
    /// `<algorithm + params hash>-w<watermark>`: names them in the collection name.
    pub version: String,
    /// Their dimension.
    pub dim: usize,
    /// By course movie id (movies without one have too few interactions).
    pub by_movie: HashMap<String, Vec<f32>>,
    /// Item weights by course movie id (empty: the collection gets no item-weights space).
    pub items: HashMap<String, ItemEntry>,
}

/// One movie's part of the item model.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemEntry {
    /// Its dimension (it has a row of weights: it says something about others).
    pub dim: Option<u32>,
    /// Its sparse vector `{dim(i): B[i, j]}` (others say something about it).
    pub vector: Option<SparseVector>,
}

/// The behaviour part of a collection name: `b<version>`, or `b0` without behaviour vectors.
fn behaviour_tag(version: Option<&str>) -> String {
    format!("b{}", version.unwrap_or("0"))
}

/// The behaviour version a collection name carries, if any.
pub fn behaviour_version(collection: &str) -> Option<&str> {
    let mut parts = collection.rsplitn(3, '_');
    let _catalog = parts.next()?;
    let tag = parts.next()?.strip_prefix('b')?;
    (tag != "0" && !tag.is_empty()).then_some(tag)
}

/// Failures of an embed run.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// Postgres.
    #[error("database error while {context}: {source}")]
    Db {
        /// What we were doing.
        context: &'static str,
        /// Why.
        #[source]
        source: sqlx::Error,
    },
    /// The vector store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Two movie ids hash to the same point id (never seen; checked anyway).
    #[error("point id collision between {0} and {1}")]
    IdCollision(String, String),
    /// The finished collection does not hold what it should.
    #[error("collection {name} holds {found} points, expected {expected}")]
    Incomplete {
        /// Collection.
        name: String,
        /// Points found.
        found: u64,
        /// Movies in the catalog.
        expected: u64,
    },
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> EmbedError {
    move |source| EmbedError::Db { context, source }
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedReport {
    /// The collection written.
    pub collection: String,
    /// Whether a new collection became live.
    pub switched: bool,
    /// Movies in the catalog.
    pub movies: u64,
    /// Texts run through the model.
    pub embedded: u64,
    /// Vectors taken from the cache.
    pub cached: u64,
    /// Points written.
    pub upserted: u64,
    /// Movies new or changed since the previously live collection (all of them without one).
    pub changed: u64,
    /// Movies of the previously live collection gone from the catalog.
    pub gone: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl EmbedReport {
    /// One line for humans.
    pub fn render(&self) -> String {
        format!(
            "{}: {} movies ({} new or changed, {} gone), {} embedded ({:.0}/s), {} from cache, {} written{} in {:.1}s",
            self.collection,
            self.movies,
            self.changed,
            self.gone,
            self.embedded,
            self.embedded as f64 / self.elapsed.as_secs_f64().max(1e-9),
            self.cached,
            self.upserted,
            if self.switched { ", now live" } else { ", already live" },
            self.elapsed.as_secs_f64()
        )
    }
}

/// A catalog movie with its text.
struct Item {
    fields: MovieFields,
    text: String,
    hash: String,
    id: u64,
}

async fn load_catalog(pool: &PgPool) -> Result<Vec<Item>, EmbedError> {
    let rows: Vec<MovieFields> = sqlx::query_as(
        "SELECT movie_id, title, year, genres, overview, tagline, keywords FROM movies ORDER BY movie_id",
    )
    .fetch_all(pool)
    .await
    .map_err(db("reading the catalog"))?;
    let mut seen: HashMap<u64, String> = HashMap::with_capacity(rows.len());
    let mut items = Vec::with_capacity(rows.len());
    for fields in rows {
        let text = movie_text(&fields);
        let id = point_id(&fields.movie_id);
        if let Some(other) = seen.insert(id, fields.movie_id.clone()) {
            return Err(EmbedError::IdCollision(other, fields.movie_id));
        }
        items.push(Item { hash: text_hash(&text), text, id, fields });
    }
    Ok(items)
}

/// The collection name for this model, template, HNSW graph, behaviour version and catalog.
pub fn collection_name(
    model_id: &str,
    hnsw: &Hnsw,
    behaviour: Option<&str>,
    items_hashes: impl Iterator<Item = (String, String)>,
) -> String {
    let mut h = Sha256::new();
    for (movie_id, hash) in items_hashes {
        h.update(movie_id.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
        h.update([b'\n']);
    }
    let catalog = hex::encode(&h.finalize()[..4]);
    format!("{}{}_{}_{catalog}", content_family(model_id), hnsw.tag(), behaviour_tag(behaviour))
}

/// The start of the names of collections whose content vectors this model and template made.
fn content_family(model_id: &str) -> String {
    let model: String = model_id.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("movies_{model}_{TEMPLATE_VERSION}_")
}

/// The embedder: a model, a store and the database.
pub struct Embedder<'a> {
    /// Postgres (catalog, cache, collection history).
    pub pool: &'a PgPool,
    /// The vector store.
    pub store: &'a dyn VectorStore,
    /// The model.
    pub model: &'a mut Model,
    /// Draw a progress bar.
    pub progress: bool,
    /// Movies per embed-and-upsert step (a crash loses at most one step's work).
    pub chunk: usize,
    /// The HNSW graph parameters of new collections.
    pub hnsw: Hnsw,
    /// New behaviour vectors (a new collection is built with them); `None` keeps the live
    /// collection's.
    pub behaviour: Option<BehaviourVectors>,
}

impl Embedder<'_> {
    /// Makes the collection for the current catalog live (building it if needed) and returns
    /// what happened.
    pub async fn run(&mut self) -> Result<EmbedReport, EmbedError> {
        let started = Instant::now();
        let items = load_catalog(self.pool).await?;
        let live = self.store.live().await?;
        if self.behaviour.is_none()
            && let Some(live) = &live
        {
            self.behaviour = self.live_behaviour(live).await?;
        }
        let name = collection_name(
            self.model.id(),
            &self.hnsw,
            self.behaviour.as_ref().map(|b| b.version.as_str()),
            items.iter().map(|i| (i.fields.movie_id.clone(), i.hash.clone())),
        );
        let mut report = if live.as_deref() == Some(name.as_str()) {
            EmbedReport { collection: name, ..EmbedReport::default() }
        } else {
            let mut report = self.build(&name, &items).await?;
            if let Some(live) = &live {
                (report.changed, report.gone) = self.changes_since(live, &items).await?;
            } else {
                report.changed = items.len() as u64;
            }
            report
        };
        report.movies = items.len() as u64;
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Movies new or changed, and movies gone, against collection `before` (by text hash). A
    /// collection of another model or template counts every movie as changed.
    async fn changes_since(&self, before: &str, items: &[Item]) -> Result<(u64, u64), EmbedError> {
        let stored: HashMap<u64, String> = if before.starts_with(&content_family(self.model.id())) {
            self.store.digests(before).await?.into_iter().map(|d| (d.id, d.text_hash)).collect()
        } else {
            HashMap::new()
        };
        let changed = items.iter().filter(|i| stored.get(&i.id) != Some(&i.hash)).count() as u64;
        let current: std::collections::HashSet<u64> = items.iter().map(|i| i.id).collect();
        let gone = stored.keys().filter(|id| !current.contains(id)).count() as u64;
        Ok((changed, gone))
    }

    /// The behaviour vectors and item weights of the live collection (to keep them through
    /// this run).
    async fn live_behaviour(&self, live: &str) -> Result<Option<BehaviourVectors>, EmbedError> {
        let Some(version) = behaviour_version(live) else { return Ok(None) };
        let digests = self.store.digests(live).await?;
        let movie_of: HashMap<u64, String> = digests.iter().map(|d| (d.id, d.movie_id.clone())).collect();
        let ids: Vec<u64> = digests.iter().map(|d| d.id).collect();
        let mut by_movie = HashMap::new();
        let mut items: HashMap<String, ItemEntry> = digests
            .iter()
            .filter_map(|d| Some((d.movie_id.clone(), ItemEntry { dim: Some(d.item_dim?), vector: None })))
            .collect();
        let mut dim = 0;
        for chunk in ids.chunks(1_000) {
            for (id, v) in self.store.vectors(live, Space::Behaviour, chunk).await? {
                dim = v.len();
                if let Some(m) = movie_of.get(&id) {
                    by_movie.insert(m.clone(), v);
                }
            }
            for (id, v) in self.store.item_vectors(live, chunk).await? {
                if let Some(m) = movie_of.get(&id) {
                    items.entry(m.clone()).or_insert(ItemEntry { dim: None, vector: None }).vector = Some(v);
                }
            }
        }
        Ok((!by_movie.is_empty() || !items.is_empty()).then(|| BehaviourVectors {
            version: version.to_string(),
            dim,
            by_movie,
            items,
        }))
    }

    /// Fills collection `name` (unless it was live before: then it is complete and is not
    /// rewritten) and switches to it.
    async fn build(&mut self, name: &str, items: &[Item]) -> Result<EmbedReport, EmbedError> {
        let mut report = EmbedReport { collection: name.to_string(), ..EmbedReport::default() };
        let expected = items.len() as u64;
        let was_live: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM embedding_collections WHERE name = $1 AND live_at IS NOT NULL AND state <> 'dropped')",
        )
        .bind(name)
        .fetch_one(self.pool)
        .await
        .map_err(db("reading the collection history"))?;
        let reusable = was_live
            && self.store.collections().await?.iter().any(|c| c == name)
            && self.store.count(name).await? == expected;
        if !reusable {
            let dim = self.model.dim();
            sqlx::query(
                "INSERT INTO embedding_collections (name, store, model, template, catalog_hash, dim) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (name) DO UPDATE SET updated_at = now()",
            )
            .bind(name)
            .bind(self.store.describe())
            .bind(self.model.id())
            .bind(TEMPLATE_VERSION)
            .bind(name.rsplit('_').next().unwrap_or_default())
            .bind(dim as i32)
            .execute(self.pool)
            .await
            .map_err(db("recording the collection"))?;
            let spec = CollectionSpec {
                content_dim: dim,
                behaviour_dim: self.behaviour.as_ref().filter(|b| !b.by_movie.is_empty()).map(|b| b.dim),
                items: self.behaviour.as_ref().is_some_and(|b| !b.items.is_empty()),
                hnsw: self.hnsw,
            };
            self.store.create_collection(name, &spec).await?;
            let todo: Vec<&Item> = items.iter().collect();
            self.embed_and_upsert(name, &todo, &mut report).await?;
            self.store.finish_bulk_load(name).await?;
            let found = self.store.count(name).await?;
            if found != expected {
                return Err(EmbedError::Incomplete { name: name.into(), found, expected });
            }
        }
        let previous = self.store.live().await?;
        self.store.set_live(name).await?;
        report.switched = true;
        // Collections past answers read stay (a replay searches them): never dropped here.
        let stored: Vec<String> =
            self.store.collections().await?.into_iter().filter(|c| c.starts_with("movies_")).collect();
        let referenced = db::retention::referenced_collections(self.pool, &stored, None)
            .await
            .map_err(db("finding the collections history refers to"))?;
        sqlx::query(
            "UPDATE embedding_collections SET state = CASE WHEN name = $1 THEN 'live' WHEN name = $2 THEN 'previous'
                                                       WHEN name = ANY($5) THEN 'retained' ELSE 'dropped' END,
               live_at = CASE WHEN name = $1 THEN now() ELSE live_at END, points = CASE WHEN name = $1 THEN $3 ELSE points END,
               updated_at = now()
             WHERE store = $4 AND (name = $1 OR state IN ('live', 'previous', 'retained'))",
        )
        .bind(name)
        .bind(previous.as_deref().unwrap_or(""))
        .bind(expected as i32)
        .bind(self.store.describe())
        .bind(&referenced)
        .execute(self.pool)
        .await
        .map_err(db("recording the switch"))?;
        // Keep the live and the previous collection and those history refers to; drop older
        // ones and abandoned partial builds.
        for other in stored {
            if other != name && Some(&other) != previous.as_ref() && !referenced.contains(&other) {
                self.store.drop_collection(&other).await?;
            }
        }
        Ok(report)
    }

    async fn embed_and_upsert(
        &mut self,
        collection: &str,
        todo: &[&Item],
        report: &mut EmbedReport,
    ) -> Result<(), EmbedError> {
        let bar = if self.progress && !todo.is_empty() {
            ProgressBar::with_draw_target(Some(todo.len() as u64), ProgressDrawTarget::stderr()).with_style(
                ProgressStyle::with_template(
                    "{spinner} embed [{elapsed_precise}] {wide_bar} {pos}/{len} movies ({per_sec}, eta {eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            )
        } else {
            ProgressBar::hidden()
        };
        let model_id = self.model.id().to_string();
        for chunk in todo.chunks(self.chunk.max(1)) {
            let hashes: Vec<String> = chunk.iter().map(|i| i.hash.clone()).collect();
            let cached: Vec<(String, Vec<f32>)> = sqlx::query_as(
                "SELECT text_hash, vector FROM embedding_cache WHERE model = $1 AND text_hash = ANY($2)",
            )
            .bind(&model_id)
            .bind(&hashes)
            .fetch_all(self.pool)
            .await
            .map_err(db("reading the vector cache"))?;
            let mut vectors: HashMap<String, Vec<f32>> = cached.into_iter().collect();
            report.cached += chunk.iter().filter(|i| vectors.contains_key(&i.hash)).count() as u64;
            let missing: Vec<&Item> = chunk.iter().copied().filter(|i| !vectors.contains_key(&i.hash)).collect();
            if !missing.is_empty() {
                let texts: Vec<String> = missing.iter().map(|i| i.text.clone()).collect();
                let fresh = self.model.embed(&texts)?;
                report.embedded += fresh.len() as u64;
                let mut tx = self.pool.begin().await.map_err(db("writing the vector cache"))?;
                for (item, v) in missing.iter().zip(&fresh) {
                    sqlx::query(
                        "INSERT INTO embedding_cache (model, text_hash, vector) VALUES ($1, $2, $3) ON CONFLICT (model, text_hash) DO NOTHING",
                    )
                    .bind(&model_id)
                    .bind(&item.hash)
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("writing the vector cache"))?;
                }
                tx.commit().await.map_err(db("writing the vector cache"))?;
                for (item, v) in missing.iter().zip(fresh) {
                    vectors.insert(item.hash.clone(), v);
                }
            }
            let points: Vec<MoviePoint> = chunk
                .iter()
                .filter_map(|i| {
                    let items = self.behaviour.as_ref().and_then(|b| b.items.get(&i.fields.movie_id));
                    Some(MoviePoint {
                        id: i.id,
                        vector: vectors.get(&i.hash)?.clone(),
                        behaviour: self.behaviour.as_ref().and_then(|b| b.by_movie.get(&i.fields.movie_id)).cloned(),
                        item_dim: items.and_then(|e| e.dim),
                        items: items.and_then(|e| e.vector.clone()),
                        movie_id: i.fields.movie_id.clone(),
                        title: i.fields.title.clone(),
                        year: i.fields.year,
                        genres: i.fields.genres.clone(),
                        text_hash: i.hash.clone(),
                    })
                })
                .collect();
            report.upserted += points.len() as u64;
            self.store.upsert(collection, points).await?;
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        Ok(())
    }
}
