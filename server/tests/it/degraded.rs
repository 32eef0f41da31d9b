//! Degrade, don't fail: a vector store that hangs or is gone still gets answers (the
//! popularity list minus what the user watched) within the deadline, flagged as degraded.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::helpers::{Stack, blackhole, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_missing_vector_store_degrades_to_popularity_within_the_deadline() {
    let stack = Stack::new().await;
    let seen: HashSet<String> = stack.seen(1).await.into_iter().collect();
    let expected: Vec<String> = stack.popular(1_000).await.into_iter().filter(|m| !seen.contains(m)).take(20).collect();
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();

    for (label, url, pinned) in [
        ("hung", format!("http://{}", blackhole()), Some("movies_pinned")),
        ("refused", format!("http://127.0.0.1:{dead_port}"), None),
    ] {
        let mut config = stack.config();
        config.store.qdrant_url = Some(url);
        config.store.collection = pinned.map(str::to_string);
        let server = server::start(config.clone()).await.expect("start");
        let base = format!("http://{}", server.http_addr);

        let ready = get(&format!("{base}/ready"), &[]).await;
        assert_eq!(ready.status, 503, "{label}: not ready without a vector store");
        assert!(ready.body.contains("vector store"), "{label}: {}", ready.body);

        let started = Instant::now();
        let r = get(&format!("{base}/recommend/1"), &[]).await;
        let took = started.elapsed();
        assert_eq!(r.status, 200, "{label}");
        // Why it degraded is the point, not how fast this machine is: a hung store is cut by
        // the deadline (its own client timeout is far longer), a refused one fails at once.
        let reason = r.header("x-degraded");
        match label {
            "hung" => assert!(reason.contains("deadline"), "{label}: cut by the deadline, not waited for: {reason}"),
            _ => assert!(reason.starts_with("vector store") && !reason.contains("deadline"), "{label}: {reason}"),
        }
        // Only a bound that a hang would break (the store client's timeout is 30 s).
        assert!(took < 10 * Duration::from_millis(config.deadlines.request_ms), "{label}: answered after {took:?}");
        assert_eq!(r.header("x-recommendation-kind"), "degraded");
        assert_eq!(r.body, expected.join(","), "{label}: popularity minus watched");
        // Cold-start users need no vectors: not degraded.
        assert_eq!(get(&format!("{base}/recommend/999999"), &[]).await.header("x-recommendation-kind"), "cold_start");

        let metrics = get(&format!("{base}/metrics"), &[]).await.body;
        assert!(metrics.contains("lazyrec_server_degraded_total"), "{metrics}");
        println!("{label}: degraded answer in {took:?}: {}", r.header("x-degraded"));
        server.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_still_answers_the_cached_popularity_list() {
    let stack = Stack::new().await;
    let server = server::start(stack.config()).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    crate::helpers::wait_ready(&base).await;
    let popular = stack.popular(20).await.join(",");
    // Take the database away under the running server.
    let admin_url = stack.db.url.rsplit_once('/').map(|(u, _)| format!("{u}/postgres")).expect("url");
    let name = stack.db.url.rsplit('/').next().expect("name").to_string();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.expect("admin");
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).execute(&mut admin).await.expect("deny");
    sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        .execute(&mut admin)
        .await
        .expect("kick");

    let r = get(&format!("{base}/recommend/12345"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-recommendation-kind"), "degraded");
    assert!(r.header("x-degraded").starts_with("postgres"), "{}", r.header("x-degraded"));
    assert_eq!(r.body, popular);
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).execute(&mut admin).await.expect("allow");
    server.shutdown().await.expect("shutdown");
}

/// A database slower to accept a connection (300 ms) than the stage deadlines: connects must not
/// be cancelled with the request (a cancelled connect leaves Postgres an abandoned session and the
/// pool empty, so the next request tries again — a reconnect storm). The pool fills once and the
/// server answers from it. A behaviour test: it counts connections and sessions, it times nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_slower_than_the_deadline_fill_the_pool_once_instead_of_a_storm() {
    let stack = Stack::new().await;
    let url = stack.db.url.clone();
    let hostport = url.split('@').nth(1).and_then(|r| r.split('/').next()).expect("host:port").to_string();
    let (proxy, opened) = crate::helpers::slow_to_connect(hostport.parse().expect("addr"), Duration::from_millis(300));
    let mut config = stack.config();
    config.database_url = Some(url.replace(&hostport, &proxy.to_string()));
    config.database_connections = 4;
    let server = server::start(config).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    let started = Instant::now();
    let (mut user, mut last_kinds) = (1, Vec::new());
    while started.elapsed() < Duration::from_secs(5) {
        let r = get(&format!("{base}/recommend/{user}"), &[]).await;
        if started.elapsed() > Duration::from_secs(4) {
            last_kinds.push(r.header("x-recommendation-kind").to_string());
        }
        user = user % 600 + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sessions, abandoned): (i64, i64) =
        sqlx::query_as("SELECT sessions, sessions_abandoned FROM pg_stat_database WHERE datname = current_database()")
            .fetch_one(&stack.db.pool)
            .await
            .expect("stats");
    let opened = opened.load(std::sync::atomic::Ordering::Relaxed);
    println!("connections opened through the proxy: {opened}; sessions {sessions}, abandoned {abandoned}");
    server.shutdown().await.expect("shutdown");
    assert!(opened <= 4, "the pool filled once: {opened} connections opened");
    assert_eq!(abandoned, 0, "no connect was cancelled mid-handshake");
    assert!(!last_kinds.is_empty() && last_kinds.iter().all(|k| k == "personal"), "{last_kinds:?}");
}

/// The server's Postgres sessions in the test database (backend pids).
async fn server_sessions(pool: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
           AND application_name LIKE 'lazyrec-server%' ORDER BY pid",
    )
    .fetch_all(pool)
    .await
    .expect("pg_stat_activity")
}

/// Postgres stuck (the history table locked) under a burst of requests: the queries that were
/// admitted miss their stage deadline and keep their pooled connections (the same backend pids
/// before and after: no reconnect), no more of them run than the stage's limit, the burst beyond
/// the queue is shed at once (degraded, `queue full`), and once the lock goes the same
/// connections answer personally again. A behaviour test: it counts sessions and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_past_its_deadline_keeps_its_connection_and_the_excess_is_shed() {
    let stack = Stack::new().await;
    let mut config = stack.config();
    config.database_connections = 2;
    config.admission.postgres = server::admission::Limits { max_in_flight: 2, max_queued: 4 };
    let server = server::start(config).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    crate::helpers::wait_ready(&base).await;
    // Both pooled connections opened: concurrent requests for users not cached yet.
    let mut user = 1;
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_sessions(&stack.db.pool).await.len() < 2 {
        assert!(Instant::now() < deadline, "the pool never opened its 2 connections");
        let burst: Vec<_> = (0..6).map(|i| get_owned(format!("{base}/recommend/{}", user + i))).collect();
        futures_util::future::join_all(burst).await;
        user += 6;
    }
    let before = server_sessions(&stack.db.pool).await;

    // Lock the table every history query reads; hold it longer than the stage deadline (100 ms)
    // and shorter than the connections' statement_timeout (1 s), so the stuck queries end well.
    let mut locker = stack.db.pool.begin().await.expect("begin");
    sqlx::query("LOCK TABLE user_watched IN ACCESS EXCLUSIVE MODE").execute(&mut *locker).await.expect("lock");
    let burst: Vec<_> = (0..30).map(|i| get_owned(format!("{base}/recommend/{}", 300 + i))).collect();
    let replies = futures_util::future::join_all(burst).await;
    let during = server_sessions(&stack.db.pool).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    locker.commit().await.expect("unlock");

    let reasons: Vec<String> = replies.iter().map(|r| r.header("x-degraded").to_string()).collect();
    let count = |needle: &str| reasons.iter().filter(|r| r.contains(needle)).count();
    println!(
        "burst of 30 while locked: {} past the deadline, {} queue full, {} queued past the deadline; sessions before {before:?}, during {during:?}",
        count("postgres deadline"),
        count("queue full"),
        count("queued past the deadline")
    );
    assert!(replies.iter().all(|r| r.status == 200), "every request answered");
    assert!(reasons.iter().all(|r| r.starts_with("postgres")), "every answer degraded by Postgres: {reasons:?}");
    assert!(count("postgres deadline") >= 1, "admitted queries missed the deadline: {reasons:?}");
    assert!(count("queue full") >= 30 - 2 - 4, "the burst beyond the queue is shed at once: {reasons:?}");
    assert_eq!(during, before, "no connection opened while the queries were stuck");

    // The stuck queries end; the same two connections serve personal answers.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(&format!("{base}/recommend/{}", 400), &[]).await;
        if r.header("x-recommendation-kind") == "personal" {
            break;
        }
        assert!(Instant::now() < deadline, "never personal again: {}", r.header("x-degraded"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for u in 401..420 {
        assert_eq!(get(&format!("{base}/recommend/{u}"), &[]).await.header("x-recommendation-kind"), "personal");
    }
    assert_eq!(server_sessions(&stack.db.pool).await, before, "the connections of the late queries were kept");
    server.shutdown().await.expect("shutdown");
}

async fn get_owned(url: String) -> crate::helpers::Reply {
    get(&url, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_weights_model_on_a_collection_without_weights_degrades_and_says_why() {
    let stack = Stack::new().await;
    let mut config = stack.config();
    config.model = strategy::ModelSpec { strategy: "items-v1".into(), params: serde_json::json!({}) };
    let server = server::start(config).await.expect("start");
    let base = format!("http://{}", server.http_addr);
    crate::helpers::wait_ready(&base).await;
    let r = get(&format!("{base}/recommend/1"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-recommendation-kind"), "degraded");
    assert!(r.header("x-degraded").contains("has no item weights"), "{}", r.header("x-degraded"));
    let seen: HashSet<String> = stack.seen(1).await.into_iter().collect();
    assert!(r.body.split(',').all(|m| !seen.contains(m)), "popularity minus watched");
    let metrics = get(&format!("{base}/metrics"), &[]).await.body;
    assert!(metrics.contains("lazyrec_server_degraded_total{reason=\"no_item_weights\""), "{metrics}");
    server.shutdown().await.expect("shutdown");
}
