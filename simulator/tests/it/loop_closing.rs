//! The closed loop on the real stack: the default dataset loaded with each user's latest 20 %
//! held out, two servers (real embeddings) behind the load balancer, the ingester following the
//! simulator's log file. Every line lands once, every request has its history row, and what a
//! user watched is not recommended to them again.

use std::time::{Duration, Instant};

use simulator::population::{self, PopulationSpec};
use simulator::run::{self, Config, Limit};
use simulator::sink::Output;
use simulator::user::Behaviour;
use testkit::closed_loop::{ClosedLoop, db_futures};

use crate::helpers::get;

async fn count(pool: &sqlx::PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.expect("count")
}

/// Polls until `f` returns true (or panics after `limit`).
async fn eventually<F, Fut>(what: &str, limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_closes_the_loop_through_the_load_balancer_and_the_ingester() {
    // Servers read histories at most 200 ms old, so new watches count at once.
    let ClosedLoop {
        loaded,
        stack,
        main,
        nightly,
        lb,
        main_url,
        lb_url,
        log,
        ingester,
        work: _work,
        nightly_edge: _nightly_edge,
        ..
    } = ClosedLoop::start("simulation-1", Some(200)).await;
    let held_out = loaded.futures.len();
    assert!(held_out > 15_000, "about 20 % of 100,836 ratings held out: {held_out}");
    let in_db: i64 = count(&stack.db.pool, "rating_events").await;
    assert_eq!(in_db as usize + held_out, 100_836 - loaded.load.unknown_movies as usize);

    let futures = db_futures(&loaded.futures);
    let spec = PopulationSpec { users: None, new_share: 0.05, new_user_base: 900_000, seed: 42 };
    let people = population::build(&futures, &spec);
    let config = Config {
        target: lb_url.clone(),
        rate: 150.0,
        limit: Limit::Requests(1_500),
        timeout: Duration::from_millis(600),
        behaviour: Behaviour { accept: 0.9, ..Behaviour::default() },
        seed: 42,
        max_in_flight: 10_000,
        output: Output::File(log.clone()),
        progress: false,
        trace: true,
        metrics: None,
    };
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    let finished = run::run(config, people, stop_rx).await.expect("simulate");
    let r = &finished.report;
    println!("{}", r.render());
    assert_eq!(r.requests, 1_500);
    assert!(r.availability.rate > 0.99, "availability {:?}", r.availability);
    assert!(r.cold_start.requests > 0 && r.cold_start.served == r.cold_start.requests, "{:?}", r.cold_start);
    assert!(r.variants.contains_key("main") && r.variants.contains_key("nightly"), "{:?}", r.variants.keys());
    let converted = r.conversion.hits;
    assert!(converted > 20, "some recommendations were watched: {converted}");

    // Every line the simulator wrote is ingested, exactly once.
    let pool = &stack.db.pool;
    let want = [
        ("watch_events", r.lines.watch as i64),
        ("rating_events", in_db + r.lines.rate as i64),
        ("recommendation_events", r.lines.recommendation as i64),
        ("account_events", r.lines.create_account as i64),
    ];
    eventually("the ingester to catch up", Duration::from_secs(60), move || async move {
        let mut all = true;
        for (table, n) in want {
            all &= count(pool, table).await >= n;
        }
        all
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for (table, n) in want {
        assert_eq!(count(pool, table).await, n, "{table}: once each");
    }
    assert_eq!(count(pool, "rejected_lines").await, 0);
    let (watermark, max_id): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT last_event_id FROM ingest_watermark),
                (SELECT greatest(coalesce(max(event_id), 0), 0) FROM (SELECT event_id FROM watch_events UNION ALL SELECT event_id FROM rating_events UNION ALL SELECT event_id FROM recommendation_events UNION ALL SELECT event_id FROM account_events) e)",
    )
    .fetch_one(pool)
    .await
    .expect("watermark");
    assert_eq!(watermark, max_id);

    // One history row per request the simulator made.
    eventually("the history rows", Duration::from_secs(30), move || async move {
        count(pool, "recommendations_history").await >= r.requests as i64
    })
    .await;
    assert_eq!(count(pool, "recommendations_history").await, r.requests as i64);

    // What a user watched (ingested now) is not recommended to them again.
    let mut checked = 0;
    for entry in finished.trace.iter().filter(|t| t.watched.is_some()).rev().take(40) {
        let (movie, _) = entry.watched.as_ref().expect("watched");
        let reply = get(&format!("{main_url}/recommend/{}", entry.user), &[]).await;
        assert_eq!(reply.status, 200);
        let ids: Vec<&str> = reply.body.trim().split(',').collect();
        assert!(!ids.contains(&movie.as_str()), "user {} watched {movie} and still gets it: {ids:?}", entry.user);
        checked += 1;
    }
    assert!(checked >= 20, "{checked} users checked");

    ingester.abort();
    lb.shutdown().await.expect("lb shutdown");
    main.shutdown().await.expect("main shutdown");
    nightly.shutdown().await.expect("nightly shutdown");
}
