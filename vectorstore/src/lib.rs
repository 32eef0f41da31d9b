//! The vector store of movie points: one behaviour ([`VectorStore`]), two real engines —
//! qdrant-edge (embedded, a directory on disk, the default) and a Qdrant server or cluster
//! through qdrant-client — and the point-id rule ([`point_id`]) that the embedder (writer) and
//! the server (reader) must agree on.
//!
//! A store holds named collections of movie points (id = [`point_id`], payload =
//! movie id, title, year, genres, text hash) and a *live* pointer naming the collection readers
//! use. Switching the live pointer is atomic (a file rename on edge, an alias swap on a server).
//! A point has up to two named dense vectors ([`Space`]): `content` (the text embedding, every
//! point) and `behaviour` (learned from interactions; only movies with enough of them). Both are
//! cosine spaces indexed by HNSW with the collection's [`Hnsw`] parameters; searches take `ef`.
//!
//! A collection may also hold **item weights** ([`ITEMS`], a sparse named vector, dot product):
//! a movie in the item model has a dimension (payload `item_dim`, [`ItemDims`]) and movie `j`'s
//! sparse vector is `{dim(i): B[i, j]}`, so a history as the sparse query `{dim(i): w_i}` scores
//! every movie with `Σ w_i B[i, j]` in one exact search ([`VectorStore::search_items`]).

pub mod args;
pub mod edge;
pub mod server;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

/// The point id of a movie: the first 8 bytes of sha256 of the course movie id, big-endian.
/// Stable across processes, versions and engines (it names the point in every collection).
pub fn point_id(movie_id: &str) -> u64 {
    let digest = Sha256::digest(movie_id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A vector space of the movie points: a named vector in every collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// The text embedding of the movie's metadata (every point has one).
    Content,
    /// The vector learned from who watched what (movies with enough interactions).
    Behaviour,
}

impl Space {
    /// Both spaces.
    pub const ALL: [Space; 2] = [Space::Content, Space::Behaviour];

    /// The vector's name in collections.
    pub fn name(self) -> &'static str {
        match self {
            Space::Content => "content",
            Space::Behaviour => "behaviour",
        }
    }
}

impl std::fmt::Display for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The name of the sparse item-weights vector in collections.
pub const ITEMS: &str = "items";

/// A sparse vector: `(dimension, value)` pairs, dimensions unique.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseVector {
    /// The pairs, sorted by dimension.
    pub entries: Vec<(u32, f32)>,
}

impl SparseVector {
    /// Sorts by dimension and sums the values of repeated dimensions (the engines refuse
    /// repeats).
    pub fn new(mut entries: Vec<(u32, f32)>) -> Self {
        entries.sort_by_key(|&(d, _)| d);
        let mut out: Vec<(u32, f32)> = Vec::with_capacity(entries.len());
        for (d, v) in entries {
            match out.last_mut() {
                Some(last) if last.0 == d => last.1 += v,
                _ => out.push((d, v)),
            }
        }
        Self { entries: out }
    }

    /// The dimensions and the values, as the engines take them.
    pub fn split(&self) -> (Vec<u32>, Vec<f32>) {
        self.entries.iter().copied().unzip()
    }
}

/// One item-weights search ([`VectorStore::search_items`]): the exact sparse dot product of
/// `query` with every movie's item weights, and — for movies without weights (too new for the
/// item model) — a dense content search near `fresh`, in one call.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemsQuery {
    /// The history as `{dim(i): w_i}`.
    pub query: SparseVector,
    /// Best movies wanted from the sparse search.
    pub limit: usize,
    /// Never these points (what the user watched).
    pub exclude_ids: Vec<u64>,
    /// A content vector (e.g. the mean of the user's recent movies) to search among the movies
    /// without item weights; `None`: no such search.
    pub fresh: Option<Vec<f32>>,
    /// Best movies wanted from the content search.
    pub fresh_limit: usize,
    /// Exhaustive content search (the sparse one always is).
    pub exact: bool,
    /// HNSW breadth of the content search.
    pub ef: Option<usize>,
}

/// The two result lists of an [`ItemsQuery`], best first, ties by point id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemsHits {
    /// From the sparse search, scored by the dot product.
    pub weighted: Vec<Hit>,
    /// From the content search among movies without weights, scored by cosine.
    pub fresh: Vec<Hit>,
}

/// Sorts hits best first, ties by point id (the engines' order of equal scores is not part of
/// their contract; this is ours).
pub fn sort_hits(hits: &mut [Hit]) {
    hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
}

/// Movie id → item dimension in one collection (from the points' `item_dim` payload), and how
/// many points have none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemDims {
    /// By course movie id.
    pub dims: std::collections::HashMap<String, u32>,
    /// Points without a dimension (movies outside the item model).
    pub without: usize,
}

impl ItemDims {
    /// From a collection's digests.
    pub fn from_digests(digests: &[PointDigest]) -> Self {
        let dims: std::collections::HashMap<String, u32> =
            digests.iter().filter_map(|d| Some((d.movie_id.clone(), d.item_dim?))).collect();
        Self { without: digests.len() - dims.len(), dims }
    }
}

/// HNSW graph parameters of a collection (they change the graph, so they are part of the
/// collection's name). Recall against exact search is measured by `embed-bench recall`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hnsw {
    /// Edges per node.
    pub m: usize,
    /// Candidates considered while building.
    pub ef_construct: usize,
    /// A space whose vectors take less than this many KiB is searched exhaustively and gets no
    /// graph (the engines' default is 10,000: 64-dim behaviour vectors of 27k movies, 6.9 MB,
    /// would be scanned on every cold search).
    pub full_scan_kb: usize,
}

impl Default for Hnsw {
    /// m = 32, ef_construct = 400: with search ef 256, recall@50 against exact search ≈ 0.997
    /// on the default catalog (engine default 16 × 100: 0.954); see BENCHMARKS.md.
    fn default() -> Self {
        Self { m: 32, ef_construct: 400, full_scan_kb: 1_000 }
    }
}

impl Hnsw {
    /// `h<m>x<ef_construct>f<full_scan_kb>`: the tag in collection names.
    pub fn tag(&self) -> String {
        format!("h{}x{}f{}", self.m, self.ef_construct, self.full_scan_kb)
    }

    /// A one-line error for values the engines refuse.
    pub fn check(&self) -> Result<(), String> {
        if !(4..=128).contains(&self.m) {
            return Err(format!("hnsw m must be in 4..=128, got {}", self.m));
        }
        if !(4..=2048).contains(&self.ef_construct) {
            return Err(format!("hnsw ef_construct must be in 4..=2048, got {}", self.ef_construct));
        }
        if self.full_scan_kb > 1_000_000 {
            return Err(format!("hnsw full_scan_kb must be at most 1000000, got {}", self.full_scan_kb));
        }
        Ok(())
    }
}

/// How to create a collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectionSpec {
    /// Dimension of the content vectors.
    pub content_dim: usize,
    /// Dimension of the behaviour vectors, when the collection has them.
    pub behaviour_dim: Option<usize>,
    /// Whether the collection has the sparse [`ITEMS`] vector.
    pub items: bool,
    /// The HNSW graph of both spaces.
    pub hnsw: Hnsw,
}

/// A movie point to upsert.
#[derive(Debug, Clone, PartialEq)]
pub struct MoviePoint {
    /// Stable point id.
    pub id: u64,
    /// The content vector.
    pub vector: Vec<f32>,
    /// The behaviour vector, when the movie has one.
    pub behaviour: Option<Vec<f32>>,
    /// The movie's dimension in the item model (payload `item_dim`), when it is in it.
    pub item_dim: Option<u32>,
    /// The movie's item weights `{dim(i): B[i, j]}` (absent: nothing reaches it).
    pub items: Option<SparseVector>,
    /// Course movie id.
    pub movie_id: String,
    /// Title.
    pub title: String,
    /// Year.
    pub year: Option<i32>,
    /// Genres (keyword-indexed).
    pub genres: Vec<String>,
    /// sha256 of the embedded text: tells incremental runs what changed.
    pub text_hash: String,
}

/// A search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// Point id.
    pub id: u64,
    /// Course movie id (from the payload).
    pub movie_id: String,
    /// Cosine similarity.
    pub score: f32,
}

/// Restrictions on a search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchFilter {
    /// Only movies with at least one of these genres.
    pub any_genre: Vec<String>,
    /// Never these points (e.g. what the user already watched).
    pub exclude_ids: Vec<u64>,
    /// Exhaustive search instead of the HNSW index: the same answer whatever the index layout
    /// (segments, optimisation state), which replayable recommendations need.
    pub exact: bool,
    /// HNSW search breadth (`ef`); `None`: the engine's default.
    pub ef: Option<usize>,
}

/// A stored point's identity and content hash (for incremental embedding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointDigest {
    /// Point id.
    pub id: u64,
    /// Course movie id.
    pub movie_id: String,
    /// The stored text hash.
    pub text_hash: String,
    /// The movie's dimension in the item model, if it is in it.
    pub item_dim: Option<u32>,
}

/// Store failures, with the engine's message.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named collection does not exist.
    #[error("collection {0} does not exist")]
    NoSuchCollection(String),
    /// The engine refused or failed.
    #[error("{engine} {operation} failed: {detail}")]
    Engine {
        /// edge or qdrant.
        engine: &'static str,
        /// What we asked.
        operation: &'static str,
        /// Its message.
        detail: String,
    },
    /// The store's configuration is invalid (caught before anything is touched).
    #[error("vector store configuration: {0}")]
    Config(String),
    /// Local file trouble (edge).
    #[error("{operation} ({path}): {source}")]
    Io {
        /// What we did.
        operation: &'static str,
        /// Where.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How a Qdrant cluster lays out the collections this project creates (the Qdrant server's
/// `shard_number`, `replication_factor` and `write_consistency_factor`). The default, 1/1/1, is
/// one machine; qdrant-edge is always that, and other values without a server are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterLayout {
    /// Shards per collection (spread over the nodes; searches fan out to all of them).
    pub shard_number: u32,
    /// Copies of each shard on different nodes: reads survive `replication_factor - 1` lost nodes.
    pub replication_factor: u32,
    /// Copies that must acknowledge a write before it returns (≤ `replication_factor`).
    pub write_consistency_factor: u32,
}

impl Default for ClusterLayout {
    fn default() -> Self {
        Self { shard_number: 1, replication_factor: 1, write_consistency_factor: 1 }
    }
}

impl ClusterLayout {
    /// Checks the three numbers are usable together.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.shard_number == 0 || self.replication_factor == 0 || self.write_consistency_factor == 0 {
            return Err(StoreError::Config(format!(
                "shard_number, replication_factor and write_consistency_factor must be at least 1 (got {}, {}, {})",
                self.shard_number, self.replication_factor, self.write_consistency_factor
            )));
        }
        if self.write_consistency_factor > self.replication_factor {
            return Err(StoreError::Config(format!(
                "write_consistency_factor {} is larger than replication_factor {}: no write could succeed",
                self.write_consistency_factor, self.replication_factor
            )));
        }
        Ok(())
    }
}

/// Where the vectors live: a Qdrant server when `qdrant_url` is set (one gRPC URL, or several
/// nodes of a cluster separated by commas: calls move to the next node when one is unreachable),
/// else qdrant-edge in `edge_dir` (default `<state_dir>/qdrant-edge`). The one place the
/// embedder, the server and the tools resolve this.
pub fn open(
    qdrant_url: Option<&str>,
    api_key: Option<String>,
    timeout: std::time::Duration,
    edge_dir: Option<&std::path::Path>,
    state_dir: &std::path::Path,
) -> Result<std::sync::Arc<dyn VectorStore>, StoreError> {
    open_with_layout(qdrant_url, api_key, timeout, edge_dir, state_dir, ClusterLayout::default())
}

/// [`open`], with the layout new collections get on a Qdrant cluster.
pub fn open_with_layout(
    qdrant_url: Option<&str>,
    api_key: Option<String>,
    timeout: std::time::Duration,
    edge_dir: Option<&std::path::Path>,
    state_dir: &std::path::Path,
    layout: ClusterLayout,
) -> Result<std::sync::Arc<dyn VectorStore>, StoreError> {
    layout.validate()?;
    Ok(match qdrant_url {
        Some(url) => std::sync::Arc::new(server::ServerStore::connect(url, api_key, timeout, layout)?),
        None if layout != ClusterLayout::default() => {
            return Err(StoreError::Config(
                "shards and replicas need a Qdrant server (--qdrant-url); qdrant-edge is one local shard".into(),
            ));
        }
        None => {
            let dir = edge_dir.map(std::path::Path::to_path_buf).unwrap_or_else(|| state_dir.join("qdrant-edge"));
            std::sync::Arc::new(edge::EdgeStore::open(&dir)?)
        }
    })
}

/// The vector store seam.
#[async_trait]
pub trait VectorStore: Send + Sync {
    /// A short description for logs and provenance (`edge:<dir>`, `qdrant:<url>`).
    fn describe(&self) -> String;
    /// Existing collection names.
    async fn collections(&self) -> Result<Vec<String>, StoreError>;
    /// Creates a collection with cosine spaces as `spec` says and payload indexes on genres,
    /// year and movie id; does nothing if it exists.
    async fn create_collection(&self, name: &str, spec: &CollectionSpec) -> Result<(), StoreError>;
    /// Removes a collection (not the live one: callers switch first).
    async fn drop_collection(&self, name: &str) -> Result<(), StoreError>;
    /// Inserts or replaces points.
    async fn upsert(&self, collection: &str, points: Vec<MoviePoint>) -> Result<(), StoreError>;
    /// Deletes points by id.
    async fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<(), StoreError>;
    /// Makes a freshly bulk-loaded collection fast to search (builds the HNSW index).
    async fn finish_bulk_load(&self, collection: &str) -> Result<(), StoreError>;
    /// Exact point count.
    async fn count(&self, collection: &str) -> Result<u64, StoreError>;
    /// Every point's id, movie id, text hash and item dimension.
    async fn digests(&self, collection: &str) -> Result<Vec<PointDigest>, StoreError>;
    /// Vectors in `space` of the given points (points without one, and missing ids, are
    /// skipped), in the order given. A collection without the space has none.
    async fn vectors(&self, collection: &str, space: Space, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, StoreError>;
    /// Nearest neighbours of `vector` in `space` (only points that have a vector there).
    async fn search(
        &self,
        collection: &str,
        space: Space,
        vector: Vec<f32>,
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError>;
    /// Item weights of the given points (points without, and missing ids, are skipped), in the
    /// order given.
    async fn item_vectors(&self, collection: &str, ids: &[u64]) -> Result<Vec<(u64, SparseVector)>, StoreError>;
    /// The item-weights search and the content search among movies without weights, one call
    /// (nothing for a collection without item weights).
    async fn search_items(&self, collection: &str, query: &ItemsQuery) -> Result<ItemsHits, StoreError>;
    /// The live collection, if any.
    async fn live(&self) -> Result<Option<String>, StoreError>;
    /// Atomically points readers at `collection`.
    async fn set_live(&self, collection: &str) -> Result<(), StoreError>;
}

/// The neighbour list of a movie: the `k` points nearest to point `id`'s vector in `space`,
/// itself excluded; empty when the point has no vector there (not embedded yet, or too few
/// viewers for a behaviour vector). The one way the server and a replay fetch a list, so both
/// read the same list from the same collection.
pub async fn neighbours_of(
    store: &dyn VectorStore,
    collection: &str,
    space: Space,
    id: u64,
    k: usize,
    exact: bool,
    ef: Option<usize>,
) -> Result<Vec<Hit>, StoreError> {
    let Some((_, vector)) = store.vectors(collection, space, &[id]).await?.pop() else {
        return Ok(Vec::new());
    };
    let filter = SearchFilter { exclude_ids: vec![id], exact, ef, ..SearchFilter::default() };
    store.search(collection, space, vector, k, &filter).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_ids_are_stable() {
        assert_eq!(point_id("toy+story+1995"), point_id("toy+story+1995"));
        assert_ne!(point_id("toy+story+1995"), point_id("toy+story+1996"));
        // Pinned: changing the rule would orphan every stored point.
        assert_eq!(point_id(""), 0xe3b0_c442_98fc_1c14);
    }
}
