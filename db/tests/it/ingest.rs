//! The ingester: exactly once across re-runs and crashes, rejected lines kept, clear failures.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use db::ingest::{IngestOptions, Ingester};
use db::source::{FileSource, LineSource, StreamSource};
use db::synth::{SynthCounts, SynthSpec, write_log};
use db::testing::TestDb;
use sqlx::{Connection, PgConnection, PgPool};

use crate::data::bin;

fn synth_file(dir: &std::path::Path, lines: u64) -> (std::path::PathBuf, SynthCounts) {
    let path = dir.join("events.log");
    let mut file = std::fs::File::create(&path).expect("log file");
    let spec = SynthSpec { lines, users: 2_000, movies: 500, seed: 7, malformed_every: 997 };
    let counts = write_log(&spec, &mut file).expect("writing");
    (path, counts)
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.expect(sql)
}

async fn ingest_file(db: &TestDb, path: &std::path::Path, batch_lines: usize) -> db::ingest::IngestReport {
    let conn = PgConnection::connect(&db.url).await.expect("connect");
    let opts = IngestOptions { batch_lines, ..IngestOptions::default() };
    let source: Box<dyn LineSource> = Box::new(FileSource::open(path, None).expect("open"));
    Ingester::run_once(conn, opts, vec![source]).await.expect("ingest")
}

/// Everything the tables say must agree with what the generator wrote, once.
async fn assert_exactly_once(pool: &PgPool, counts: &SynthCounts) {
    let events = counts.watch + counts.rate + counts.recommendation + counts.create_account;
    assert_eq!(count(pool, "SELECT count(*) FROM watch_events").await as u64, counts.watch);
    assert_eq!(count(pool, "SELECT count(*) FROM rating_events").await as u64, counts.rate);
    assert_eq!(count(pool, "SELECT count(*) FROM recommendation_events").await as u64, counts.recommendation);
    assert_eq!(count(pool, "SELECT count(*) FROM account_events").await as u64, counts.create_account);
    assert_eq!(count(pool, "SELECT count(*) FROM rejected_lines").await as u64, counts.malformed);
    assert_eq!(count(pool, "SELECT last_event_id FROM ingest_watermark").await as u64, events);
    let distinct_ids = count(
        pool,
        "SELECT count(DISTINCT event_id) FROM (SELECT event_id FROM watch_events UNION ALL SELECT event_id FROM rating_events
         UNION ALL SELECT event_id FROM recommendation_events UNION ALL SELECT event_id FROM account_events) e",
    )
    .await;
    assert_eq!(distinct_ids as u64, events, "event ids are unique and gap-free");
    assert_eq!(
        count(pool, "SELECT coalesce(sum(minute_events), 0) FROM user_watched").await as u64,
        counts.watch,
        "the watched summary counts every minute once"
    );
    let summary_pairs =
        count(pool, "SELECT count(*) FROM (SELECT DISTINCT user_id, movie_id FROM watch_events) p").await;
    assert_eq!(count(pool, "SELECT count(*) FROM user_watched").await, summary_pairs);
    let latest_mismatch = count(
        pool,
        "SELECT count(*) FROM ratings r WHERE (r.ts, r.event_id) <> (
            SELECT e.ts, e.event_id FROM rating_events e WHERE e.user_id = r.user_id AND e.movie_id = r.movie_id
            ORDER BY e.ts DESC, e.event_id DESC LIMIT 1)",
    )
    .await;
    assert_eq!(latest_mismatch, 0, "ratings holds the latest rating of each pair");
}

#[tokio::test]
async fn ingesting_the_same_file_twice_adds_nothing() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, counts) = synth_file(dir.path(), 20_000);

    let first = ingest_file(&db, &path, 3_000).await;
    let second = ingest_file(&db, &path, 3_000).await;

    assert_eq!(first.lines, 20_000);
    assert_eq!(first.rejected_total(), counts.malformed);
    assert_eq!((second.lines, second.accepted.total()), (0, 0));
    assert_eq!(second.resumed_bytes, std::fs::metadata(&path).expect("meta").len());
    assert_exactly_once(&db.pool, &counts).await;
}

#[tokio::test]
async fn an_appended_file_resumes_where_it_stopped() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("grow.log");
    std::fs::write(&path, "2025-01-01T00:00:00,1,GET /rate/a+1999=3\n2025-01-01T00:00:01,1,GET /data/m/a+1999/0.mpg\n")
        .expect("write");
    ingest_file(&db, &path, 10).await;
    let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("append");
    writeln!(file, "2025-01-01T00:00:02,1,GET /data/m/a+1999/1.mpg\nnot a line").expect("append");

    let report = ingest_file(&db, &path, 10).await;

    assert_eq!((report.lines, report.accepted.total(), report.rejected_total()), (2, 1, 1));
    assert_eq!(count(&db.pool, "SELECT last_event_id FROM ingest_watermark").await, 3);
    assert_eq!(count(&db.pool, "SELECT minute_events::bigint FROM user_watched WHERE user_id = 1").await, 2);
    let (reason, line_no): (String, i64) =
        sqlx::query_as("SELECT reason, line_no FROM rejected_lines").fetch_one(&db.pool).await.expect("rejected");
    assert_eq!((reason.as_str(), line_no), ("missing_field", 4));
}

#[tokio::test]
async fn a_replaced_file_is_refused_instead_of_half_ingested() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.log");
    std::fs::write(&path, "2025-01-01T00:00:00,1,GET /rate/a+1999=3\n").expect("write");
    ingest_file(&db, &path, 10).await;
    std::fs::write(&path, "2025-02-01T00:00:00,2,GET /rate/b+1999=3\n2025-02-01T00:00:00,2,GET /rate/c+1999=3\n")
        .expect("write");

    let conn = PgConnection::connect(&db.url).await.expect("connect");
    let source: Box<dyn LineSource> = Box::new(FileSource::open(&path, None).expect("open"));
    let err = Ingester::new(conn, IngestOptions::default()).await.expect("lock").run(vec![source]).await;

    assert!(matches!(err, Err(db::ingest::IngestError::SourceChanged(_))), "{err:?}");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM rating_events").await, 1);
}

#[tokio::test]
async fn a_second_ingester_on_the_same_database_is_refused() {
    let db = TestDb::new().await;
    let first = Ingester::new(PgConnection::connect(&db.url).await.expect("c1"), IngestOptions::default())
        .await
        .expect("first");
    let no_wait = IngestOptions { lock_wait: Duration::ZERO, ..IngestOptions::default() };
    let second = Ingester::new(PgConnection::connect(&db.url).await.expect("c2"), no_wait).await;
    assert!(matches!(second, Err(db::ingest::IngestError::Busy)));
    drop(first);
}

/// A stream cannot seek back to check its bytes: a second run under the same name is refused
/// unless told it replays the same bytes (then it resumes by position).
#[tokio::test]
async fn a_named_stream_is_refused_a_second_time_unless_it_replays_the_same_bytes() {
    let db = TestDb::new().await;
    let text = b"2025-01-01T00:00:00,1,GET /rate/a+1999=3\n2025-01-01T00:00:01,2,GET /create_account\n".to_vec();
    let run = |resume_streams| {
        let (url, text) = (db.url.clone(), text.clone());
        async move {
            let conn = PgConnection::connect(&url).await.expect("connect");
            let source = StreamSource::new("stream:test", std::io::Cursor::new(text), Duration::from_millis(200));
            let opts = IngestOptions { resume_streams, ..IngestOptions::default() };
            Ingester::run_once(conn, opts, vec![Box::new(source)]).await
        }
    };
    assert_eq!(run(false).await.expect("first run").accepted.total(), 2);
    let again = run(false).await;
    assert!(
        matches!(&again, Err(db::ingest::IngestError::StreamResume { position: 83, .. })),
        "refused: {:?}",
        again.as_ref().err().map(ToString::to_string)
    );
    assert_eq!(run(true).await.expect("replayed").accepted.total(), 0, "the same bytes: nothing new");
    assert_eq!(count(&db.pool, "SELECT count(*) FROM account_events").await, 1);
}

/// Lines over the limit, in a file and in a stream (one with no newline for 3 MB): each is
/// rejected with its length and a clipped copy, the lines around it are ingested.
#[tokio::test]
async fn over_long_lines_are_rejected_clipped_and_the_rest_goes_on() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut text = b"2025-01-01T00:00:00,1,GET /rate/a+1999=3\n".to_vec();
    text.extend_from_slice(b"2025-01-01T00:00:01,1,GET /data/m/");
    text.extend(std::iter::repeat_n(b'a', 3 << 20));
    text.extend_from_slice(b"/0.mpg\n2025-01-01T00:00:02,2,GET /create_account\n");
    let path = dir.path().join("long.log");
    std::fs::write(&path, &text).expect("write");
    let file = FileSource::open(&path, None).expect("open");
    let stream = StreamSource::new("stream:long", std::io::Cursor::new(text.clone()), Duration::from_millis(200));
    for source in [Box::new(file) as Box<dyn LineSource>, Box::new(stream)] {
        let conn = PgConnection::connect(&db.url).await.expect("connect");
        let report = Ingester::run_once(conn, IngestOptions::default(), vec![source]).await.expect("run");
        assert_eq!((report.accepted.total(), report.rejected_total()), (2, 1));
    }
    let rows: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT reason, detail, octet_length(raw) FROM rejected_lines ORDER BY source")
            .fetch_all(&db.pool)
            .await
            .expect("rejected");
    assert_eq!(rows.len(), 2);
    for (reason, detail, raw) in rows {
        assert_eq!(reason, "line_too_long");
        assert!(detail.starts_with(&format!("{} bytes", 3 * (1 << 20) + 40)), "{detail}");
        assert_eq!(raw, db::ingest::CLIPPED_COPY_BYTES as i32, "a clipped copy");
    }
}

#[tokio::test]
async fn killing_the_ingester_mid_way_and_restarting_gives_exact_counts() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, counts) = synth_file(dir.path(), 400_000);
    let run = || {
        Command::new(bin())
            .args(["ingest", "--no-progress", "--batch-lines", "2000"])
            .arg(&path)
            .env("DATABASE_URL", &db.url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn lazyrec-db")
    };

    // Kill -9 once some, but not all, batches are committed.
    let mut child = run();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = count(&db.pool, "SELECT last_event_id FROM ingest_watermark").await;
        if committed > 20_000 {
            break;
        }
        assert!(Instant::now() < deadline, "the ingester made no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    let _status = child.wait().expect("wait");
    let at_kill = count(&db.pool, "SELECT last_event_id FROM ingest_watermark").await as u64;
    let total = counts.watch + counts.rate + counts.recommendation + counts.create_account;
    assert!(at_kill < total, "killed too late to prove anything ({at_kill} of {total})");

    let status = run().wait_with_output().expect("restart");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));

    assert_exactly_once(&db.pool, &counts).await;
    let batches = count(&db.pool, "SELECT count(*) FROM ingest_batches").await;
    assert_eq!(batches, 200, "400k lines in batches of 2000, none repeated");
}

#[test]
fn a_missing_file_is_one_clear_line_and_a_failure() {
    let db_url = TestDb::dead_url();
    let out = Command::new(bin())
        .args(["ingest", "/nonexistent/events.log"])
        .env("DATABASE_URL", db_url)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: cannot read /nonexistent/events.log"), "{stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_database_that_is_down_is_one_clear_line_and_a_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("e.log");
    std::fs::write(&path, "2025-01-01T00:00:00,1,GET /rate/a+1999=3\n").expect("write");
    let out =
        Command::new(bin()).arg("ingest").arg(&path).env("DATABASE_URL", TestDb::dead_url()).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("error: connecting to Postgres at postgres://…@127.0.0.1:"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
}
