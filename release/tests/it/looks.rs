//! `online::measure` on a real Postgres: history rows as the load balancer's shipper writes them,
//! watches through the real ingester.

use std::time::Duration;

use chrono::{TimeZone, Utc};
use db::ingest::{IngestOptions, Ingester};
use db::source::{LineSource, StreamSource};
use db::testing::TestDb;
use release::online::{self, Window};
use sqlx::Connection;

async fn response(
    db: &TestDb,
    id: &str,
    user: i64,
    (assigned, served): (&str, &str),
    status: i32,
    minute: u32,
    movies: &[&str],
) {
    testkit::history::HistoryRow::new(id, Utc.with_ymd_and_hms(2026, 1, 1, 10, minute, 0).single().expect("time"))
        .user(user)
        .experiment("exp-1", assigned, served)
        .status(status)
        .latency_us(1_000 * (i64::from(minute) + 1))
        .movies(movies)
        .insert(&db.pool)
        .await;
}

#[tokio::test]
async fn conversion_counts_first_watches_within_the_window_by_assigned_variant() {
    let db = TestDb::new().await;
    // Watches: user 1 watches a 30 s after their response (converted); user 2 watches b two
    // hours later (outside the 10-minute window); user 3 had watched a before the response; user
    // 4 watches c a minute after (converted); user 5's request failed over, then they watched d.
    let log = "2026-01-01T10:00:30,1,GET /data/m/a/0.mpg\n\
               2026-01-01T12:00:00,2,GET /data/m/b/0.mpg\n\
               2026-01-01T09:00:00,3,GET /data/m/a/0.mpg\n\
               2026-01-01T10:03:00,4,GET /data/m/c/0.mpg\n\
               2026-01-01T10:04:30,5,GET /data/m/d/0.mpg\n";
    let conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let source: Box<dyn LineSource> =
        Box::new(StreamSource::new("test", std::io::Cursor::new(log), Duration::from_millis(100)));
    let report = Ingester::run_once(conn, IngestOptions::default(), vec![source]).await.expect("ingest");
    assert_eq!(report.accepted.watch, 5);
    response(&db, "r1", 1, ("main", "main"), 200, 0, &["a", "b"]).await;
    response(&db, "r2", 2, ("main", "main"), 200, 1, &["a", "b"]).await;
    response(&db, "r3", 3, ("main", "main"), 200, 1, &["a", "b"]).await;
    response(&db, "r4", 4, ("nightly", "nightly"), 200, 2, &["c"]).await;
    response(&db, "r5", 5, ("nightly", "main"), 200, 4, &["d"]).await;
    response(&db, "r6", 6, ("nightly", "nightly"), 503, 5, &[]).await;
    let window = Window {
        experiment: "exp-1".into(),
        since: Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time"),
        until: Utc::now(),
        conversion_window: chrono::Duration::minutes(10),
    };
    let (main, nightly) = online::measure(&db.pool, &window).await.expect("measure");
    assert_eq!((main.requests, main.users, main.conversion.hits, main.conversion.n), (3, 3, 1, 3), "{main:?}");
    assert_eq!((main.errors, main.failed_over), (0, 0));
    // Nightly: r4 converted; r5 failed over to main (counted against nightly, and its watch
    // converts: intention to treat); r6 is an error.
    assert_eq!((nightly.requests, nightly.conversion.hits, nightly.conversion.n), (3, 2, 2), "{nightly:?}");
    assert_eq!((nightly.errors, nightly.failed_over), (1, 1));
    assert!((nightly.failure_rate() - 2.0 / 3.0).abs() < 1e-12);
    // Latencies 3, 5 and 6 ms: percentile_cont gives p50 5 and p99 5 + 0.98 · 1.
    assert!(nightly.p50_ms == 5.0 && (nightly.p99_ms - 5.98).abs() < 1e-9, "{nightly:?}");
    // A response whose window has not closed yet is not counted.
    let open = Window { until: Utc.with_ymd_and_hms(2026, 1, 1, 10, 10, 30).single().expect("time"), ..window };
    let (main, _) = online::measure(&db.pool, &open).await.expect("measure");
    assert_eq!(main.requests, 1, "at 10:10:30 only r1's window (10:00–10:10) has closed; r2 and r3 close at 10:11");
}
