//! A Qdrant server or cluster through qdrant-client (gRPC). What users switch to when one
//! machine is not enough; the live pointer is a collection alias.
//!
//! A cluster is given as its nodes' URLs. Every call goes to one node (which routes it to the
//! shards' replicas on the others); when that node is unreachable (gRPC `UNAVAILABLE`: refused,
//! reset, down) the call is repeated on the next node and the store stays there. Collections
//! are created with the configured [`ClusterLayout`] (shards, replicas, write consistency), so
//! with a replication factor of 2 reads survive the loss of any one node.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateAliasBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, HnswConfigDiffBuilder, PointId, PointStruct,
    PointsIdsList, Query, QueryBatchPointsBuilder, QueryPointsBuilder, ScoredPoint, ScrollPointsBuilder,
    SearchParamsBuilder, SearchPointsBuilder, SparseVectorParamsBuilder, SparseVectorsConfigBuilder,
    UpsertPointsBuilder, Vector, VectorInput, VectorOutput, VectorParamsBuilder, VectorsConfigBuilder, VectorsSelector,
    point_id::PointIdOptions, vector_output, vectors_config, vectors_output::VectorsOptions,
};
use qdrant_client::{Payload, Qdrant, QdrantError};

use super::{
    ClusterLayout, CollectionSpec, Hit, ITEMS, ItemsHits, ItemsQuery, MoviePoint, PointDigest, SearchFilter, Space,
    SparseVector, StoreError, VectorStore,
};

const ENGINE: &str = "qdrant";
/// The alias readers use.
pub const LIVE_ALIAS: &str = "movies_live";

fn engine(operation: &'static str) -> impl FnOnce(qdrant_client::QdrantError) -> StoreError {
    move |e| StoreError::Engine { engine: ENGINE, operation, detail: e.to_string() }
}

/// gRPC's `UNAVAILABLE`: the node could not be reached (another node may answer).
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether `e` says the node is unreachable rather than that the request is wrong.
fn unreachable(e: &QdrantError) -> bool {
    match e {
        QdrantError::ResponseError { status } => status.code() as i32 == GRPC_UNAVAILABLE,
        _ => false,
    }
}

/// A Qdrant server, or the nodes of a Qdrant cluster.
pub struct ServerStore {
    /// One client per node, in the order given.
    nodes: Vec<(String, Arc<Qdrant>)>,
    /// The node calls go to first.
    current: AtomicUsize,
    url: String,
    /// Shards and replicas of the collections this store creates.
    cluster: ClusterLayout,
    /// Per collection: its vector names.
    layouts: Mutex<HashMap<String, Layout>>,
}

/// The vector names of one collection.
#[derive(Debug, Clone, Default)]
struct Layout {
    /// The content vector's name; `Some("")` is the unnamed vector of collections made before
    /// named vectors.
    content: Option<String>,
    /// The behaviour vector's name.
    behaviour: Option<String>,
    /// Whether the sparse item weights are there.
    items: bool,
}

impl std::fmt::Debug for ServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStore").field("url", &self.url).finish()
    }
}

impl ServerStore {
    /// Connects to `url` (gRPC, e.g. `http://localhost:6334`; a cluster's nodes separated by
    /// commas) with an optional API key; collections it creates get `cluster`'s layout.
    pub fn connect(
        url: &str,
        api_key: Option<String>,
        timeout: Duration,
        cluster: ClusterLayout,
    ) -> Result<Self, StoreError> {
        cluster.validate()?;
        let urls: Vec<&str> = url.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            return Err(StoreError::Config(format!("{url:?} names no Qdrant node")));
        }
        let nodes = urls
            .iter()
            .map(|u| {
                let client = Qdrant::from_url(u)
                    .api_key(api_key.clone())
                    .timeout(timeout)
                    .skip_compatibility_check()
                    .build()
                    .map_err(engine("connecting"))?;
                Ok((u.to_string(), Arc::new(client)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            nodes,
            current: AtomicUsize::new(0),
            url: urls.join(","),
            cluster,
            layouts: Mutex::new(HashMap::new()),
        })
    }

    /// How `collection` is laid out on the cluster (as the server reports it).
    pub async fn cluster_layout(&self, collection: &str) -> Result<ClusterLayout, StoreError> {
        let info =
            self.call("reading a collection's layout", collection.to_string(), |c, r| async move {
                c.collection_info(r).await
            })
            .await?;
        let params = info
            .result
            .and_then(|i| i.config)
            .and_then(|c| c.params)
            .ok_or_else(|| StoreError::NoSuchCollection(collection.to_string()))?;
        Ok(ClusterLayout {
            shard_number: params.shard_number,
            replication_factor: params.replication_factor.unwrap_or(1),
            write_consistency_factor: params.write_consistency_factor.unwrap_or(1),
        })
    }

    /// The node calls go to first (moves when a node is unreachable).
    pub fn current_node(&self) -> &str {
        &self.nodes[self.current.load(Ordering::Relaxed) % self.nodes.len()].0
    }

    /// Sends `request` with `call` to the current node, and to the next ones while a node is
    /// unreachable; the node that answered becomes the current one. The request is cloned only
    /// when another node may still be tried (never with one node).
    async fn call<R, T, F, Fut>(&self, operation: &'static str, request: R, call: F) -> Result<T, StoreError>
    where
        R: Clone,
        F: Fn(Arc<Qdrant>, R) -> Fut,
        Fut: Future<Output = Result<T, QdrantError>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let n = self.nodes.len();
        let mut request = Some(request);
        for attempt in 0..n {
            let i = (start + attempt) % n;
            let (url, client) = &self.nodes[i];
            let last = attempt + 1 == n;
            let Some(this) = (if last { request.take() } else { request.clone() }) else { break };
            match call(client.clone(), this).await {
                Ok(v) => {
                    if attempt > 0 {
                        self.current.store(i, Ordering::Relaxed);
                        tracing::warn!(node = %url, operation, "moved to the next Qdrant node");
                    }
                    return Ok(v);
                }
                Err(e) if unreachable(&e) && !last => {
                    tracing::warn!(node = %url, operation, error = %e, "Qdrant node unreachable; trying the next");
                }
                Err(e) => return Err(engine(operation)(e)),
            }
        }
        Err(StoreError::Config("no Qdrant node configured".into()))
    }

    /// The vector names of `collection` (looked up once per collection).
    async fn layout(&self, collection: &str) -> Result<Layout, StoreError> {
        if let Some(layout) = self.layouts.lock().unwrap_or_else(|p| p.into_inner()).get(collection).cloned() {
            return Ok(layout);
        }
        let info =
            self.call("reading a collection's layout", collection.to_string(), |c, r| async move {
                c.collection_info(r).await
            })
            .await?;
        let params = info.result.and_then(|i| i.config).and_then(|c| c.params);
        let items =
            params.as_ref().and_then(|p| p.sparse_vectors_config.as_ref()).is_some_and(|s| s.map.contains_key(ITEMS));
        let mut layout = match params.and_then(|p| p.vectors_config).and_then(|v| v.config) {
            Some(vectors_config::Config::Params(_)) => Layout { content: Some(String::new()), ..Layout::default() },
            Some(vectors_config::Config::ParamsMap(m)) => {
                let has = |s: Space| m.map.contains_key(s.name()).then(|| s.name().to_string());
                Layout { content: has(Space::Content), behaviour: has(Space::Behaviour), items: false }
            }
            None => Layout::default(),
        };
        layout.items = items;
        self.layouts.lock().unwrap_or_else(|p| p.into_inner()).insert(collection.to_string(), layout.clone());
        Ok(layout)
    }

    /// The name of `space`'s vector in `collection`.
    async fn vector_name(&self, collection: &str, space: Space) -> Result<Option<String>, StoreError> {
        let layout = self.layout(collection).await?;
        Ok(match space {
            Space::Content => layout.content,
            Space::Behaviour => layout.behaviour,
        })
    }
}

fn dense(v: VectorOutput) -> Option<Vec<f32>> {
    #[allow(deprecated)]
    match v.vector {
        Some(vector_output::Vector::Dense(d)) => Some(d.data),
        Some(vector_output::Vector::Sparse(_) | vector_output::Vector::MultiDense(_)) => None,
        None => Some(v.data),
    }
}

fn num_id(id: Option<&PointId>) -> Option<u64> {
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Num(n) => Some(*n),
        PointIdOptions::Uuid(_) => None,
    }
}

fn payload_string(payload: &std::collections::HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> String {
    payload.get(key).and_then(|v| v.as_str()).map(|s| s.to_string()).unwrap_or_default()
}

fn payload_u32(payload: &std::collections::HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> Option<u32> {
    payload.get(key).and_then(|v| v.as_integer()).and_then(|n| u32::try_from(n).ok())
}

fn hits(points: Vec<ScoredPoint>) -> Vec<Hit> {
    let mut hits: Vec<Hit> = points
        .into_iter()
        .filter_map(|p| {
            Some(Hit { id: num_id(p.id.as_ref())?, movie_id: payload_string(&p.payload, "movie_id"), score: p.score })
        })
        .collect();
    super::sort_hits(&mut hits);
    hits
}

fn exclusion(ids: &[u64]) -> Filter {
    let mut f = Filter::default();
    if !ids.is_empty() {
        f.must_not.push(Condition::has_id(ids.iter().copied()));
    }
    f
}

#[async_trait]
impl VectorStore for ServerStore {
    fn describe(&self) -> String {
        format!("qdrant:{}", self.url)
    }

    async fn collections(&self) -> Result<Vec<String>, StoreError> {
        let list = self.call("listing collections", (), |c, ()| async move { c.list_collections().await }).await?;
        let mut names: Vec<String> = list.collections.into_iter().map(|c| c.name).collect();
        names.sort();
        Ok(names)
    }

    async fn create_collection(&self, name: &str, spec: &CollectionSpec) -> Result<(), StoreError> {
        let exists = self
            .call("checking a collection", name.to_string(), |c, r| async move { c.collection_exists(r).await })
            .await?;
        if exists {
            return Ok(());
        }
        let hnsw = HnswConfigDiffBuilder::default()
            .m(spec.hnsw.m as u64)
            .ef_construct(spec.hnsw.ef_construct as u64)
            .full_scan_threshold(spec.hnsw.full_scan_kb as u64);
        let params = |dim: usize| VectorParamsBuilder::new(dim as u64, Distance::Cosine).hnsw_config(hnsw.clone());
        let mut vectors = VectorsConfigBuilder::default();
        vectors.add_named_vector_params(Space::Content.name(), params(spec.content_dim));
        if let Some(dim) = spec.behaviour_dim {
            vectors.add_named_vector_params(Space::Behaviour.name(), params(dim));
        }
        let mut create = CreateCollectionBuilder::new(name)
            .vectors_config(vectors)
            .shard_number(self.cluster.shard_number)
            .replication_factor(self.cluster.replication_factor)
            .write_consistency_factor(self.cluster.write_consistency_factor);
        if spec.items {
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(ITEMS, SparseVectorParamsBuilder::default());
            create = create.sparse_vectors_config(sparse);
        }
        let create = create.build();
        self.call("creating a collection", create, |c, r| async move { c.create_collection(r).await }).await?;
        for (field, kind) in
            [("genres", FieldType::Keyword), ("year", FieldType::Integer), ("movie_id", FieldType::Keyword)]
        {
            let index = CreateFieldIndexCollectionBuilder::new(name, field, kind).wait(true).build();
            self.call("creating a payload index", index, |c, r| async move { c.create_field_index(r).await }).await?;
        }
        Ok(())
    }

    async fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        self.call("dropping a collection", name.to_string(), |c, r| async move { c.delete_collection(r).await })
            .await?;
        self.layouts.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<MoviePoint>) -> Result<(), StoreError> {
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let mut payload = serde_json::json!({
                    "movie_id": p.movie_id, "title": p.title, "year": p.year,
                    "genres": p.genres, "text_hash": p.text_hash,
                });
                if let (Some(dim), Some(map)) = (p.item_dim, payload.as_object_mut()) {
                    map.insert("item_dim".into(), serde_json::json!(dim));
                }
                let payload = Payload::try_from(payload).unwrap_or_default();
                let mut vectors = HashMap::from([(Space::Content.name().to_string(), Vector::new_dense(p.vector))]);
                if let Some(b) = p.behaviour {
                    vectors.insert(Space::Behaviour.name().to_string(), Vector::new_dense(b));
                }
                if let Some(items) = p.items.filter(|v| !v.entries.is_empty()) {
                    let (indices, values) = items.split();
                    vectors.insert(ITEMS.to_string(), Vector::new_sparse(indices, values));
                }
                PointStruct::new(p.id, vectors, payload)
            })
            .collect();
        for chunk in points.chunks(256) {
            let upsert = UpsertPointsBuilder::new(collection, chunk.to_vec()).wait(true).build();
            self.call("upsert", upsert, |c, r| async move { c.upsert_points(r).await }).await?;
        }
        Ok(())
    }

    async fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<(), StoreError> {
        let ids: Vec<PointId> = ids.into_iter().map(PointId::from).collect();
        let delete = DeletePointsBuilder::new(collection).points(PointsIdsList { ids }).wait(true).build();
        self.call("delete", delete, |c, r| async move { c.delete_points(r).await }).await?;
        Ok(())
    }

    async fn finish_bulk_load(&self, _collection: &str) -> Result<(), StoreError> {
        // The server indexes in the background as points arrive; nothing to force.
        Ok(())
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        let count = CountPointsBuilder::new(collection).exact(true).build();
        let r = self.call("count", count, |c, r| async move { c.count(r).await }).await?;
        Ok(r.result.map(|c| c.count).unwrap_or(0))
    }

    async fn digests(&self, collection: &str) -> Result<Vec<PointDigest>, StoreError> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req = ScrollPointsBuilder::new(collection).limit(1_000).with_payload(true).with_vectors(false);
            if let Some(o) = offset.take() {
                req = req.offset(o);
            }
            let req = req.build();
            let page = self.call("scroll", req, |c, r| async move { c.scroll(r).await }).await?;
            for p in page.result {
                if let Some(id) = num_id(p.id.as_ref()) {
                    out.push(PointDigest {
                        id,
                        movie_id: payload_string(&p.payload, "movie_id"),
                        text_hash: payload_string(&p.payload, "text_hash"),
                        item_dim: payload_u32(&p.payload, "item_dim"),
                    });
                }
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn vectors(&self, collection: &str, space: Space, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, StoreError> {
        let Some(name) = self.vector_name(collection, space).await? else { return Ok(Vec::new()) };
        let point_ids: Vec<PointId> = ids.iter().map(|id| PointId::from(*id)).collect();
        let mut req = GetPointsBuilder::new(collection, point_ids).with_payload(false);
        req = if name.is_empty() {
            req.with_vectors(true)
        } else {
            req.with_vectors(VectorsSelector { names: vec![name.clone()] })
        };
        let req = req.build();
        let r = self.call("retrieve", req, |c, r| async move { c.get_points(r).await }).await?;
        let mut found: HashMap<u64, Vec<f32>> = HashMap::new();
        for p in r.result {
            let Some(id) = num_id(p.id.as_ref()) else { continue };
            let vector = match p.vectors.and_then(|v| v.vectors_options) {
                Some(VectorsOptions::Vector(v)) => dense(v),
                Some(VectorsOptions::Vectors(mut named)) => named.vectors.remove(&name).and_then(dense),
                None => None,
            };
            if let Some(vector) = vector {
                found.insert(id, vector);
            }
        }
        Ok(ids.iter().filter_map(|id| Some((*id, found.remove(id)?))).collect())
    }

    async fn search(
        &self,
        collection: &str,
        space: Space,
        vector: Vec<f32>,
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        let Some(name) = self.vector_name(collection, space).await? else { return Ok(Vec::new()) };
        let mut req = SearchPointsBuilder::new(collection, vector, limit as u64).with_payload(true);
        if !name.is_empty() {
            req = req.vector_name(name);
        }
        if filter.exact || filter.ef.is_some() {
            let mut params = SearchParamsBuilder::default().exact(filter.exact);
            if let Some(ef) = filter.ef {
                params = params.hnsw_ef(ef as u64);
            }
            req = req.params(params);
        }
        let mut f = Filter::default();
        if !filter.any_genre.is_empty() {
            f.must.push(Condition::matches("genres", filter.any_genre.clone()));
        }
        if !filter.exclude_ids.is_empty() {
            f.must_not.push(Condition::has_id(filter.exclude_ids.iter().copied()));
        }
        if !f.must.is_empty() || !f.must_not.is_empty() {
            req = req.filter(f);
        }
        let req = req.build();
        let r = self.call("search", req, |c, r| async move { c.search_points(r).await }).await?;
        Ok(hits(r.result))
    }

    async fn item_vectors(&self, collection: &str, ids: &[u64]) -> Result<Vec<(u64, SparseVector)>, StoreError> {
        if !self.layout(collection).await?.items {
            return Ok(Vec::new());
        }
        let point_ids: Vec<PointId> = ids.iter().map(|id| PointId::from(*id)).collect();
        let req = GetPointsBuilder::new(collection, point_ids)
            .with_payload(false)
            .with_vectors(VectorsSelector { names: vec![ITEMS.to_string()] });
        let req = req.build();
        let r = self.call("retrieve", req, |c, r| async move { c.get_points(r).await }).await?;
        let mut found: HashMap<u64, SparseVector> = HashMap::new();
        for p in r.result {
            let Some(id) = num_id(p.id.as_ref()) else { continue };
            let Some(VectorsOptions::Vectors(mut named)) = p.vectors.and_then(|v| v.vectors_options) else { continue };
            if let Some(vector_output::Vector::Sparse(v)) = named.vectors.remove(ITEMS).and_then(|v| v.vector) {
                found.insert(id, SparseVector { entries: v.indices.into_iter().zip(v.values).collect() });
            }
        }
        Ok(ids.iter().filter_map(|id| Some((*id, found.remove(id)?))).collect())
    }

    async fn search_items(&self, collection: &str, query: &ItemsQuery) -> Result<ItemsHits, StoreError> {
        let layout = self.layout(collection).await?;
        if !layout.items {
            return Ok(ItemsHits::default());
        }
        // Both searches in one batch request: one round trip.
        let mut batch = Vec::new();
        let weighted = !query.query.entries.is_empty() && query.limit > 0;
        if weighted {
            let (indices, values) = query.query.split();
            batch.push(
                QueryPointsBuilder::new(collection)
                    .query(Query::new_nearest(VectorInput::new_sparse(indices, values)))
                    .using(ITEMS)
                    .filter(exclusion(&query.exclude_ids))
                    .limit(query.limit as u64)
                    .with_payload(true)
                    .build(),
            );
        }
        let fresh = match (&query.fresh, &layout.content) {
            (Some(vector), Some(name)) if query.fresh_limit > 0 => {
                let mut filter = exclusion(&query.exclude_ids);
                filter.must_not.push(Condition::has_vector(ITEMS));
                let mut q = QueryPointsBuilder::new(collection)
                    .query(Query::new_nearest(vector.clone()))
                    .filter(filter)
                    .limit(query.fresh_limit as u64)
                    .with_payload(true);
                if !name.is_empty() {
                    q = q.using(name.as_str());
                }
                if query.exact || query.ef.is_some() {
                    let mut params = SearchParamsBuilder::default().exact(query.exact);
                    if let Some(ef) = query.ef {
                        params = params.hnsw_ef(ef as u64);
                    }
                    q = q.params(params);
                }
                batch.push(q.build());
                true
            }
            _ => false,
        };
        if batch.is_empty() {
            return Ok(ItemsHits::default());
        }
        let req = QueryBatchPointsBuilder::new(collection, batch).build();
        let r = self.call("search", req, |c, r| async move { c.query_batch(r).await }).await?;
        let mut results = r.result.into_iter().map(|b| hits(b.result));
        let weighted = if weighted { results.next().unwrap_or_default() } else { Vec::new() };
        let fresh = if fresh { results.next().unwrap_or_default() } else { Vec::new() };
        Ok(ItemsHits { weighted, fresh })
    }

    async fn live(&self) -> Result<Option<String>, StoreError> {
        let aliases = self.call("listing aliases", (), |c, ()| async move { c.list_aliases().await }).await?;
        Ok(aliases.aliases.into_iter().find(|a| a.alias_name == LIVE_ALIAS).map(|a| a.collection_name))
    }

    async fn set_live(&self, collection: &str) -> Result<(), StoreError> {
        // Qdrant's create-alias replaces an existing alias of the same name in one operation,
        // so readers see either the old or the new collection, never none.
        let alias = CreateAliasBuilder::new(collection, LIVE_ALIAS).build();
        self.call("switching the live alias", alias, |c, r| async move { c.create_alias(r).await }).await?;
        Ok(())
    }
}
