//! Replicas of one fleet: the routing lives in Postgres (`lb_routing`), a change through one
//! replica reaches the others within a second, a replica restarted while Postgres is down serves
//! its last routing, and a restart that starts the new replica on the same port before stopping
//! the old one loses no request and no history row.

use std::time::{Duration, Instant};

use loadbalancer::RunningLb;

use crate::durability::{load, set_database_available};
use crate::fleet::{Client, Fleet, TOKEN};

async fn admin_call(client: &Client, lb: &RunningLb, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let admin = format!("http://{}", lb.admin_addr.expect("admin enabled"));
    let reply = client
        .try_request(method, &format!("{admin}{path}"), &[("authorization", &format!("Bearer {TOKEN}"))], body)
        .await
        .expect("admin call");
    (reply.status, reply.body)
}

/// Waits until `lb` serves routing version `version`; returns how long that took.
async fn until_version(lb: &RunningLb, version: i64, within: Duration) -> Duration {
    let started = Instant::now();
    while lb.lb.routing.load().version < version {
        assert!(
            started.elapsed() < within,
            "replica still on version {} after {within:?}",
            lb.lb.routing.load().version
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

/// The backend that answered the request `id` (from its history row, once shipped).
async fn backend_of(fleet: &Fleet, id: &str) -> String {
    for _ in 0..200 {
        let backend: Option<Option<String>> =
            sqlx::query_scalar("SELECT backend FROM recommendations_history WHERE inputs->>'client_request_id' = $1")
                .bind(id)
                .fetch_optional(&fleet.stack.db.pool)
                .await
                .expect("query");
        if let Some(backend) = backend {
            return backend.expect("answered by a backend");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("request {id} not logged within 10 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_a_promotion_within_a_second_and_restart_on_their_last_routing_without_postgres() {
    let fleet = Fleet::new().await;
    // One state directory: the second replica takes the second journal slot.
    let state = tempfile::tempdir().expect("state");
    let config = fleet.lb_config(state.path());
    let a = loadbalancer::start(config.clone()).await.expect("replica a");
    let b = loadbalancer::start(config.clone()).await.expect("replica b");
    assert_eq!(a.lb.config.journal_dir(), state.path().join("loadbalancer/journal"));
    assert_eq!(b.lb.config.journal_dir(), state.path().join("loadbalancer/journal-2"));
    let first = a.lb.routing.load().version;
    assert!(first >= 1 && b.lb.routing.load().version == first, "both on the stored routing");
    let client = Client::new();
    let (main_url, nightly_url) = (fleet.main_url(), fleet.nightly_url());

    // A promotion through a's admin API: b follows (notification). The spread: from the moment
    // a serves the new version to the moment b does (both watched from before the call).
    let (ra, rb) = (a.lb.routing.clone(), b.lb.routing.clone());
    let watcher = tokio::spawn(async move {
        let started = Instant::now();
        let (mut seen_a, mut seen_b) = (None, None);
        while (seen_a.is_none() || seen_b.is_none()) && started.elapsed() < Duration::from_secs(5) {
            if seen_a.is_none() && ra.load().version > first {
                seen_a = Some(Instant::now());
            }
            if seen_b.is_none() && rb.load().version > first {
                seen_b = Some(Instant::now());
            }
            tokio::task::yield_now().await;
        }
        (seen_a, seen_b)
    });
    let (status, body) = admin_call(&client, &a, "POST", "/admin/promote", None).await;
    assert_eq!(status, 200, "{body}");
    let promoted = a.lb.routing.load().version;
    assert_eq!(promoted, first + 1);
    let (Some(seen_a), Some(seen_b)) = watcher.await.expect("watcher") else { panic!("b did not follow within 5 s") };
    let spread = if seen_b >= seen_a { seen_b - seen_a } else { Duration::ZERO };
    println!("promotion: replica b on version {promoted} {:.2} ms after replica a", spread.as_secs_f64() * 1e3);
    assert!(spread < Duration::from_secs(1), "spread {spread:?}");
    for (name, lb) in [("a", &a), ("b", &b)] {
        let id = format!("after-promotion-{name}");
        let r = client
            .try_request("GET", &format!("http://{}/recommend/5", lb.http_addr), &[("x-request-id", &id)], None)
            .await
            .expect("answered");
        assert_eq!((r.status, r.header("x-variant")), (200, "main"), "{name}");
        assert_eq!(backend_of(&fleet, &id).await, nightly_url, "replica {name} serves the former nightly as main");
    }
    let stored: i64 = sqlx::query_scalar("SELECT version FROM lb_routing WHERE fleet = 'default'")
        .fetch_one(&fleet.stack.db.pool)
        .await
        .expect("row");
    assert_eq!(stored, promoted);

    // b restarted while Postgres is down: it serves the promoted routing (its routing file),
    // not its configuration (which names the old main).
    b.shutdown().await.expect("shutdown b");
    set_database_available(&fleet, false).await;
    let b = loadbalancer::start(config.clone()).await.expect("replica b without Postgres");
    let table = b.lb.routing.load_full();
    assert_eq!((table.version, table.main[0].url.as_str()), (promoted, nightly_url.as_str()));
    assert!(table.nightly.is_empty() && table.effective_share() == 0.0);
    let r = client.get(&format!("http://{}/recommend/5", b.http_addr)).await;
    assert_eq!((r.status, r.header("x-variant")), (200, "main"));
    // A change cannot be stored meanwhile: refused, nothing applied.
    let body = format!(r#"{{"backends": ["{main_url}"]}}"#);
    let (status, reason) = admin_call(&client, &a, "PUT", "/admin/main", Some(&body)).await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("routing not saved"), "{reason}");
    assert_eq!(a.lb.routing.load().version, promoted);
    set_database_available(&fleet, true).await;

    // Postgres back: a rollback through b reaches a (its listener reconnects, or it polls).
    let (status, reason) = admin_call(&client, &b, "PUT", "/admin/main", Some(&body)).await;
    assert_eq!(status, 200, "{reason}");
    let rolled_back = b.lb.routing.load().version;
    assert_eq!(rolled_back, promoted + 1);
    let spread = until_version(&a, rolled_back, Duration::from_secs(2)).await;
    println!("rollback after the outage: replica a followed in {:.1} ms", spread.as_secs_f64() * 1e3);
    assert_eq!(a.lb.routing.load().main[0].url, main_url);
    let steps: Vec<String> = sqlx::query_scalar("SELECT step FROM release_events ORDER BY id")
        .fetch_all(&fleet.stack.db.pool)
        .await
        .expect("events");
    assert_eq!(steps, ["lb.promote", "lb.set_main"], "one record per change, none for the refused one");
    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_second_replica_on_the_port_fails_no_request_and_loses_no_row() {
    if std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req").is_ok_and(|v| v.trim() == "0") {
        println!("note: net.ipv4.tcp_migrate_req = 0 (ci/test.sh sets it to 1 as root)");
    }
    let fleet = Fleet::new().await;
    let state = tempfile::tempdir().expect("state");
    let mut config = fleet.lb_config(state.path());
    let old = loadbalancer::start(config.clone()).await.expect("old replica");
    // Every port shared: the new replica binds the old one's ports.
    config.http_addr = old.http_addr;
    config.grpc_addr = old.grpc_addr;
    config.admin_addr = old.admin_addr.expect("admin");
    let base = format!("http://{}", old.http_addr);
    let running = load(base);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let new = loadbalancer::start(config.clone()).await.expect("new replica on the same ports");
    tokio::time::sleep(Duration::from_millis(500)).await;
    old.shutdown().await.expect("old replica drained");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (responses, failed) = running.finish().await;
    new.shutdown().await.expect("shutdown");
    println!("restart with a second replica: {responses} responses, {failed} failed requests");
    assert_eq!(failed, 0, "no request failed across the restart");
    assert_eq!(fleet.history_rows().await, responses as i64, "one history row per response");
    fleet.shutdown().await;
}
