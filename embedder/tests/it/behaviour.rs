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
    let run = embedder::behaviour::compute(&db.pool, &behaviour::Params::default()).await.expect("compute");
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
