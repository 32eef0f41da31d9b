//! One behaviour suite for both stores: qdrant-edge always, a Qdrant server when QDRANT_URL is set.

use std::time::Duration;

use embedder::text::text_hash;
use vectorstore::edge::EdgeStore;
use vectorstore::point_id;
use vectorstore::server::ServerStore;
use vectorstore::{ClusterLayout, CollectionSpec, Hnsw, MoviePoint, SearchFilter, Space, VectorStore};

use crate::helpers::model;

fn points() -> Vec<MoviePoint> {
    let movies = [
        (
            "toy+story+1995",
            "Toy Story",
            "Animation",
            "A cowboy doll is threatened by a new spaceman toy in a boy's room.",
        ),
        (
            "toy+story+2+1999",
            "Toy Story 2",
            "Animation",
            "Woody the toy is stolen by a collector; Buzz and the other toys rescue him.",
        ),
        ("alien+1979", "Alien", "Horror", "The crew of a space freighter is hunted by a deadly alien creature."),
        ("aliens+1986", "Aliens", "Action", "Ripley returns to the alien planet with marines to fight the creatures."),
        (
            "notting+hill+1999",
            "Notting Hill",
            "Romance",
            "A London bookshop owner falls in love with a famous actress.",
        ),
    ];
    let texts: Vec<String> = movies.iter().map(|(_, t, g, o)| format!("{t}. Genres: {g}. {o}")).collect();
    let vectors = model().embed(&texts).expect("embed");
    movies
        .iter()
        .zip(vectors)
        .zip(&texts)
        .enumerate()
        .map(|(k, (((id, title, genre, _), vector), text))| MoviePoint {
            id: point_id(id),
            vector,
            // Behaviour vectors: the two Toy Story films were watched by the same people, the
            // Alien films by others; Notting Hill has too few viewers for one.
            behaviour: [
                Some(vec![1.0, 0.1, 0.0]),
                Some(vec![0.9, 0.2, 0.0]),
                Some(vec![0.0, 1.0, 0.1]),
                Some(vec![0.1, 0.9, 0.0]),
                None,
            ][k]
                .clone(),
            item_dim: None,
            items: None,
            movie_id: id.to_string(),
            title: title.to_string(),
            year: id.rsplit('+').next().and_then(|y| y.parse().ok()),
            genres: vec![genre.to_string()],
            text_hash: text_hash(text),
        })
        .collect()
}

async fn behaves_like_a_vector_store(store: &dyn VectorStore) {
    let name = format!("movies_test_{}", std::process::id());
    let points = points();
    let _ = store.drop_collection(&name).await;

    let spec = CollectionSpec {
        content_dim: points[0].vector.len(),
        behaviour_dim: Some(3),
        items: false,
        hnsw: Hnsw::default(),
    };
    store.create_collection(&name, &spec).await.expect("create");
    store.create_collection(&name, &spec).await.expect("create is idempotent");
    store.upsert(&name, points.clone()).await.expect("upsert");
    store.upsert(&name, points.clone()).await.expect("upsert is idempotent");
    store.finish_bulk_load(&name).await.expect("index");

    assert_eq!(store.count(&name).await.expect("count"), 5);
    let mut digests = store.digests(&name).await.expect("digests");
    digests.sort_by(|a, b| a.movie_id.cmp(&b.movie_id));
    assert_eq!(digests.len(), 5);
    assert!(
        digests
            .iter()
            .all(|d| points.iter().any(|p| p.id == d.id && p.text_hash == d.text_hash && p.movie_id == d.movie_id))
    );

    let toy = points[0].id;
    let stored = store.vectors(&name, Space::Content, &[toy, 42]).await.expect("vectors");
    assert_eq!(stored.len(), 1, "unknown ids are skipped");
    let cosine: f32 = stored[0].1.iter().zip(&points[0].vector).map(|(a, b)| a * b).sum();
    assert!(cosine > 0.999, "the stored vector is the one given ({cosine})");

    let unfiltered = store
        .search(&name, Space::Content, points[0].vector.clone(), 3, &SearchFilter::default())
        .await
        .expect("search");
    assert_eq!(unfiltered[0].movie_id, "toy+story+1995");
    assert_eq!(unfiltered[1].movie_id, "toy+story+2+1999", "{unfiltered:?}");
    let excluded = SearchFilter { exclude_ids: vec![toy], ..SearchFilter::default() };
    let hits = store.search(&name, Space::Content, points[0].vector.clone(), 5, &excluded).await.expect("search");
    assert!(hits.iter().all(|h| h.id != toy) && hits.len() == 4);
    let horror = SearchFilter { any_genre: vec!["Horror".into(), "Action".into()], ..SearchFilter::default() };
    let hits = store.search(&name, Space::Content, points[0].vector.clone(), 5, &horror).await.expect("search");
    let mut ids: Vec<&str> = hits.iter().map(|h| h.movie_id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, vec!["alien+1979", "aliens+1986"]);

    // The behaviour space: its own vectors, only the points that have one.
    let notting = points[4].id;
    let behaviour = store.vectors(&name, Space::Behaviour, &[toy, notting]).await.expect("behaviour vectors");
    assert_eq!(behaviour.len(), 1, "Notting Hill has no behaviour vector: {behaviour:?}");
    assert_eq!(behaviour[0].0, toy);
    let by_behaviour = store
        .search(
            &name,
            Space::Behaviour,
            vec![0.0, 1.0, 0.05],
            5,
            &SearchFilter { ef: Some(64), ..SearchFilter::default() },
        )
        .await
        .expect("behaviour search");
    let got: Vec<&str> = by_behaviour.iter().map(|h| h.movie_id.as_str()).collect();
    assert_eq!(got.len(), 4, "{got:?}");
    assert_eq!(&got[..2], ["alien+1979", "aliens+1986"], "{got:?}");

    store.delete(&name, vec![toy]).await.expect("delete");
    assert_eq!(store.count(&name).await.expect("count"), 4);

    let before = store.live().await.expect("live");
    store.set_live(&name).await.expect("set live");
    assert_eq!(store.live().await.expect("live").as_deref(), Some(name.as_str()));
    assert!(store.collections().await.expect("list").contains(&name));
    if let Some(before) = before {
        store.set_live(&before).await.expect("restore live");
    }
    store.drop_collection(&name).await.expect("drop");
    assert!(!store.collections().await.expect("list").contains(&name));
    assert!(store.set_live("movies_does_not_exist").await.is_err());
}

/// The Qdrant server at `QDRANT_URL`; without it the test is skipped (visibly) as not having
/// exercised `what`.
fn qdrant_server(what: &str) -> Option<ServerStore> {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        testkit::skip_or_fail(
            testkit::External::Qdrant,
            &format!("QDRANT_URL is not set, so {what} was not exercised"),
        );
        return None;
    };
    Some(
        ServerStore::connect(
            &url,
            std::env::var("QDRANT_API_KEY").ok(),
            Duration::from_secs(10),
            ClusterLayout::default(),
        )
        .expect("connect"),
    )
}

/// A Qdrant cluster of three nodes: collections are made with the configured shards, replicas
/// and write consistency, and answers stay the same when a node is lost.
///
/// Runs when `QDRANT_CLUSTER_URLS` names three nodes' gRPC URLs (comma-separated) and
/// `QDRANT_CLUSTER_STOP` is a shell command that stops the first of them (e.g. `kill <pid>`);
/// prints `SKIPPED` otherwise. (No Qdrant server can be installed on the project's machines:
/// it is not on crates.io, PyPI, npm or apt.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_cluster_answers_the_same_with_a_node_lost() {
    let (Ok(urls), Ok(stop)) = (std::env::var("QDRANT_CLUSTER_URLS"), std::env::var("QDRANT_CLUSTER_STOP")) else {
        testkit::skip_or_fail(
            testkit::External::Qdrant,
            "QDRANT_CLUSTER_URLS (three nodes) and QDRANT_CLUSTER_STOP are not set, so shards, replicas and a lost node were not exercised",
        );
        return;
    };
    assert_eq!(urls.split(',').count(), 3, "QDRANT_CLUSTER_URLS names three nodes");
    let layout = ClusterLayout { shard_number: 3, replication_factor: 2, write_consistency_factor: 2 };
    let store = ServerStore::connect(&urls, std::env::var("QDRANT_API_KEY").ok(), Duration::from_secs(10), layout)
        .expect("connect");
    let points = item_points();
    let name = format!("movies_cluster_{}", std::process::id());
    let spec = CollectionSpec { content_dim: 8, behaviour_dim: None, items: true, hnsw: Hnsw::default() };
    store.create_collection(&name, &spec).await.expect("create");
    assert_eq!(store.cluster_layout(&name).await.expect("layout"), layout, "the collection has the configured layout");
    store.upsert(&name, points.clone()).await.expect("upsert");
    let queries: Vec<vectorstore::ItemsQuery> = (0..20u32)
        .map(|k| vectorstore::ItemsQuery {
            query: vectorstore::SparseVector::new(
                (0..6).map(|i| ((k * 11 + i * 37) % 260, 1.0 - i as f32 * 0.1)).collect(),
            ),
            exclude_ids: vec![points[k as usize].id],
            limit: 20,
            fresh: Some(points[(k * 7) as usize % 300].vector.clone()),
            fresh_limit: 5,
            exact: true,
            ef: None,
        })
        .collect();
    let mut before = Vec::new();
    for q in &queries {
        let hits = store.search_items(&name, q).await.expect("search");
        let ids = |h: &[vectorstore::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
        let (weighted, fresh) = expected_items(&points, q);
        assert_eq!(ids(&hits.weighted), weighted, "the exact sparse answer over three shards");
        assert_eq!(ids(&hits.fresh), fresh);
        before.push((weighted, fresh));
    }
    let stopped = std::process::Command::new("sh").args(["-c", &stop]).status().expect("run QDRANT_CLUSTER_STOP");
    assert!(stopped.success(), "QDRANT_CLUSTER_STOP failed");
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (q, (weighted, fresh)) in queries.iter().zip(&before) {
        let hits = store.search_items(&name, q).await.expect("search with a node lost");
        assert_eq!(&hits.weighted.iter().map(|h| h.id).collect::<Vec<_>>(), weighted, "same answer with a node lost");
        assert_eq!(&hits.fresh.iter().map(|h| h.id).collect::<Vec<_>>(), fresh);
    }
    println!(
        "qdrant cluster: {layout:?}; 20 item queries answered the same after stopping a node (now on {})",
        store.current_node()
    );
    let _cleanup = store.drop_collection(&name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_qdrant_edge_store_behaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("open");
    behaves_like_a_vector_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_server_store_behaves_the_same() {
    let Some(store) = qdrant_server("the qdrant-client store") else { return };
    behaves_like_a_vector_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_store_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let points: Vec<MoviePoint> = points().into_iter().map(|p| MoviePoint { behaviour: None, ..p }).collect();
    {
        let store = EdgeStore::open(dir.path()).expect("open");
        let spec = CollectionSpec {
            content_dim: points[0].vector.len(),
            behaviour_dim: None,
            items: false,
            hnsw: Hnsw::default(),
        };
        store.create_collection("movies_a", &spec).await.expect("create");
        store.upsert("movies_a", points.clone()).await.expect("upsert");
        store.finish_bulk_load("movies_a").await.expect("index");
        store.set_live("movies_a").await.expect("live");
    }
    let store = EdgeStore::open(dir.path()).expect("reopen");
    assert_eq!(store.live().await.expect("live").as_deref(), Some("movies_a"));
    assert_eq!(store.count("movies_a").await.expect("count"), 5);
}

/// A fixed item-weights collection: 300 movies with 8-dim content vectors; movies 0..260 have a
/// dimension and (most of them) a sparse vector of 5–40 weights, some negative; 260..300 have
/// none (new movies). Deterministic (a linear congruential generator), no ties in practice.
fn item_points() -> Vec<MoviePoint> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as f32 / (1u64 << 31) as f32
    };
    (0..300)
        .map(|j| {
            let mut vector: Vec<f32> = (0..8).map(|_| next() - 0.5).collect();
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            vector.iter_mut().for_each(|x| *x /= norm);
            let weighted = j < 260;
            let items = (weighted && j % 13 != 0).then(|| {
                let n = 5 + (next() * 35.0) as usize;
                vectorstore::SparseVector::new((0..n).map(|_| ((next() * 260.0) as u32, next() * 2.0 - 0.4)).collect())
            });
            let movie_id = format!("movie+{j}");
            MoviePoint {
                id: point_id(&movie_id),
                vector,
                behaviour: None,
                item_dim: weighted.then_some(j as u32),
                items,
                title: format!("Movie {j}"),
                year: None,
                genres: Vec::new(),
                text_hash: format!("h{j}"),
                movie_id,
            }
        })
        .collect()
}

/// The exact answer of an item query, computed here: the sparse dot product over the points
/// that share a dimension with it, best first (ties by point id), and the nearest points
/// without weights by cosine.
fn expected_items(points: &[MoviePoint], query: &vectorstore::ItemsQuery) -> (Vec<u64>, Vec<u64>) {
    let q: std::collections::HashMap<u32, f32> = query.query.entries.iter().copied().collect();
    let mut weighted: Vec<(u64, f32)> = points
        .iter()
        .filter(|p| !query.exclude_ids.contains(&p.id))
        .filter_map(|p| {
            let v = p.items.as_ref()?;
            let shared: Vec<f32> = v.entries.iter().filter_map(|(d, w)| Some(q.get(d)? * w)).collect();
            (!shared.is_empty()).then(|| (p.id, shared.iter().sum()))
        })
        .collect();
    weighted.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut fresh: Vec<(u64, f32)> = match &query.fresh {
        None => Vec::new(),
        Some(probe) => points
            .iter()
            .filter(|p| p.items.is_none() && !query.exclude_ids.contains(&p.id))
            .map(|p| (p.id, p.vector.iter().zip(probe).map(|(a, b)| a * b).sum()))
            .collect(),
    };
    fresh.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let ids = |v: Vec<(u64, f32)>, n: usize| v.into_iter().take(n).map(|(id, _)| id).collect();
    (ids(weighted, query.limit), ids(fresh, query.fresh_limit))
}

fn item_queries(points: &[MoviePoint]) -> Vec<vectorstore::ItemsQuery> {
    (0..12)
        .map(|k| vectorstore::ItemsQuery {
            query: vectorstore::SparseVector::new(
                (0..(3 + k * 7)).map(|i| (((k * 31 + i * 17) % 260) as u32, 1.0 - (i as f32) * 0.01)).collect(),
            ),
            limit: 10,
            exclude_ids: (0..k).map(|i| points[(k * 11 + i * 23) % 300].id).collect(),
            fresh: (k % 2 == 0).then(|| points[k * 3].vector.clone()),
            fresh_limit: 3,
            exact: true,
            ef: None,
        })
        .collect()
}

/// Builds the fixed collection in `store` and checks every item search against the exact
/// answer; returns the hits (to compare engines).
async fn answers_item_searches_exactly(store: &dyn VectorStore) -> Vec<vectorstore::ItemsHits> {
    let name = format!("movies_items_test_{}", std::process::id());
    let points = item_points();
    let _ = store.drop_collection(&name).await;
    let spec = CollectionSpec { content_dim: 8, behaviour_dim: None, items: true, hnsw: Hnsw::default() };
    store.create_collection(&name, &spec).await.expect("create");
    store.upsert(&name, points.clone()).await.expect("upsert");
    store.finish_bulk_load(&name).await.expect("index");

    let dims = vectorstore::ItemDims::from_digests(&store.digests(&name).await.expect("digests"));
    assert_eq!((dims.dims.len(), dims.without), (260, 40));
    assert_eq!(dims.dims.get("movie+7"), Some(&7));
    let ids: Vec<u64> = points[..30].iter().map(|p| p.id).collect();
    let stored = store.item_vectors(&name, &ids).await.expect("item vectors");
    let expected: Vec<(u64, vectorstore::SparseVector)> =
        points[..30].iter().filter_map(|p| Some((p.id, p.items.clone()?))).collect();
    assert_eq!(stored.len(), expected.len(), "movies 0 and 13 and 26 have none");
    for ((id, got), (want_id, want)) in stored.iter().zip(&expected) {
        assert_eq!(id, want_id);
        assert_eq!(got.entries.len(), want.entries.len());
        for (a, b) in got.entries.iter().zip(&want.entries) {
            assert!(a.0 == b.0 && (a.1 - b.1).abs() < 1e-6, "{a:?} vs {b:?}");
        }
    }

    let mut all = Vec::new();
    for query in item_queries(&points) {
        let hits = store.search_items(&name, &query).await.expect("search items");
        let (weighted, fresh) = expected_items(&points, &query);
        let got: Vec<u64> = hits.weighted.iter().map(|h| h.id).collect();
        assert_eq!(got, weighted, "sparse search of {:?}", query.query);
        let got: Vec<u64> = hits.fresh.iter().map(|h| h.id).collect();
        assert_eq!(got, fresh, "content search among movies without weights");
        assert!(hits.weighted.iter().all(|h| h.movie_id.starts_with("movie+")));
        all.push(hits);
    }
    // A collection without item weights answers nothing (and no error).
    let plain = format!("{name}_plain");
    let _ = store.drop_collection(&plain).await;
    store.create_collection(&plain, &CollectionSpec { items: false, ..spec }).await.expect("create");
    let query = &item_queries(&points)[1];
    assert_eq!(store.search_items(&plain, query).await.expect("search"), vectorstore::ItemsHits::default());
    store.drop_collection(&plain).await.expect("drop");
    store.drop_collection(&name).await.expect("drop");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_store_answers_item_weight_searches_exactly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("open");
    answers_item_searches_exactly(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_server_store_answers_item_searches_like_the_edge_store() {
    let Some(server) = qdrant_server("the qdrant-client item-weights search") else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let edge = EdgeStore::open(dir.path()).expect("open");
    let on_server = answers_item_searches_exactly(&server).await;
    let on_edge = answers_item_searches_exactly(&edge).await;
    for (s, e) in on_server.iter().zip(&on_edge) {
        let ids = |h: &[vectorstore::Hit]| h.iter().map(|h| h.id).collect::<Vec<_>>();
        assert_eq!(ids(&s.weighted), ids(&e.weighted), "same candidates from both engines");
        assert_eq!(ids(&s.fresh), ids(&e.fresh));
        for (a, b) in s.weighted.iter().zip(&e.weighted) {
            assert!((a.score - b.score).abs() < 1e-4, "{a:?} vs {b:?}");
        }
    }
}
