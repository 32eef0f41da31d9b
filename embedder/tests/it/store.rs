//! One behaviour suite for both stores: qdrant-edge always, a Qdrant server when QDRANT_URL is set.

use std::time::Duration;

use embedder::text::text_hash;
use vectorstore::edge::EdgeStore;
use vectorstore::point_id;
use vectorstore::server::ServerStore;
use vectorstore::{CollectionSpec, Hnsw, MoviePoint, SearchFilter, Space, VectorStore};

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

    let spec = CollectionSpec { content_dim: points[0].vector.len(), behaviour_dim: Some(3), hnsw: Hnsw::default() };
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_qdrant_edge_store_behaves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("open");
    behaves_like_a_vector_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qdrant_server_store_behaves_the_same() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        testkit::skip_or_fail(
            testkit::External::Qdrant,
            "QDRANT_URL is not set, so the qdrant-client store was not exercised",
        );
        return;
    };
    let store =
        ServerStore::connect(&url, std::env::var("QDRANT_API_KEY").ok(), Duration::from_secs(10)).expect("connect");
    behaves_like_a_vector_store(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_store_survives_a_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let points: Vec<MoviePoint> = points().into_iter().map(|p| MoviePoint { behaviour: None, ..p }).collect();
    {
        let store = EdgeStore::open(dir.path()).expect("open");
        let spec = CollectionSpec { content_dim: points[0].vector.len(), behaviour_dim: None, hnsw: Hnsw::default() };
        store.create_collection("movies_a", &spec).await.expect("create");
        store.upsert("movies_a", points.clone()).await.expect("upsert");
        store.finish_bulk_load("movies_a").await.expect("index");
        store.set_live("movies_a").await.expect("live");
    }
    let store = EdgeStore::open(dir.path()).expect("reopen");
    assert_eq!(store.live().await.expect("live").as_deref(), Some("movies_a"));
    assert_eq!(store.count("movies_a").await.expect("count"), 5);
}
