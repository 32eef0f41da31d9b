//! Replay against the real stack (two servers with real embeddings, the load balancer logging
//! history, Postgres with the default dataset): every answer replays identically — also after
//! further ingest moved the watermark (re-watches and re-ratings of the same users), after a new
//! popularity run, after main changed model (to a server with a non-default search `ef`,
//! which the replay reads from the model's record), and after a new vector collection (built by the
//! real embedder for a changed catalog) went live: 1,000 answers in all — and a row whose inputs
//! are gone is reported as not reproducible, never as a match. Pruning old history keeps what
//! the remaining answers need.

use testkit::{fleet, stack as helpers};

use std::time::Duration;

use db::ingest::{IngestOptions, Ingester};
use db::parse::{DEFAULT_MAX_USER_ID, ParseConfig};
use db::source::StreamSource;
use provenance::replay::{Outcome, Replayer};

use crate::support::{ask, replay_all, route, shipped};
use sqlx::Connection as _;
use vectorstore::VectorStore as _;

/// Answers of the same users that differ between request-id sets `a` and `b`.
async fn changed_answers(pool: &sqlx::PgPool, a: &[String], b: &[String]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM recommendations_history a JOIN recommendations_history b ON a.user_id = b.user_id
         WHERE a.request_id = ANY($1) AND b.request_id = ANY($2) AND a.movie_ids <> b.movie_ids",
    )
    .bind(a)
    .bind(b)
    .fetch_one(pool)
    .await
    .expect("changed answers")
}

/// Ingests course log lines through the ordinary ingester.
async fn ingest(url: &str, name: &str, lines: &str) {
    let conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let opts = IngestOptions {
        parse: ParseConfig { rating_scale: 10, max_user_id: DEFAULT_MAX_USER_ID },
        ..IngestOptions::default()
    };
    let source =
        StreamSource::new(name.to_string(), std::io::Cursor::new(lines.as_bytes().to_vec()), Duration::from_secs(1));
    Ingester::run_once(conn, opts, vec![Box::new(source)]).await.expect("ingest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_answers_replay_identically_after_ingest_a_popularity_run_a_model_change_and_a_new_collection() {
    let fleet = fleet::Fleet::new().await;
    let pool = fleet.stack.db.pool.clone();
    let state_dir = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state_dir.path())).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);
    // The vectors as the servers have them: a copy of the store (the servers hold theirs open).
    let vectors = fleet.stack.edge_copy().await;
    let store =
        vectorstore::open(None, None, Duration::from_secs(30), Some(vectors.path()), vectors.path()).expect("store");
    let mut replayer = Replayer::new(pool.clone(), store);

    // 1. Known users (personal answers from both variants) and unknown ones (cold start).
    let users: Vec<i64> = (1..=240).chain(900_001..=900_010).collect();
    let first = ask(&base, users.iter().copied()).await;
    shipped(&pool, &first).await;
    let kinds: Vec<(String, i64)> = sqlx::query_as(
        "SELECT inputs->>'kind', count(*) FROM recommendations_history WHERE request_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(&first)
    .fetch_all(&pool)
    .await
    .expect("kinds");
    println!("answers by kind: {kinds:?}");
    let tally = replay_all(&mut replayer, &first).await;
    println!("as answered: {tally:?}");
    assert_eq!((tally.identical, tally.different), (first.len() as u64, 0), "{tally:?}");

    // 2. The watermark moves: the same users re-watch what they had, rate it again, watch new
    // movies; a new popularity run lands. The old answers still replay identically (history as
    // of their watermark, their popularity run), and new answers too.
    let movies: Vec<String> = sqlx::query_scalar("SELECT movie_id FROM popularity ORDER BY rank LIMIT 30")
        .fetch_all(&pool)
        .await
        .expect("movies");
    let mut log = String::new();
    for user in 1..=120_i64 {
        let seen = fleet.stack.seen(user).await;
        for m in seen.iter().take(3) {
            log.push_str(&format!("2030-01-01T10:00:00,{user},GET /data/m/{m}/1.mpg\n"));
            log.push_str(&format!("2030-01-01T10:00:01,{user},GET /rate/{m}=1\n"));
        }
        for m in movies.iter().skip(user as usize % 10).take(4) {
            log.push_str(&format!("2030-01-01T10:01:00,{user},GET /data/m/{m}/1.mpg\n"));
        }
    }
    ingest(&fleet.stack.db.url, "more-events", &log).await;
    db::popularity::refresh(&pool, db::popularity::PopularityParams::default()).await.expect("popularity");
    tokio::time::sleep(Duration::from_millis(1_500)).await; // the servers' refresh picks it up
    let second = ask(&base, users.iter().copied()).await;
    shipped(&pool, &second).await;
    let moved = changed_answers(&pool, &first, &second).await;
    assert!(moved > 50, "the new events changed many answers ({moved})");
    let tally = replay_all(&mut replayer, &[first.clone(), second.clone()].concat()).await;
    println!("after ingest and a popularity run: {tally:?}");
    assert_eq!((tally.identical, tally.different), (2 * first.len() as u64, 0), "{tally:?}");

    // 3. Main changes model (a neighbours-v1 server, as a promotion or rollback would do: it
    // asks for another number of neighbours per seed than v2, from the same collection).
    let edge = fleet.stack.edge_copy().await;
    let mut config = fleet.stack.config();
    config.store.edge_dir = Some(edge.path().to_path_buf());
    config.state_dir = edge.path().to_path_buf();
    config.model = strategy::ModelSpec { strategy: "neighbours-v1".into(), params: serde_json::json!({}) };
    // With another search breadth than the default: part of its model, recorded with it, so the
    // replays below read it from `models` (no flag says it).
    config.store.search_ef = Some(64);
    let v1 = server::start(config).await.expect("neighbours-v1 server");
    let admin_url = format!("http://{}", lb.admin_addr.expect("admin"));
    route(&admin_url, "main", &format!("http://{}", v1.http_addr)).await;
    let third = ask(&base, users.iter().copied()).await;
    shipped(&pool, &third).await;
    let models: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT model_version FROM recommendations_history ORDER BY 1")
            .fetch_all(&pool)
            .await
            .expect("models");
    assert!(models.iter().any(|m| m.starts_with("neighbours-v1@")), "{models:?}");
    let search: serde_json::Value =
        sqlx::query_scalar("SELECT search FROM models WHERE model_version LIKE 'neighbours-v1@%'")
            .fetch_one(&pool)
            .await
            .expect("the v1 model's search parameters");
    assert_eq!(search, serde_json::json!({"exact": false, "ef": 64}));
    let so_far = [first.clone(), second.clone(), third.clone()].concat();
    let tally = replay_all(&mut replayer, &so_far).await;
    println!("after the model change: {tally:?}");
    assert_eq!((tally.identical, tally.different), (so_far.len() as u64, 0), "{tally:?}");

    // 4. A new vector collection goes live. The catalog changes (the overviews of the 300
    // most-rated movies rotate among them); the real embedder builds a new collection for it in
    // the master store (only the changed texts go through the model, the rest come from the
    // vector cache, seeded here from the live collection) and switches to it, keeping the old
    // one; main and nightly move to a server with the new collection (a deploy). Old answers
    // replay against the collection they read, new ones against the new one.
    let master = fleet.stack.edge_copy().await;
    let catalog = helpers::embedded_catalog_db().await;
    let (old_collection, report) = {
        let store = vectorstore::edge::EdgeStore::open(master.path()).expect("master store");
        let old = store.live().await.expect("live").expect("a live collection");
        let mut model = helpers::embedding_model().await;
        let digests = store.digests(&old).await.expect("digests");
        let hash: std::collections::HashMap<u64, String> =
            digests.iter().map(|d| (d.id, d.text_hash.clone())).collect();
        let ids: Vec<u64> = digests.iter().map(|d| d.id).collect();
        for (id, vector) in store.vectors(&old, vectorstore::Space::Content, &ids).await.expect("vectors") {
            sqlx::query("INSERT INTO embedding_cache (model, text_hash, vector) VALUES ($1, $2, $3)")
                .bind(model.id())
                .bind(&hash[&id])
                .bind(&vector)
                .execute(&catalog.pool)
                .await
                .expect("seed the cache");
        }
        sqlx::query(
            "WITH top AS (SELECT movie_id, overview, row_number() OVER (ORDER BY movie_id) AS i, count(*) OVER () AS n
                          FROM movies WHERE movie_id IN (SELECT movie_id FROM ratings GROUP BY movie_id
                                                         ORDER BY count(*) DESC, movie_id LIMIT 300))
             UPDATE movies m SET overview = b.overview FROM top a JOIN top b ON b.i = a.i % a.n + 1
             WHERE m.movie_id = a.movie_id",
        )
        .execute(&catalog.pool)
        .await
        .expect("rotate overviews");
        let report = helpers::embed(&catalog.pool, &store, &mut model).await;
        println!("new collection: {}", report.render());
        (old, report)
    };
    assert!(report.switched && report.collection != old_collection, "{report:?}");
    assert!(report.changed >= 250 && report.embedded == report.changed, "{report:?}");
    let deployed = tempfile::tempdir().expect("deployed store");
    helpers::copy_dir(master.path(), deployed.path());
    let mut config = fleet.stack.config();
    config.store.edge_dir = Some(deployed.path().to_path_buf());
    config.state_dir = deployed.path().to_path_buf();
    let renewed = server::start(config).await.expect("server with the new collection");
    let renewed_url = format!("http://{}", renewed.http_addr);
    helpers::wait_ready(&renewed_url).await;
    for role in ["main", "nightly"] {
        route(&admin_url, role, &renewed_url).await;
    }
    let cut = chrono::Utc::now();
    let fourth = ask(&base, users.iter().copied()).await;
    shipped(&pool, &fourth).await;
    let read: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT collection, count(*) FROM recommendation_provenance WHERE request_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(&fourth)
    .fetch_all(&pool)
    .await
    .expect("collections read");
    println!("collections the fourth round read: {read:?}");
    assert!(read.iter().all(|(c, _)| c.as_deref() != Some(old_collection.as_str())), "{read:?}");
    assert!(read.iter().any(|(c, n)| c.as_deref() == Some(report.collection.as_str()) && *n >= 200), "{read:?}");
    let moved = changed_answers(&pool, &second, &fourth).await;
    println!("answers changed by the new collection alone (same data, same model): {moved}");
    assert!(moved > 20, "the new collection changed answers ({moved})");
    // The store without the new collection cannot replay the new answers: reported, never a match.
    let (_, outcome) = replayer.replay(&fourth[0]).await.expect("replay");
    assert!(matches!(&outcome, Outcome::NotReproducible { why } if why.contains("is gone")), "{outcome:?}");
    let mut replayer = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(master.path()), master.path()).expect("store"),
    );
    let all = [first.clone(), second.clone(), third, fourth.clone()].concat();
    let started = std::time::Instant::now();
    let tally = replay_all(&mut replayer, &all).await;
    println!(
        "after the new collection went live: {tally:?} ({:.0} rows/s)",
        all.len() as f64 / started.elapsed().as_secs_f64()
    );
    assert_eq!(all.len(), 1_000);
    assert_eq!((tally.identical, tally.different), (all.len() as u64, 0), "{tally:?}");

    // The SQL answer for one row: model, code, data.
    let p = provenance::show::provenance(&pool, &first[0]).await.expect("show").expect("row");
    print!("{}", p.render());
    assert_eq!(p.strategy.as_deref(), Some("neighbours-v2"));
    assert!(p.code_git_sha.is_some() && p.popularity_run == Some(1) && p.collection.is_some(), "{p:?}");
    // (The collection's model/template come from embedding_collections, which the embedder
    // writes in its own database: the tests' shared store was embedded with another one.)
    assert!(p.sources.iter().any(|s| s.last_event_id.is_some_and(|l| l <= p.data_watermark.unwrap_or(0))));

    // 4. Inputs gone → not reproducible, never a match: the first popularity run pruned, and a
    // store without the collection.
    sqlx::query("DELETE FROM popularity_run_movies WHERE run_id = 1").execute(&pool).await.expect("prune");
    let mut fresh = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(vectors.path()), vectors.path()).expect("store"),
    );
    let (_, outcome) = fresh.replay(&first[0]).await.expect("replay");
    assert!(
        matches!(&outcome, Outcome::NotReproducible { why } if why.contains("popularity run 1 is gone")),
        "{outcome:?}"
    );
    let empty = tempfile::tempdir().expect("empty store");
    let mut no_vectors = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(empty.path()), empty.path()).expect("store"),
    );
    let personal: String = sqlx::query_scalar(
        "SELECT request_id FROM recommendations_history WHERE request_id = ANY($1) AND inputs->>'kind' = 'personal'
           AND model_version LIKE 'neighbours-v2@%' LIMIT 1",
    )
    .bind(&all)
    .fetch_one(&pool)
    .await
    .expect("a personal answer");
    let (_, outcome) = no_vectors.replay(&personal).await.expect("replay");
    assert!(matches!(&outcome, Outcome::NotReproducible { why } if why.contains("is gone")), "{outcome:?}");

    // 5. Prune everything answered before the fourth round: 750 rows go; what the fourth round
    // read stays, and its answers still replay identically; a pruned id is no longer known.
    let pruned = provenance::prune::prune(
        &pool,
        &vectorstore::edge::EdgeStore::open(empty.path()).expect("store"),
        cut,
        false,
        |_| {},
    )
    .await
    .expect("prune");
    print!("{}", pruned.render());
    assert_eq!(pruned.history_rows, 750, "{pruned:?}");
    let tally = replay_all(&mut replayer, &fourth).await;
    assert_eq!((tally.identical, tally.different), (fourth.len() as u64, 0), "{tally:?}");
    assert!(matches!(replayer.replay(&first[1]).await, Err(provenance::replay::ReplayError::NotFound(_))));

    renewed.shutdown().await.expect("renewed server");
    v1.shutdown().await.expect("neighbours-v1 server");
    lb.shutdown().await.expect("lb shutdown");
    fleet.shutdown().await;
}
