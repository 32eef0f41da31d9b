//! Behaviour vectors: computed from the interactions in Postgres, stored next to the content
//! vectors as the `behaviour` named vector, carried over when a content run builds a new collection.

use db::testing::TestDb;
use embedder::pipeline::{Embedder, behaviour_version};
use vectorstore::edge::EdgeStore;
use vectorstore::{SearchFilter, Space, VectorStore, point_id};

use crate::helpers::model;

/// The default dataset with its ratings, the catalog cut to the `keep` most-rated movies (the
/// interactions of the others stay: they still shape the behaviour space).
async fn default_data(keep: i64) -> TestDb {
    let db = TestDb::new().await;
    db::cli::load_movielens(&db.pool, &db.url, &db::import::movielens::MovieLensPaths::bundled(), false)
        .await
        .expect("load MovieLens");
    sqlx::query(
        "DELETE FROM movies WHERE movie_id NOT IN (SELECT movie_id FROM ratings GROUP BY movie_id ORDER BY count(*) DESC, movie_id LIMIT $1)",
    )
    .bind(keep)
    .execute(&db.pool)
    .await
    .expect("subset");
    db
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the model lock serialises model use across tests, on purpose
async fn behaviour_vectors_live_next_to_content_and_survive_content_runs() {
    let db = default_data(300).await;
    let run = embedder::behaviour::compute(&db.pool, &behaviour::Params::default(), None).await.expect("compute");
    println!("{}", run.render());
    assert_eq!(run.watermark, 100_836);
    assert!(run.vectors.by_movie.len() > 5_000, "{}", run.render());

    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("store");
    let mut model = model();
    let version = run.vectors.version.clone();
    let mut embedder = Embedder {
        pool: &db.pool,
        store: &store,
        model: &mut model,
        progress: false,
        chunk: 128,
        hnsw: Default::default(),
        behaviour: Some(run.vectors),
    };
    let built = embedder.run().await.expect("build");
    let live = store.live().await.expect("live").expect("a live collection");
    assert_eq!(live, built.collection);
    assert_eq!(behaviour_version(&live), Some(version.as_str()), "{live}");

    let catalog: Vec<String> =
        sqlx::query_scalar("SELECT movie_id FROM movies").fetch_all(&db.pool).await.expect("movies");
    let ids: Vec<u64> = catalog.iter().map(|m| point_id(m)).collect();
    let with_behaviour = store.vectors(&live, Space::Behaviour, &ids).await.expect("vectors").len();
    assert_eq!(with_behaviour, catalog.len(), "the 300 most-rated movies all have enough viewers");

    // Behaviour neighbours in the store: Toy Story 2's are other animated family films.
    let toy = point_id("toy+story+2+1999");
    let (_, v) = store.vectors(&live, Space::Behaviour, &[toy]).await.expect("toy").pop().expect("a vector");
    let hits = store
        .search(&live, Space::Behaviour, v, 10, &SearchFilter { exclude_ids: vec![toy], ..SearchFilter::default() })
        .await
        .expect("search");
    let genres: Vec<(String, Vec<String>)> =
        sqlx::query_as("SELECT movie_id, genres FROM movies WHERE movie_id = ANY($1)")
            .bind(hits.iter().map(|h| h.movie_id.clone()).collect::<Vec<_>>())
            .fetch_all(&db.pool)
            .await
            .expect("genres");
    let family = genres.iter().filter(|(_, g)| g.iter().any(|x| x == "Animation" || x == "Children")).count();
    println!("{hits:?}");
    assert!(family >= 4, "{genres:?}");

    // A content edit: a new collection that carries the live behaviour vectors (and their
    // version) over, the edited movie's included; the live one is not touched.
    sqlx::query("UPDATE movies SET overview = 'A brand new overview.' WHERE movie_id = 'toy+story+2+1999'")
        .execute(&db.pool)
        .await
        .expect("edit");
    embedder.behaviour = None;
    let rebuilt = embedder.run().await.expect("content run");
    assert!(rebuilt.switched && rebuilt.collection != live, "{rebuilt:?}");
    assert_eq!((rebuilt.changed, rebuilt.embedded), (1, 1), "{rebuilt:?}");
    assert_eq!(behaviour_version(&rebuilt.collection), Some(version.as_str()));
    assert_eq!(store.vectors(&rebuilt.collection, Space::Behaviour, &[toy]).await.expect("toy").len(), 1, "kept");
    let carried = store.vectors(&rebuilt.collection, Space::Behaviour, &ids).await.expect("vectors").len();
    assert_eq!(carried, catalog.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)] // the model lock serialises model use across tests, on purpose
async fn item_weights_are_stored_as_sparse_vectors_searched_exactly_and_carried_over() {
    let db = default_data(300).await;
    let items = behaviour::items::ItemParams { max_items: 3_000, top_k: 200, ..Default::default() };
    let run =
        embedder::behaviour::compute(&db.pool, &behaviour::Params::default(), Some(&items)).await.expect("compute");
    println!("{}", run.render());
    assert_eq!(run.item_movies, 3_000, "the 3,000 most watched movies are in the item model");
    assert!(run.vectors.version.contains(&items.version()), "{}", run.vectors.version);

    let dir = tempfile::tempdir().expect("tempdir");
    let store = EdgeStore::open(dir.path()).expect("store");
    let mut model = model();
    let version = run.vectors.version.clone();
    let entries = run.vectors.items.clone();
    let mut embedder = Embedder {
        pool: &db.pool,
        store: &store,
        model: &mut model,
        progress: false,
        chunk: 128,
        hnsw: Default::default(),
        behaviour: Some(run.vectors),
    };
    let built = embedder.run().await.expect("build");
    assert_eq!(behaviour_version(&built.collection), Some(version.as_str()));
    let dims = vectorstore::ItemDims::from_digests(&store.digests(&built.collection).await.expect("digests"));
    assert_eq!(dims.dims.len() + dims.without, 300);
    assert_eq!(dims.dims.len(), 300, "the 300 most-rated movies are among the 3,000 most watched");

    // The store's sparse search gives the model's score Σ w_i B[i, j] for a history, exactly:
    // recompute it from the entries the job produced.
    let history = ["toy+story+1995", "toy+story+2+1999", "monsters_+inc.+2001"];
    let query = vectorstore::SparseVector::new(history.iter().map(|m| (dims.dims[*m], 1.0)).collect());
    let exclude: Vec<u64> = history.iter().map(|m| point_id(m)).collect();
    let hits = store
        .search_items(
            &built.collection,
            &vectorstore::ItemsQuery { query: query.clone(), limit: 10, exclude_ids: exclude, ..Default::default() },
        )
        .await
        .expect("search");
    let catalog: Vec<String> =
        sqlx::query_scalar("SELECT movie_id FROM movies").fetch_all(&db.pool).await.expect("movies");
    let mut expected: Vec<(String, f32)> = catalog
        .iter()
        .filter(|m| !history.contains(&m.as_str()))
        .filter_map(|m| {
            let v = entries.get(m)?.vector.as_ref()?;
            let s: Vec<f32> =
                v.entries.iter().filter(|(d, _)| query.entries.iter().any(|(q, _)| q == d)).map(|(_, w)| *w).collect();
            (!s.is_empty()).then(|| (m.clone(), s.iter().sum()))
        })
        .collect();
    expected.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("{:?}", hits.weighted.iter().map(|h| (&h.movie_id, h.score)).collect::<Vec<_>>());
    for (hit, (m, s)) in hits.weighted.iter().zip(&expected) {
        assert!((hit.score - s).abs() < 1e-4, "{} {} vs {m} {s}", hit.movie_id, hit.score);
    }
    assert_eq!(hits.weighted.len(), 10);
    let genres: Vec<Vec<String>> = sqlx::query_scalar("SELECT genres FROM movies WHERE movie_id = ANY($1)")
        .bind(hits.weighted.iter().map(|h| h.movie_id.clone()).collect::<Vec<_>>())
        .fetch_all(&db.pool)
        .await
        .expect("genres");
    let family = genres.iter().filter(|g| g.iter().any(|x| x == "Animation" || x == "Children")).count();
    assert!(family >= 5, "Pixar fans get family films: {genres:?}");

    // A content run carries the weights over to the new collection, unchanged.
    sqlx::query("UPDATE movies SET overview = 'A brand new overview.' WHERE movie_id = 'toy+story+2+1999'")
        .execute(&db.pool)
        .await
        .expect("edit");
    embedder.behaviour = None;
    let rebuilt = embedder.run().await.expect("content run");
    assert!(rebuilt.switched && rebuilt.collection != built.collection);
    let ids: Vec<u64> = catalog.iter().map(|m| point_id(m)).collect();
    let before = store.item_vectors(&built.collection, &ids).await.expect("before");
    let after = store.item_vectors(&rebuilt.collection, &ids).await.expect("after");
    assert!(!before.is_empty());
    assert_eq!(before, after, "item weights carried over");
    let dims_after = vectorstore::ItemDims::from_digests(&store.digests(&rebuilt.collection).await.expect("digests"));
    assert_eq!(dims_after, dims);
}
