//! `recommendations_history` partitioned by month (migration 0009): applied to a database that
//! holds rows from the earlier schema, every row is kept, each in its month's partition; a row
//! whose month has no partition is refused until `history_ensure_partitions` makes one; prune
//! drops whole partitions before the cut and deletes only what is left.

use chrono::{TimeZone, Utc};
use db::testing::TestDb;

async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioning_keeps_every_row_and_prune_drops_whole_months() {
    let db = TestDb::empty().await;
    let pool = &db.pool;
    for m in db::MIGRATOR.iter().filter(|m| m.version < 9) {
        sqlx::raw_sql(&m.sql).execute(pool).await.unwrap_or_else(|e| panic!("migration {}: {e}", m.version));
    }
    // 3,000 answers 40 minutes apart from 2025-01-01: January, February and most of March.
    sqlx::raw_sql(
        "INSERT INTO recommendations_history (request_id, ts, user_id, served_variant, status, latency_us, movie_ids)
         SELECT 'req-' || g, timestamptz '2025-01-01 00:00:00+00' + g * interval '40 minutes', g % 610,
                'main', 200, 1000, ARRAY['m' || g]
         FROM generate_series(0, 2999) g",
    )
    .execute(pool)
    .await
    .expect("rows in the old table");
    let before = count(pool, "SELECT count(*) FROM recommendations_history").await;
    let january = count(pool, "SELECT count(*) FROM recommendations_history WHERE ts < '2025-02-01 00:00:00+00'").await;
    let migration = db::MIGRATOR.iter().find(|m| m.version == 9).expect("migration 0009");
    let started = std::time::Instant::now();
    sqlx::raw_sql(&migration.sql).execute(pool).await.expect("partitioning");
    println!("partitioned {before} rows in {:?}", started.elapsed());

    assert_eq!(count(pool, "SELECT count(*) FROM recommendations_history").await, before, "no row lost");
    assert_eq!(count(pool, "SELECT count(*) FROM recommendations_history_2025_01").await, january);
    assert_eq!(
        count(pool, "SELECT count(*) FROM recommendation_provenance").await,
        before,
        "the view reads the new table"
    );
    let partitions =
        count(pool, "SELECT count(*) FROM pg_inherits WHERE inhparent = 'recommendations_history'::regclass").await;
    assert!(partitions >= 3 + 3, "the data's months and three ahead: {partitions}");
    // A row shipped again (same id, same time) is skipped, as the load balancer's shipper relies on.
    let again = sqlx::query(
        "INSERT INTO recommendations_history (request_id, ts, served_variant, status, latency_us)
         VALUES ('req-5', timestamptz '2025-01-01 00:00:00+00' + 5 * interval '40 minutes', 'main', 200, 1)
         ON CONFLICT (request_id, ts) DO NOTHING",
    )
    .execute(pool)
    .await
    .expect("insert again");
    assert_eq!(again.rows_affected(), 0);

    // A month without a partition refuses the row until one is made.
    let insert_2031 = "INSERT INTO recommendations_history (request_id, ts, served_variant, status, latency_us)
                       VALUES ('far', '2031-05-02 00:00:00+00', 'main', 200, 1)";
    let refused = sqlx::query(insert_2031).execute(pool).await.expect_err("no partition for 2031-05");
    let code = refused.as_database_error().and_then(|d| d.code()).map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("23514"), "{refused}");
    assert!(refused.to_string().contains("no partition"), "{refused}");
    let made: i32 =
        sqlx::query_scalar("SELECT history_ensure_partitions('2031-05-02 00:00:00+00', '2031-05-02 00:00:00+00')")
            .fetch_one(pool)
            .await
            .expect("ensure");
    assert_eq!(made, 1);
    sqlx::query(insert_2031).execute(pool).await.expect("stored once its partition exists");

    // Prune to 2025-03-10: January and February go as partitions, March's first days row by row.
    let cut = Utc.with_ymd_and_hms(2025, 3, 10, 0, 0, 0).single().expect("time");
    let older = count(pool, "SELECT count(*) FROM recommendations_history WHERE ts < '2025-03-10 00:00:00+00'").await;
    let dropped = db::retention::drop_history_partitions(pool, cut).await.expect("drop partitions");
    let names: Vec<&str> = dropped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["recommendations_history_2025_01", "recommendations_history_2025_02"]);
    assert_eq!(dropped[0].1 as i64, january);
    let deleted = db::retention::prune_history(pool, cut, 100, |_| {}).await.expect("prune the rest");
    let in_partitions: u64 = dropped.iter().map(|(_, n)| n).sum();
    println!("prune: {in_partitions} rows in {} dropped partitions, {deleted} rows deleted one by one", dropped.len());
    assert_eq!(in_partitions as i64 + deleted as i64, older, "every row older than the cut, once");
    assert_eq!(count(pool, "SELECT count(*) FROM recommendations_history").await, before + 1 - older);
    assert_eq!(
        count(pool, "SELECT count(*) FROM recommendations_history WHERE ts < '2025-03-10 00:00:00+00'").await,
        0
    );
}
