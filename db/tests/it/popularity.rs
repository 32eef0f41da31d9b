//! The popularity table.

use db::popularity::{self, PopularityParams};
use db::testing::TestDb;

async fn ingest_lines(db: &TestDb, text: &str) {
    use db::ingest::{IngestOptions, Ingester};
    use sqlx::Connection;
    let conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let source = db::source::StreamSource::new(
        "stream:t",
        std::io::Cursor::new(text.as_bytes().to_vec()),
        std::time::Duration::from_millis(100),
    );
    Ingester::run_once(conn, IngestOptions::default(), vec![Box::new(source)]).await.expect("ingest");
}

#[tokio::test]
async fn popularity_ranks_recent_activity_and_is_stamped_with_the_watermark() {
    let db = TestDb::new().await;
    // Movie b: three users recently; a: one user recently; c: one user long before the window.
    ingest_lines(
        &db,
        "2025-01-01T00:00:00,9,GET /data/m/c+1990/0.mpg
2025-06-01T00:00:00,1,GET /data/m/b+1990/0.mpg
2025-06-01T00:00:01,2,GET /data/m/b+1990/0.mpg
2025-06-01T00:00:02,3,GET /rate/b+1990=4
2025-06-01T00:00:03,1,GET /data/m/a+1990/0.mpg
2025-06-01T00:00:04,1,GET /data/m/a+1990/1.mpg
",
    )
    .await;
    sqlx::query("INSERT INTO movies (movie_id, title, source, content_hash) VALUES ('c+1990', 'C', 'test', 'x')")
        .execute(&db.pool)
        .await
        .expect("catalog movie");

    let run = popularity::refresh(&db.pool, PopularityParams { window_days: 30, activity_weight: 1.0 })
        .await
        .expect("refresh");

    assert_eq!(run.watermark, 6);
    assert_eq!(popularity::top(&db.pool, 3).await.expect("top"), vec!["b+1990", "a+1990", "c+1990"]);
    let (users, stamped): (i64, i64) =
        sqlx::query_as("SELECT watch_users, watermark FROM popularity WHERE movie_id = 'c+1990'")
            .fetch_one(&db.pool)
            .await
            .expect("c");
    assert_eq!((users, stamped), (0, 6), "activity outside the window does not count");
}
