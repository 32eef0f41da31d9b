//! items-v1 on the real stack: servers answering from item weights stored as sparse vectors in
//! qdrant-edge, the load balancer logging history. Every answer takes at most two store calls
//! and replays identically — also after new weights (fitted after more events) went live in a
//! new collection and the servers moved to it: 1,000 answers in all.

use std::time::Duration;

use provenance::replay::Replayer;
use server::config::Variant;
use testkit::{fleet, stack as helpers};

use crate::support::{ask, replay_all, route, shipped};

fn items_v1() -> strategy::ModelSpec {
    strategy::ModelSpec { strategy: "items-v1".into(), params: serde_json::json!({}) }
}

/// A server reading the edge store in `dir` with items-v1.
async fn items_server(stack: &helpers::Stack, dir: &std::path::Path, variant: Variant) -> server::RunningServer {
    let mut config = stack.config();
    config.variant = variant;
    config.store.edge_dir = Some(dir.to_path_buf());
    config.state_dir = dir.to_path_buf();
    config.model = items_v1();
    let running = server::start(config).await.expect("items-v1 server");
    helpers::wait_ready(&format!("http://{}", running.http_addr)).await;
    running
}

/// `(requests, requests with at most two store calls)` from a server's histogram.
fn store_calls(server: &server::RunningServer) -> (u64, u64) {
    let metrics = server.core.metrics.render();
    let value = |prefix: &str, contains: &str| -> u64 {
        metrics
            .lines()
            .find(|l| l.starts_with(prefix) && l.contains(contains))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {metrics}"))
    };
    (value("lazyrec_server_store_calls_count", ""), value("lazyrec_server_store_calls_bucket", "le=\"2\"}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_v1_answers_take_two_store_calls_at_most_and_replay_identically_after_new_weights() {
    let stack = helpers::Stack::new().await;
    let pool = stack.db.pool.clone();
    // The master store: the tests' embedded catalog plus item weights fitted on the database.
    let master = stack.edge_copy().await;
    let weights = behaviour::items::ItemParams { max_items: 3_000, ..Default::default() };
    let first_collection = helpers::attach_item_weights(&pool, master.path(), &weights).await;
    let (main_dir, nightly_dir) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
    helpers::copy_dir(master.path(), main_dir.path());
    helpers::copy_dir(master.path(), nightly_dir.path());
    let main = items_server(&stack, main_dir.path(), Variant::Main).await;
    let nightly = items_server(&stack, nightly_dir.path(), Variant::Nightly).await;
    let state_dir = tempfile::tempdir().expect("state");
    let lb_config = loadbalancer::config::Config {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        grpc_addr: "127.0.0.1:0".parse().expect("addr"),
        admin_addr: "127.0.0.1:0".parse().expect("addr"),
        admin_token: Some(fleet::TOKEN.into()),
        main: vec![format!("http://{}", main.http_addr)],
        nightly: vec![format!("http://{}", nightly.http_addr)],
        experiment: "test-items".into(),
        database_url: Some(stack.db.url.clone()),
        state_dir: state_dir.path().to_path_buf(),
        health: loadbalancer::config::Health { interval_ms: 100, timeout_ms: 200, rise: 2, fall: 3 },
        fallback_refresh_ms: 500,
        ..loadbalancer::config::Config::default()
    };
    let lb = loadbalancer::start(lb_config).await.expect("lb");
    let base = format!("http://{}", lb.http_addr);

    // 1. Known users (every one of the 610 has a history) and unknown ones (cold start).
    let users: Vec<i64> = (1..=490).chain(900_001..=900_010).collect();
    let first = ask(&base, users.iter().copied()).await;
    shipped(&pool, &first).await;
    let kinds: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT inputs->>'kind', coalesce(inputs->'data_versions'->>'collection', ''), count(*) FROM recommendations_history
         WHERE request_id = ANY($1) GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(&first)
    .fetch_all(&pool)
    .await
    .expect("kinds");
    println!("answers by kind and collection: {kinds:?}");
    assert!(kinds.iter().any(|(k, c, n)| k == "personal" && c == &first_collection && *n == 490), "{kinds:?}");
    assert!(!kinds.iter().any(|(k, _, _)| k == "degraded"), "{kinds:?}");
    for server in [&main, &nightly] {
        let (requests, within) = store_calls(server);
        println!("store calls: {within} of {requests} requests made at most two");
        assert!(requests > 0 && within == requests, "{requests} requests, {within} with ≤ 2 store calls");
    }
    let mut replayer = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(master.path()), master.path()).expect("store"),
    );
    let tally = replay_all(&mut replayer, &first).await;
    println!("as answered: {tally:?}");
    assert_eq!((tally.identical, tally.different), (first.len() as u64, 0), "{tally:?}");
    drop(replayer); // a qdrant-edge collection is open in one place at a time

    // 2. More events (the first 120 users watch 4 popular movies each), then new weights with
    // another pruning: a new collection in the master store, deployed to a new server that
    // takes main and nightly.
    let movies: Vec<String> = sqlx::query_scalar("SELECT movie_id FROM popularity ORDER BY rank LIMIT 30")
        .fetch_all(&pool)
        .await
        .expect("movies");
    let mut log = String::new();
    for user in 1..=120_i64 {
        for m in movies.iter().skip(user as usize % 10).take(4) {
            log.push_str(&format!("2030-01-01T10:01:00,{user},GET /data/m/{m}/1.mpg\n"));
        }
    }
    let conn = <sqlx::PgConnection as sqlx::Connection>::connect(&stack.db.url).await.expect("connect");
    let source = db::source::StreamSource::new(
        "more-events".to_string(),
        std::io::Cursor::new(log.into_bytes()),
        Duration::from_secs(1),
    );
    db::ingest::Ingester::run_once(conn, db::ingest::IngestOptions::default(), vec![Box::new(source)])
        .await
        .expect("ingest");
    let renewed_weights = behaviour::items::ItemParams { top_k: 500, ..weights };
    let second_collection = helpers::attach_item_weights(&pool, master.path(), &renewed_weights).await;
    assert_ne!(first_collection, second_collection);
    let deployed = tempfile::tempdir().expect("deployed");
    helpers::copy_dir(master.path(), deployed.path());
    let renewed = items_server(&stack, deployed.path(), Variant::Main).await;
    let admin_url = format!("http://{}", lb.admin_addr.expect("admin"));
    let renewed_url = format!("http://{}", renewed.http_addr);
    for role in ["main", "nightly"] {
        route(&admin_url, role, &renewed_url).await;
    }
    let second = ask(&base, users.iter().copied()).await;
    shipped(&pool, &second).await;
    let read: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT inputs->'data_versions'->>'collection', count(*) FROM recommendations_history
         WHERE request_id = ANY($1) GROUP BY 1 ORDER BY 1",
    )
    .bind(&second)
    .fetch_all(&pool)
    .await
    .expect("collections");
    println!("collections the second round read: {read:?}");
    assert!(read.iter().any(|(c, n)| c.as_deref() == Some(second_collection.as_str()) && *n == 490), "{read:?}");
    let (requests, within) = store_calls(&renewed);
    assert!(requests > 0 && within == requests, "{requests} requests, {within} with ≤ 2 store calls");

    let all = [first, second].concat();
    assert_eq!(all.len(), 1_000);
    let mut replayer = Replayer::new(
        pool.clone(),
        vectorstore::open(None, None, Duration::from_secs(30), Some(master.path()), master.path()).expect("store"),
    );
    let started = std::time::Instant::now();
    let tally = replay_all(&mut replayer, &all).await;
    println!(
        "after the new weights went live: {tally:?} ({:.0} rows/s)",
        all.len() as f64 / started.elapsed().as_secs_f64()
    );
    assert_eq!((tally.identical, tally.different), (all.len() as u64, 0), "{tally:?}");

    let p = provenance::show::provenance(&pool, &all[0]).await.expect("show").expect("row");
    assert_eq!(p.strategy.as_deref(), Some("items-v1"));
    assert_eq!(p.collection.as_deref(), Some(first_collection.as_str()));

    renewed.shutdown().await.expect("renewed");
    lb.shutdown().await.expect("lb");
    main.shutdown().await.expect("main");
    nightly.shutdown().await.expect("nightly");
}
