//! The embedded store: qdrant-edge shards in a directory.
//!
//! ```text
//! <root>/collections/<name>/   one EdgeShard per collection
//! <root>/LIVE                  the live collection's name (replaced by an atomic rename)
//! ```
//!
//! qdrant-edge is synchronous; every call runs on tokio's blocking pool.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use qdrant_edge::external::serde_json::{Value, json};
use qdrant_edge::{
    AnyVariants, Condition, CountRequest, CreateIndex, DEFAULT_VECTOR_NAME, Distance, EdgeConfig, EdgeShard,
    EdgeSparseVectorParams, EdgeVectorParams, FieldCondition, FieldIndexOperations, Filter, HasIdCondition,
    HasVectorCondition, HnswIndexConfig, JsonPath, Match, MatchAny, NamedQuery, PayloadFieldSchema, PayloadSchemaType,
    PointId, PointInsertOperations, PointOperations, PointStruct, QueryEnum, ScrollRequest, SearchParams,
    SearchRequest, UpdateOperation, Vector, VectorInternal, VectorStructInternal, WithPayloadInterface, WithVector,
};

use super::{
    CollectionSpec, Hit, ITEMS, ItemsHits, ItemsQuery, MoviePoint, PointDigest, SearchFilter, Space, SparseVector,
    StoreError, VectorStore,
};

const ENGINE: &str = "qdrant-edge";

fn engine(operation: &'static str) -> impl FnOnce(qdrant_edge::OperationError) -> StoreError {
    move |e| StoreError::Engine { engine: ENGINE, operation, detail: e.to_string() }
}

/// qdrant-edge collections under one directory.
pub struct EdgeStore {
    root: PathBuf,
    open: Mutex<HashMap<String, Arc<EdgeShard>>>,
}

impl std::fmt::Debug for EdgeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStore").field("root", &self.root).finish()
    }
}

impl EdgeStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        let collections = root.join("collections");
        std::fs::create_dir_all(&collections).map_err(|source| StoreError::Io {
            operation: "creating the store directory",
            path: collections,
            source,
        })?;
        Ok(Self { root: root.to_path_buf(), open: Mutex::new(HashMap::new()) })
    }

    fn dir(&self, name: &str) -> PathBuf {
        self.root.join("collections").join(name)
    }

    fn shard(&self, name: &str) -> Result<Arc<EdgeShard>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(shard) = open.get(name) {
            return Ok(shard.clone());
        }
        let dir = self.dir(name);
        if !dir.join("edge_config.json").is_file() {
            return Err(StoreError::NoSuchCollection(name.to_string()));
        }
        let shard = Arc::new(EdgeShard::load(&dir, None).map_err(engine("opening a collection"))?);
        open.insert(name.to_string(), shard.clone());
        Ok(shard)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce(&EdgeShard) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let shard = self.shard(name)?;
        tokio::task::spawn_blocking(move || f(&shard)).await.map_err(|e| StoreError::Engine {
            engine: ENGINE,
            operation: "blocking task",
            detail: e.to_string(),
        })?
    }
}

/// A JSON path from one of our constant field names (all valid).
fn path(field: &str) -> JsonPath {
    field.parse().unwrap_or_else(|()| unreachable!("{field} is a valid JSON path"))
}

fn point_id(id: &PointId) -> Option<u64> {
    match id {
        PointId::NumId(n) => Some(*n),
        PointId::Uuid(_) => None,
    }
}

fn payload_str(payload: Option<&qdrant_edge::Payload>, key: &str) -> String {
    payload.and_then(|p| p.0.get(key)).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn payload_u32(payload: Option<&qdrant_edge::Payload>, key: &str) -> Option<u32> {
    payload.and_then(|p| p.0.get(key)).and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok())
}

fn sparse(vector: Option<VectorStructInternal>) -> Option<SparseVector> {
    match vector? {
        VectorStructInternal::Named(mut named) => match named.remove(ITEMS)? {
            VectorInternal::Sparse(v) => Some(SparseVector { entries: v.indices.into_iter().zip(v.values).collect() }),
            VectorInternal::Dense(_) | VectorInternal::MultiDense(_) => None,
        },
        VectorStructInternal::Single(_) | VectorStructInternal::MultiDense(_) => None,
    }
}

fn engine_sparse(v: &SparseVector) -> Result<qdrant_edge::SparseVector, StoreError> {
    let (indices, values) = v.split();
    qdrant_edge::SparseVector::new(indices, values).map_err(|e| StoreError::Engine {
        engine: ENGINE,
        operation: "building a sparse vector",
        detail: e.to_string(),
    })
}

fn hits(points: Vec<qdrant_edge::ScoredPoint>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = points
        .into_iter()
        .filter_map(|p| {
            Some(Hit { id: point_id(&p.id)?, movie_id: payload_str(p.payload.as_ref(), "movie_id"), score: p.score })
        })
        .collect();
    super::sort_hits(&mut hits);
    hits
}

/// The name of `space`'s vector in a collection, if it has one. Collections made before named
/// vectors hold the content vector under the default (empty) name.
fn vector_name(shard: &EdgeShard, space: Space) -> Option<String> {
    let config = shard.config();
    if config.vectors.contains_key(space.name()) {
        return Some(space.name().to_string());
    }
    (space == Space::Content && config.vectors.contains_key(DEFAULT_VECTOR_NAME))
        .then(|| DEFAULT_VECTOR_NAME.to_string())
}

fn dense(vector: Option<VectorStructInternal>, name: &str) -> Option<Vec<f32>> {
    match vector? {
        VectorStructInternal::Single(v) => Some(v),
        VectorStructInternal::Named(mut named) => match named.remove(name)? {
            VectorInternal::Dense(v) => Some(v),
            VectorInternal::Sparse(_) | VectorInternal::MultiDense(_) => None,
        },
        VectorStructInternal::MultiDense(_) => None,
    }
}

/// The filter for a search.
pub(crate) fn edge_filter(filter: &SearchFilter) -> Option<Filter> {
    let mut must = Vec::new();
    let mut must_not = Vec::new();
    if !filter.any_genre.is_empty() {
        must.push(Condition::Field(FieldCondition::new_match(
            path("genres"),
            Match::Any(MatchAny { any: AnyVariants::Strings(filter.any_genre.iter().cloned().collect()) }),
        )));
    }
    if !filter.exclude_ids.is_empty() {
        let ids: HasIdCondition = filter.exclude_ids.iter().map(|id| PointId::NumId(*id)).collect();
        must_not.push(Condition::HasId(ids));
    }
    if must.is_empty() && must_not.is_empty() {
        return None;
    }
    Some(Filter {
        must: (!must.is_empty()).then_some(must),
        must_not: (!must_not.is_empty()).then_some(must_not),
        ..Filter::default()
    })
}

#[async_trait]
impl VectorStore for EdgeStore {
    fn describe(&self) -> String {
        format!("edge:{}", self.root.display())
    }

    async fn collections(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("collections");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|source| StoreError::Io { operation: "listing collections", path: dir, source })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("edge_config.json").is_file())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    async fn create_collection(&self, name: &str, spec: &CollectionSpec) -> Result<(), StoreError> {
        let dir = self.dir(name);
        if dir.join("edge_config.json").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            operation: "creating a collection",
            path: dir.clone(),
            source,
        })?;
        let hnsw = HnswIndexConfig {
            m: spec.hnsw.m,
            ef_construct: spec.hnsw.ef_construct,
            full_scan_threshold: spec.hnsw.full_scan_kb,
            ..HnswIndexConfig::default()
        };
        let params = |dim: usize| EdgeVectorParams::builder(dim, Distance::Cosine).hnsw_config(hnsw).build();
        let mut config =
            EdgeConfig::builder().hnsw_config(hnsw).vector(Space::Content.name(), params(spec.content_dim));
        if let Some(dim) = spec.behaviour_dim {
            config = config.vector(Space::Behaviour.name(), params(dim));
        }
        if spec.items {
            config = config.sparse_vector(ITEMS, EdgeSparseVectorParams::builder().build());
        }
        let config = config.build();
        let shard = tokio::task::spawn_blocking(move || -> Result<EdgeShard, StoreError> {
            let shard = EdgeShard::new(&dir, config).map_err(engine("creating a collection"))?;
            for (field, kind) in [
                ("genres", PayloadSchemaType::Keyword),
                ("year", PayloadSchemaType::Integer),
                ("movie_id", PayloadSchemaType::Keyword),
            ] {
                shard
                    .update(UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: path(field),
                        field_schema: Some(PayloadFieldSchema::FieldType(kind)),
                    })))
                    .map_err(engine("creating a payload index"))?;
            }
            shard.flush();
            Ok(shard)
        })
        .await
        .map_err(|e| StoreError::Engine {
            engine: ENGINE,
            operation: "blocking task",
            detail: e.to_string(),
        })??;
        self.open.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), Arc::new(shard));
        Ok(())
    }

    async fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        let dir = self.dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StoreError::Io { operation: "dropping a collection", path: dir, source }),
        }
    }

    async fn upsert(&self, collection: &str, points: Vec<MoviePoint>) -> Result<(), StoreError> {
        self.blocking(collection, move |shard| {
            let points = points
                .into_iter()
                .map(|p| {
                    let mut payload = json!({
                        "movie_id": p.movie_id, "title": p.title, "year": p.year,
                        "genres": p.genres, "text_hash": p.text_hash,
                    });
                    if let (Some(dim), Some(map)) = (p.item_dim, payload.as_object_mut()) {
                        map.insert("item_dim".into(), json!(dim));
                    }
                    let mut vectors = HashMap::from([(Space::Content.name().to_string(), Vector::new_dense(p.vector))]);
                    if let Some(b) = p.behaviour {
                        vectors.insert(Space::Behaviour.name().to_string(), Vector::new_dense(b));
                    }
                    if let Some(items) = p.items.filter(|v| !v.entries.is_empty()) {
                        vectors.insert(ITEMS.to_string(), Vector(VectorInternal::Sparse(engine_sparse(&items)?)));
                    }
                    Ok(PointStruct::new(PointId::NumId(p.id), vectors, payload).into())
                })
                .collect::<Result<_, StoreError>>()?;
            shard
                .update(UpdateOperation::PointOperation(PointOperations::UpsertPoints(
                    PointInsertOperations::PointsList(points),
                )))
                .map_err(engine("upsert"))?;
            shard.flush();
            Ok(())
        })
        .await
    }

    async fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<(), StoreError> {
        self.blocking(collection, move |shard| {
            let ids = ids.into_iter().map(PointId::NumId).collect();
            shard
                .update(UpdateOperation::PointOperation(PointOperations::DeletePoints { ids }))
                .map_err(engine("delete"))?;
            shard.flush();
            Ok(())
        })
        .await
    }

    async fn finish_bulk_load(&self, collection: &str) -> Result<(), StoreError> {
        self.blocking(collection, |shard| {
            shard.optimize().map_err(engine("building the index"))?;
            shard.flush();
            Ok(())
        })
        .await
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        self.blocking(collection, |shard| {
            let n = shard.count(CountRequest { filter: None, exact: true }).map_err(engine("count"))?;
            Ok(n as u64)
        })
        .await
    }

    async fn digests(&self, collection: &str) -> Result<Vec<PointDigest>, StoreError> {
        self.blocking(collection, |shard| {
            let mut out = Vec::new();
            let mut offset = None;
            loop {
                let (records, next) = shard
                    .scroll(ScrollRequest {
                        offset,
                        limit: Some(1_000),
                        filter: None,
                        with_payload: Some(WithPayloadInterface::Bool(true)),
                        with_vector: WithVector::Bool(false),
                        order_by: None,
                    })
                    .map_err(engine("scroll"))?;
                for r in records {
                    if let Some(id) = point_id(&r.id) {
                        out.push(PointDigest {
                            id,
                            movie_id: payload_str(r.payload.as_ref(), "movie_id"),
                            text_hash: payload_str(r.payload.as_ref(), "text_hash"),
                            item_dim: payload_u32(r.payload.as_ref(), "item_dim"),
                        });
                    }
                }
                match next {
                    Some(n) => offset = Some(n),
                    None => return Ok(out),
                }
            }
        })
        .await
    }

    async fn vectors(&self, collection: &str, space: Space, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::NumId(*id)).collect();
        self.blocking(collection, move |shard| {
            let Some(name) = vector_name(shard, space) else { return Ok(Vec::new()) };
            let records = shard
                .retrieve(&ids, Some(WithPayloadInterface::Bool(false)), Some(WithVector::Selector(vec![name.clone()])))
                .map_err(engine("retrieve"))?;
            Ok(records.into_iter().filter_map(|r| Some((point_id(&r.id)?, dense(r.vector, &name)?))).collect())
        })
        .await
    }

    async fn search(
        &self,
        collection: &str,
        space: Space,
        vector: Vec<f32>,
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        let (exact, ef) = (filter.exact, filter.ef);
        let filter = edge_filter(filter);
        self.blocking(collection, move |shard| {
            let Some(name) = vector_name(shard, space) else { return Ok(Vec::new()) };
            let using = (name != DEFAULT_VECTOR_NAME).then_some(name);
            let found = shard
                .search(SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery { query: VectorInternal::Dense(vector), using }),
                    filter,
                    params: (exact || ef.is_some()).then(|| SearchParams {
                        exact,
                        hnsw_ef: ef,
                        ..SearchParams::default()
                    }),
                    limit,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Fields(vec![path("movie_id")])),
                    with_vector: None,
                    score_threshold: None,
                })
                .map_err(engine("search"))?;
            Ok(hits(found))
        })
        .await
    }

    async fn item_vectors(&self, collection: &str, ids: &[u64]) -> Result<Vec<(u64, SparseVector)>, StoreError> {
        let ids: Vec<PointId> = ids.iter().map(|id| PointId::NumId(*id)).collect();
        self.blocking(collection, move |shard| {
            if !shard.config().sparse_vectors.contains_key(ITEMS) {
                return Ok(Vec::new());
            }
            let records = shard
                .retrieve(&ids, Some(WithPayloadInterface::Bool(false)), Some(WithVector::Selector(vec![ITEMS.into()])))
                .map_err(engine("retrieve"))?;
            Ok(records.into_iter().filter_map(|r| Some((point_id(&r.id)?, sparse(r.vector)?))).collect())
        })
        .await
    }

    async fn search_items(&self, collection: &str, query: &ItemsQuery) -> Result<ItemsHits, StoreError> {
        let query = query.clone();
        self.blocking(collection, move |shard| {
            if !shard.config().sparse_vectors.contains_key(ITEMS) {
                return Ok(ItemsHits::default());
            }
            let exclude = SearchFilter { exclude_ids: query.exclude_ids.clone(), ..SearchFilter::default() };
            let request = |q: VectorInternal, using: Option<String>, filter: Option<Filter>, limit: usize, params| {
                SearchRequest {
                    query: QueryEnum::Nearest(NamedQuery { query: q, using }),
                    filter,
                    params,
                    limit,
                    offset: 0,
                    with_payload: Some(WithPayloadInterface::Fields(vec![path("movie_id")])),
                    with_vector: None,
                    score_threshold: None,
                }
            };
            let weighted = if query.query.entries.is_empty() || query.limit == 0 {
                Vec::new()
            } else {
                let q = VectorInternal::Sparse(engine_sparse(&query.query)?);
                hits(
                    shard
                        .search(request(q, Some(ITEMS.into()), edge_filter(&exclude), query.limit, None))
                        .map_err(engine("search"))?,
                )
            };
            let fresh = match query.fresh {
                Some(vector) if query.fresh_limit > 0 && vector_name(shard, Space::Content).is_some() => {
                    let name = vector_name(shard, Space::Content).filter(|n| n != DEFAULT_VECTOR_NAME);
                    let mut filter = edge_filter(&exclude).unwrap_or_default();
                    filter
                        .must_not
                        .get_or_insert_with(Vec::new)
                        .push(Condition::HasVector(HasVectorCondition { has_vector: ITEMS.into() }));
                    let params = (query.exact || query.ef.is_some()).then(|| SearchParams {
                        exact: query.exact,
                        hnsw_ef: query.ef,
                        ..SearchParams::default()
                    });
                    hits(
                        shard
                            .search(request(
                                VectorInternal::Dense(vector),
                                name,
                                Some(filter),
                                query.fresh_limit,
                                params,
                            ))
                            .map_err(engine("search"))?,
                    )
                }
                _ => Vec::new(),
            };
            Ok(ItemsHits { weighted, fresh })
        })
        .await
    }

    async fn live(&self) -> Result<Option<String>, StoreError> {
        let path = self.root.join("LIVE");
        match std::fs::read_to_string(&path) {
            Ok(name) if !name.trim().is_empty() => Ok(Some(name.trim().to_string())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { operation: "reading the live pointer", path, source }),
        }
    }

    async fn set_live(&self, collection: &str) -> Result<(), StoreError> {
        if !self.dir(collection).join("edge_config.json").is_file() {
            return Err(StoreError::NoSuchCollection(collection.to_string()));
        }
        let tmp = self.root.join("LIVE.tmp");
        let path = self.root.join("LIVE");
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { operation, path, source }
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io("writing the live pointer", &tmp))?;
            f.write_all(collection.as_bytes()).map_err(io("writing the live pointer", &tmp))?;
            f.sync_all().map_err(io("syncing the live pointer", &tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io("switching the live pointer", &path))?;
        if let Ok(dir) = std::fs::File::open(&self.root) {
            let _synced = dir.sync_all();
        }
        Ok(())
    }
}
