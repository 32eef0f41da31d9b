//! Nothing lost: under load, with Postgres taken away and given back, and with the load
//! balancer restarted gracefully, `count(recommendations_history)` equals the number of
//! responses the client received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::fleet::{Client, Fleet};

pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    responses: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

/// Closed-loop load from 4 workers (each pausing 10 ms between requests: ~300 req/s).
pub(crate) fn load(base: String) -> Load {
    let client = Client::new();
    let stop = Arc::new(AtomicBool::new(false));
    let responses = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let workers = (0..4u64)
        .map(|w| {
            let (client, base, stop, responses, refused) =
                (client.clone(), base.clone(), stop.clone(), responses.clone(), refused.clone());
            tokio::spawn(async move {
                let mut user = w * 1_000;
                while !stop.load(Ordering::Relaxed) {
                    user += 1;
                    match client.try_request("GET", &format!("{base}/recommend/{}", user % 610 + 1), &[], None).await {
                        Ok(r) => {
                            assert_eq!(r.status, 200, "{}", r.body);
                            responses.fetch_add(1, Ordering::Relaxed);
                        }
                        // No response (the load balancer was restarting): the client retries.
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    Load { stop, responses, refused, workers }
}

impl Load {
    pub(crate) async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.expect("worker");
        }
        (self.responses.load(Ordering::Relaxed), self.refused.load(Ordering::Relaxed))
    }
}

pub(crate) async fn set_database_available(fleet: &Fleet, available: bool) {
    let url = &fleet.stack.db.url;
    let admin_url = url.rsplit_once('/').map(|(u, _)| format!("{u}/postgres")).expect("url");
    let name = url.rsplit('/').next().expect("name").to_string();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await.expect("admin");
    sqlx::query(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {available}"))
        .execute(&mut admin)
        .await
        .expect("alter");
    if !available {
        sqlx::query(&format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            .execute(&mut admin)
            .await
            .expect("kick");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_response_goes_unlogged_when_postgres_goes_away_or_the_load_balancer_restarts() {
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    config.history.retry_ms = 200;
    let lb = loadbalancer::start(config.clone()).await.expect("lb");
    // The restarted load balancer takes the same port, as a restarted process would.
    config.http_addr = lb.http_addr;
    let base = format!("http://{}", lb.http_addr);

    // Phase 1: Postgres away for 2 s in the middle of 6 s of load.
    let running = load(base.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    set_database_available(&fleet, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spooled_meanwhile = lb.lb.metrics.history_deferred.get();
    set_database_available(&fleet, true).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (responses, refused) = running.finish().await;
    assert_eq!(refused, 0);
    assert!(spooled_meanwhile > 0, "rows waited in the journal while Postgres was away");
    // The journal drains on its own once Postgres is back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while lb.lb.metrics.history_journal_bytes.get() > 0 || lb.lb.history.queued() > 0 {
        assert!(std::time::Instant::now() < deadline, "the journal never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fleet.history_rows().await, responses as i64, "after the Postgres outage");
    let m = &lb.lb.metrics;
    println!(
        "phase 1: {responses} responses, {} deferred, {} written, {} dropped",
        m.history_deferred.get(),
        m.history_written.get(),
        m.history_dropped.get()
    );
    assert_eq!(m.history_dropped.get(), 0);

    // Phase 2: a graceful restart of the load balancer under load.
    let running = load(base.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    lb.shutdown().await.expect("graceful shutdown");
    let lb = loadbalancer::start(config.clone()).await.expect("restart on the same port");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (more, refused) = running.finish().await;
    let metrics = lb.lb.metrics.clone();
    lb.shutdown().await.expect("shutdown");
    println!("phase 2: {more} responses, {refused} requests refused while restarting");
    assert_eq!(fleet.history_rows().await, (responses + more) as i64, "after the restart");
    assert_eq!(metrics.history_dropped.get(), 0);
    fleet.shutdown().await;
}

/// A database idle past the months made ahead: the row's month has no partition. The shipper
/// makes it and stores the rows (nothing wedged, nothing lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_month_has_no_partition_makes_it_and_is_stored() {
    let fleet = Fleet::new().await;
    let pool = &fleet.stack.db.pool;
    let month: String =
        sqlx::query_scalar("SELECT 'recommendations_history_' || to_char(now() AT TIME ZONE 'UTC', 'YYYY_MM')")
            .fetch_one(pool)
            .await
            .expect("name");
    sqlx::query(&format!("DROP TABLE {month}")).execute(pool).await.expect("drop this month's partition");
    let state = tempfile::tempdir().expect("state");
    let lb = loadbalancer::start(fleet.lb_config(state.path())).await.expect("lb");
    let client = Client::new();
    for user in 1..=5 {
        assert_eq!(client.get(&format!("http://{}/recommend/{user}", lb.http_addr)).await.status, 200);
    }
    lb.shutdown().await.expect("shutdown");
    assert_eq!(fleet.history_rows().await, 5, "every response stored");
    let made: Option<String> =
        sqlx::query_scalar("SELECT to_regclass($1)::text").bind(&month).fetch_one(pool).await.expect("regclass");
    assert_eq!(made.as_deref(), Some(month.as_str()));
    fleet.shutdown().await;
}
