//! The stack under test: one embedding run per test process (the most-rated movies of the
//! default dataset, real model), a fresh database per test, a server on free ports.

use std::path::{Path, PathBuf};

use db::testing::TestDb;
use embedder::model::{DEFAULT_MAX_TOKENS, Model, ModelPaths};
use embedder::pipeline::Embedder;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use server::config::Config;
use tokio::sync::OnceCell;
use vectorstore::edge::EdgeStore;

/// Movies embedded for the tests (the most-rated ones; the rest have no vectors, like movies
/// added after the last embed run).
pub const EMBEDDED_MOVIES: i64 = 1_500;

fn assets_dir() -> PathBuf {
    std::env::var_os("LAZYREC_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.state/assets"))
}

async fn load_default(db: &TestDb) {
    db::cli::load_movielens(&db.pool, &db.url, &db::import::movielens::MovieLensPaths::bundled(), false)
        .await
        .expect("load MovieLens");
    db::popularity::refresh(&db.pool, db::popularity::PopularityParams::default()).await.expect("popularity");
}

/// A fresh database holding exactly the catalog the shared store was embedded from: the
/// default dataset cut down to the [`EMBEDDED_MOVIES`] most-rated movies.
pub async fn embedded_catalog_db() -> TestDb {
    let db = TestDb::new().await;
    load_default(&db).await;
    sqlx::query(
        "DELETE FROM movies WHERE movie_id NOT IN (SELECT movie_id FROM ratings GROUP BY movie_id ORDER BY count(*) DESC, movie_id LIMIT $1)",
    )
    .bind(EMBEDDED_MOVIES)
    .execute(&db.pool)
    .await
    .expect("subset");
    db
}

/// The real embedding model, as the shared store was embedded with.
pub async fn embedding_model() -> Model {
    let paths = ModelPaths::in_assets_dir(&assets_dir());
    tokio::task::spawn_blocking(move || Model::load(&paths, 2, DEFAULT_MAX_TOKENS))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("{e} (install the assets with `python3 ci/assets.py`)"))
}

/// Makes the catalog of `pool` live in `store` with the test settings (chunks of 512, default
/// graph, no behaviour vectors).
pub async fn embed(
    pool: &sqlx::PgPool,
    store: &dyn vectorstore::VectorStore,
    model: &mut Model,
) -> embedder::pipeline::EmbedReport {
    Embedder { pool, store, model, progress: false, chunk: 512, hnsw: Default::default(), behaviour: None }
        .run()
        .await
        .expect("embed")
}

/// The directory of the shared, embedded qdrant-edge store (built once per process).
async fn embedded_store() -> &'static Path {
    static DIR: OnceCell<tempfile::TempDir> = OnceCell::const_new();
    DIR.get_or_init(|| async {
        let db = embedded_catalog_db().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EdgeStore::open(dir.path()).expect("store");
        let mut model = embedding_model().await;
        let report = embed(&db.pool, &store, &mut model).await;
        println!("test embeddings: {}", report.render());
        dir
    })
    .await
    .path()
}

/// Copies a directory tree (a qdrant-edge store: an engine directory belongs to one process).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A fresh database with the default dataset and a private copy of the embedded store.
pub struct Stack {
    /// The database.
    pub db: TestDb,
    /// The store directory (a copy).
    pub edge: tempfile::TempDir,
}

impl Stack {
    /// Builds it.
    pub async fn new() -> Self {
        let source = embedded_store().await;
        let db = TestDb::new().await;
        load_default(&db).await;
        let edge = tempfile::tempdir().expect("tempdir");
        copy_dir(source, edge.path());
        Self { db, edge }
    }

    /// A stack on a database the caller loaded (e.g. with a held-out future), with a private
    /// copy of the embedded store.
    #[allow(dead_code)] // used by the simulator's tests
    pub async fn with_db(db: TestDb) -> Self {
        let source = embedded_store().await;
        let edge = tempfile::tempdir().expect("tempdir");
        copy_dir(source, edge.path());
        Self { db, edge }
    }

    /// Another private copy of the embedded store (an engine directory belongs to one process).
    pub async fn edge_copy(&self) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(embedded_store().await, dir.path());
        dir
    }

    /// A server config on free ports for this stack.
    pub fn config(&self) -> Config {
        let defaults = Config::default();
        Config {
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            database_url: Some(self.db.url.clone()),
            store: server::config::StoreConfig {
                edge_dir: Some(self.edge.path().to_path_buf()),
                ..defaults.store.clone()
            },
            state_dir: self.edge.path().to_path_buf(),
            // The shared store holds content vectors only: neighbours-v2 ranks with them.
            // Tests of items-v1 add item weights first (`attach_item_weights`).
            model: strategy::ModelSpec { strategy: "neighbours-v2".into(), params: serde_json::json!({}) },
            ..defaults
        }
    }

    /// Movies user `user` has watched or rated.
    pub async fn seen(&self, user: i64) -> Vec<String> {
        sqlx::query_scalar("SELECT movie_id FROM ratings WHERE user_id = $1 UNION SELECT movie_id FROM user_watched WHERE user_id = $1")
            .bind(user)
            .fetch_all(&self.db.pool)
            .await
            .expect("seen")
    }

    /// The popularity table's top `n`.
    pub async fn popular(&self, n: i64) -> Vec<String> {
        db::popularity::top(&self.db.pool, n).await.expect("popularity")
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: hyper::HeaderMap,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A header as text ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

/// GET with optional extra headers.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Reply {
    let client =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut req = hyper::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(Empty::new()).expect("request")).await.expect("GET");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() }
}

/// Waits until `/ready` says ready (or panics after 30 s).
pub async fn wait_ready(base: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = get(&format!("{base}/ready"), &[]).await;
        if r.status == 200 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A TCP peer that accepts connections and never answers (a hung server).
pub fn blackhole() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
        }
    });
    addr
}

/// A TCP proxy to `upstream` whose connections take `delay` to open (the proxy connects upstream
/// only after it, then pipes both ways): a database slow to accept connections, as under CPU
/// starvation. Returns its address and a count of the connections it opened upstream (a client
/// that gave up meanwhile still costs one: Postgres then sees an abandoned session).
pub fn slow_to_connect(
    upstream: std::net::SocketAddr,
    delay: std::time::Duration,
) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let opened = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let count = opened.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let count = count.clone();
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let Ok(server) = std::net::TcpStream::connect(upstream) else { return };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let pipe = |mut from: std::net::TcpStream, mut to: std::net::TcpStream| {
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 << 10];
                        while let Ok(n) = from.read(&mut buf) {
                            if n == 0 || to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _closed = to.shutdown(std::net::Shutdown::Both);
                    });
                };
                let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else { return };
                pipe(client, server);
                pipe(s2, c2);
            });
        }
    });
    (addr, opened)
}

/// Adds item weights fitted on `pool`'s interactions to the live collection of the edge store
/// in `dir`: a new collection (the live one's points and content vectors, plus each movie's item
/// dimension and sparse `items` vector) is built and made live; its name is returned. What
/// `embedder behaviour` does, without re-embedding the catalog (the tests' store holds the
/// [`EMBEDDED_MOVIES`] most-rated movies of another database).
pub async fn attach_item_weights(pool: &sqlx::PgPool, dir: &Path, items: &behaviour::items::ItemParams) -> String {
    use vectorstore::{CollectionSpec, MoviePoint, Space, VectorStore as _};
    let run = embedder::behaviour::compute(pool, &behaviour::Params { dim: 8, ..Default::default() }, Some(items))
        .await
        .expect("item weights");
    println!("{}", run.render());
    let store = EdgeStore::open(dir).expect("store");
    let live = store.live().await.expect("live").expect("a live collection");
    let digests = store.digests(&live).await.expect("digests");
    let ids: Vec<u64> = digests.iter().map(|d| d.id).collect();
    let mut content = std::collections::HashMap::new();
    for chunk in ids.chunks(1_000) {
        content.extend(store.vectors(&live, Space::Content, chunk).await.expect("vectors"));
    }
    let points: Vec<MoviePoint> = digests
        .into_iter()
        .filter_map(|d| {
            let entry = run.vectors.items.get(&d.movie_id);
            Some(MoviePoint {
                id: d.id,
                vector: content.remove(&d.id)?,
                behaviour: None,
                item_dim: entry.and_then(|e| e.dim),
                items: entry.and_then(|e| e.vector.clone()),
                movie_id: d.movie_id,
                title: String::new(),
                year: None,
                genres: Vec::new(),
                text_hash: d.text_hash,
            })
        })
        .collect();
    let version: String =
        run.vectors.version.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
    let name = format!("movies_items_{version}");
    let spec = CollectionSpec {
        content_dim: points.first().map(|p| p.vector.len()).expect("points"),
        behaviour_dim: None,
        items: true,
        hnsw: Default::default(),
    };
    store.create_collection(&name, &spec).await.expect("create");
    for chunk in points.chunks(500) {
        store.upsert(&name, chunk.to_vec()).await.expect("upsert");
    }
    store.finish_bulk_load(&name).await.expect("index");
    store.set_live(&name).await.expect("live");
    name
}
