//! Embedding a real catalog (a changed catalog is a new collection, live ones are never
//! modified), retrieval sanity, crash safety.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use embedder::pipeline::Embedder;
use embedder::text::{MovieFields, movie_text, text_hash};
use vectorstore::edge::EdgeStore;
use vectorstore::point_id;
use vectorstore::{SearchFilter, Space, VectorStore};

use crate::helpers::{assets_dir, bin, db_with_movielens, model};

async fn movie_id_of(pool: &sqlx::PgPool, ml_movie_id: i32) -> String {
    sqlx::query_scalar("SELECT movie_id FROM movies WHERE ml_movie_id = $1")
        .bind(ml_movie_id)
        .fetch_one(pool)
        .await
        .expect("movie")
}

async fn neighbours(store: &EdgeStore, collection: &str, movie_id: &str, k: usize) -> Vec<String> {
    let id = point_id(movie_id);
    let (_, vector) = store.vectors(collection, Space::Content, &[id]).await.expect("vector").pop().expect("present");
    let filter = SearchFilter { exclude_ids: vec![id], ..SearchFilter::default() };
    store
        .search(collection, Space::Content, vector, k, &filter)
        .await
        .expect("search")
        .into_iter()
        .map(|h| h.movie_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the model lock serialises model use across tests, on purpose
async fn the_default_catalog_embeds_searchably_franchises_cluster_and_a_changed_catalog_is_a_new_collection() {
    // 2,000 movies of the default catalog (embedding all 9,742 takes ~6 min on 2 cores) plus the
    // franchises checked below.
    const FRANCHISES: [i32; 9] = [1, 3114, 78499, 4993, 5952, 7153, 4896, 5816, 8368];
    let db = db_with_movielens(2_000, &FRANCHISES).await;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM movies").fetch_one(&db.pool).await.expect("count");
    let total = total as u64;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("store");
    let mut model = model();
    let mut embedder = Embedder {
        pool: &db.pool,
        store: &store,
        model: &mut model,
        progress: false,
        chunk: 512,
        hnsw: Default::default(),
        behaviour: None,
    };

    let full = embedder.run().await.expect("full embed");
    println!("full embed: {}", full.render());
    assert!(full.switched && full.movies == total && full.embedded == total && full.upserted == total, "{full:?}");
    assert!(total > 2_000);
    let live = store.live().await.expect("live").expect("a live collection");
    assert_eq!(live, full.collection);
    assert_eq!(store.count(&live).await.expect("count"), total);

    // Franchise siblings are neighbours (MovieLens ids: Toy Story 1/2/3, LOTR 1/2/3, Harry Potter 1/2/3).
    for (movie, siblings) in [(1, [3114, 78499]), (4993, [5952, 7153]), (4896, [5816, 8368])] {
        let movie = movie_id_of(&db.pool, movie).await;
        let near = neighbours(&store, &live, &movie, 10).await;
        let mut found = 0;
        for sibling in siblings {
            if near.contains(&movie_id_of(&db.pool, sibling).await) {
                found += 1;
            }
        }
        println!("{movie}: {near:?}");
        assert!(found >= 1, "no franchise sibling among the 10 nearest to {movie}: {near:?}");
    }

    let nothing = embedder.run().await.expect("no-op");
    assert_eq!((nothing.embedded, nothing.upserted, nothing.switched), (0, 0, false), "{nothing:?}");
    assert_eq!(nothing.collection, live);

    // One movie edited: a new collection (the live one is never modified), one text through
    // the model, the rest from the cache; the previous collection is kept for rollback, with
    // its old vector.
    let toy_story = vectorstore::point_id(&movie_id_of(&db.pool, 1).await);
    let before = store.vectors(&live, Space::Content, &[toy_story]).await.expect("vector");
    sqlx::query("UPDATE movies SET overview = 'A brand new overview.' WHERE ml_movie_id = 1")
        .execute(&db.pool)
        .await
        .expect("edit");
    let rebuilt = embedder.run().await.expect("changed catalog");
    println!("one movie changed: {}", rebuilt.render());
    assert!(rebuilt.switched && rebuilt.collection != live, "a changed catalog is a new collection");
    assert_eq!((rebuilt.changed, rebuilt.gone, rebuilt.embedded, rebuilt.cached), (1, 0, 1, total - 1));
    assert_eq!(store.vectors(&live, Space::Content, &[toy_story]).await.expect("vector"), before, "untouched");
    assert_ne!(store.vectors(&rebuilt.collection, Space::Content, &[toy_story]).await.expect("vector"), before);
    let mut kept = store.collections().await.expect("list");
    kept.sort();
    let mut expected = vec![live.clone(), rebuilt.collection.clone()];
    expected.sort();
    assert_eq!(kept, expected, "the previous collection is kept for rollback");

    // A collection a past answer read is never dropped: `live`, now two behind, stays.
    testkit::history::HistoryRow::new("r-1", chrono::Utc::now())
        .data_versions(&proto::contract::DataVersions { popularity: 1, collection: Some(live.clone()), exclude: None })
        .insert(&db.pool)
        .await;
    sqlx::query("UPDATE movies SET overview = 'Another overview.' WHERE ml_movie_id = 1")
        .execute(&db.pool)
        .await
        .expect("edit");
    let third = embedder.run().await.expect("a third catalog");
    assert!(third.switched && third.collection != rebuilt.collection);
    let mut kept = store.collections().await.expect("list");
    kept.sort();
    let mut expected = vec![live.clone(), rebuilt.collection.clone(), third.collection.clone()];
    expected.sort();
    assert_eq!(kept, expected, "the one history refers to is retained");
    let state: String = sqlx::query_scalar("SELECT state FROM embedding_collections WHERE name = $1")
        .bind(&live)
        .fetch_one(&db.pool)
        .await
        .expect("state");
    assert_eq!(state, "retained");

    // A fourth catalog: the second collection is dropped (neither live, previous nor named by
    // history). Back to the second catalog: built again in full. Back to the fourth, which is
    // `previous` and complete: switched to as it is, nothing written.
    let overview = |text: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query("UPDATE movies SET overview = $1 WHERE ml_movie_id = 1")
                .bind(text)
                .execute(&pool)
                .await
                .expect("edit");
        }
    };
    overview("A third overview.").await;
    let fourth = embedder.run().await.expect("a fourth catalog");
    assert!(!store.collections().await.expect("list").contains(&rebuilt.collection), "dropped");
    overview("A brand new overview.").await;
    let again = embedder.run().await.expect("back to the second catalog");
    assert!(again.switched && again.collection == rebuilt.collection && again.upserted == total, "{again:?}");
    overview("A third overview.").await;
    let back = embedder.run().await.expect("back to the fourth catalog");
    assert!(back.switched && back.collection == fourth.collection && back.upserted == 0, "{back:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_full_embed_and_rerunning_gives_a_complete_consistent_collection() {
    let db = db_with_movielens(2_000, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let run = || {
        Command::new(bin())
            .args(["embed", "--no-progress", "--chunk", "64"])
            .env("DATABASE_URL", &db.url)
            .env("LAZYREC_EDGE_DIR", dir.path())
            .env("LAZYREC_ASSETS_DIR", assets_dir())
            .env_remove("QDRANT_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn embedder")
    };
    let cached = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM embedding_cache").fetch_one(&db.pool).await.expect("count")
    };

    let mut child = run();
    let deadline = Instant::now() + Duration::from_secs(120);
    while cached().await < 300 {
        assert!(Instant::now() < deadline, "the embedder made no progress");
        if let Ok(Some(status)) = child.try_wait() {
            panic!("embedder exited early: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().expect("kill -9");
    let _ = child.wait();
    let at_kill = cached().await;
    assert!(at_kill < 2_000, "killed too late ({at_kill})");
    let store = EdgeStore::open(dir.path()).expect("store");
    assert_eq!(store.live().await.expect("live"), None, "nothing is live before a build completes");

    let out = run().wait_with_output().expect("rerun");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let live = store.live().await.expect("live").expect("live after the rerun");
    let digests = store.digests(&live).await.expect("digests");
    let rows: Vec<MovieFields> =
        sqlx::query_as("SELECT movie_id, title, year, genres, overview, tagline, keywords FROM movies")
            .fetch_all(&db.pool)
            .await
            .expect("movies");
    assert_eq!(digests.len(), rows.len());
    for m in &rows {
        let d =
            digests.iter().find(|d| d.id == point_id(&m.movie_id)).unwrap_or_else(|| panic!("{} missing", m.movie_id));
        assert_eq!(d.text_hash, text_hash(&movie_text(m)), "{}", m.movie_id);
    }
    assert_eq!(cached().await, 2_000, "each text embedded once across both runs");
}

#[test]
fn a_missing_model_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `embedder query` against this store and an empty assets dir: must fail with one line.
    let fails_with = |expected: &str| {
        let out = Command::new(bin())
            .args(["query", "space adventure"])
            .env("LAZYREC_EDGE_DIR", dir.path())
            .env("LAZYREC_ASSETS_DIR", dir.path())
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    fails_with("no live collection");

    let store = EdgeStore::open(dir.path()).expect("store");
    let rt = tokio::runtime::Runtime::new().expect("rt");
    rt.block_on(async {
        let spec = vectorstore::CollectionSpec {
            content_dim: 4,
            behaviour_dim: None,
            items: false,
            hnsw: vectorstore::Hnsw::default(),
        };
        store.create_collection("movies_x", &spec).await.expect("create");
        store.set_live("movies_x").await.expect("live");
    });
    fails_with("cannot read the ONNX Runtime library");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the model lock serialises model use across tests, on purpose
async fn a_run_with_another_model_builds_a_new_collection_instead_of_mixing_vectors() {
    let db = db_with_movielens(40, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("store");
    let first = {
        let mut model = model();
        Embedder {
            pool: &db.pool,
            store: &store,
            model: &mut model,
            progress: false,
            chunk: 64,
            hnsw: Default::default(),
            behaviour: None,
        }
        .run()
        .await
        .expect("first model")
    };
    // The same weights truncated differently are another model (another id): no mixing.
    let paths = embedder::model::ModelPaths::in_assets_dir(&assets_dir());
    let mut other = embedder::model::Model::load(&paths, 2, 64).expect("second model");
    let second = Embedder {
        pool: &db.pool,
        store: &store,
        model: &mut other,
        progress: false,
        chunk: 64,
        hnsw: Default::default(),
        behaviour: None,
    }
    .run()
    .await
    .expect("second model");
    assert!(second.switched && second.collection != first.collection, "{second:?}");
    assert_eq!((second.embedded, second.upserted), (40, 40));
    assert_eq!(store.live().await.expect("live"), Some(second.collection.clone()));
}
