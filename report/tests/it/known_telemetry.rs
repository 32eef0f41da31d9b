//! The report on a small, fully known telemetry: real Postgres (fresh database), events through
//! the real ingester, history rows as the load balancer writes them, user profiles as
//! `import-users` writes them. Every number below is worked out by hand from the scenario.

use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use db::ingest::{IngestOptions, Ingester};
use db::parse::{DEFAULT_MAX_USER_ID, ParseConfig};
use db::source::StreamSource;
use db::testing::TestDb;
use report::{Params, Range, Report};
use sqlx::Connection as _;

fn t(minutes: i64) -> DateTime<Utc> {
    "2026-11-01T10:00:00Z".parse::<DateTime<Utc>>().expect("time") + TimeDelta::minutes(minutes)
}

fn line(minutes: i64, user: i64, what: &str) -> String {
    format!("{},{user},{what}\n", t(minutes).format("%Y-%m-%dT%H:%M:%S"))
}

async fn answer(pool: &sqlx::PgPool, id: &str, minutes: i64, user: i64, movies: &[&str], kind: &str) {
    testkit::history::HistoryRow::new(id, t(minutes))
        .user(user)
        .latency_us(1_000)
        .movies(movies)
        .kind(kind)
        .insert(pool)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_measures_a_known_telemetry_exactly() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let movies = [
        "alpha+2001",
        "bravo+2002",
        "charlie+2003",
        "delta+2004",
        "echo+2005",
        "f+2006",
        "g+2007",
        "h+2008",
        "i+2009",
        "j+2010",
    ];
    for m in movies {
        sqlx::query("INSERT INTO movies (movie_id, title, source, content_hash) VALUES ($1, $1, 'test', $1)")
            .bind(m)
            .execute(pool)
            .await
            .expect("movie");
    }
    sqlx::query(
        "INSERT INTO users (user_id, age, occupation, gender, source) VALUES
           (1, 25, 'scientist', 'F', 'test'), (2, 40, 'writer', 'M', 'test')",
    )
    .execute(pool)
    .await
    .expect("users");

    // The range is 10:00–11:00. User 2 was answered before it (not new); users 1 and 3 are new.
    answer(pool, "before", -10, 2, &["alpha+2001"], "personal").await;
    answer(pool, "u1", 1, 1, &["alpha+2001", "bravo+2002", "charlie+2003"], "personal").await;
    answer(pool, "u2", 5, 2, &["alpha+2001", "delta+2004"], "personal").await;
    answer(pool, "u3", 40, 3, &["alpha+2001", "bravo+2002"], "cold_start").await;
    // User 1 watches what it was recommended (3 minutes) and rates it 8/10; user 2 watches a
    // movie nobody recommended (1 minute); user 3 too, for 40 minutes, and rates it 10/10.
    let mut log = String::new();
    for minute in 0..3 {
        log.push_str(&line(2, 1, &format!("GET /data/m/alpha+2001/{minute}.mpg")));
    }
    log.push_str(&line(3, 1, "GET /rate/alpha+2001=8"));
    log.push_str(&line(6, 2, "GET /data/m/echo+2005/0.mpg"));
    for minute in 0..40 {
        log.push_str(&line(41, 3, &format!("GET /data/m/echo+2005/{minute}.mpg")));
    }
    log.push_str(&line(45, 3, "GET /rate/echo+2005=10"));
    let conn = sqlx::PgConnection::connect(&db.url).await.expect("connect");
    let opts = IngestOptions {
        parse: ParseConfig { rating_scale: 10, max_user_id: DEFAULT_MAX_USER_ID },
        ..IngestOptions::default()
    };
    let source = StreamSource::new("test".to_string(), std::io::Cursor::new(log.into_bytes()), Duration::from_secs(1));
    Ingester::run_once(conn, opts, vec![Box::new(source)]).await.expect("ingest");
    db::popularity::refresh(pool, db::popularity::PopularityParams::default()).await.expect("popularity");

    let range = Range { since: t(0), until: t(60) };
    let params = Params {
        range,
        baseline: None,
        current: None,
        conversion_window: TimeDelta::minutes(10),
        top: 5,
        popular: 100,
    };
    let report = Report::compute(pool, &params).await.expect("report");
    print!("{}", report.render());

    assert_eq!(report.answers, 3);
    let e = &report.exposure;
    // Slots: alpha 3, bravo 2, charlie 1, delta 1 → 7 of a 10-movie catalog.
    assert_eq!((e.slots, e.recommended_movies, e.catalog), (7, 4, 10));
    assert!((e.coverage - 0.4).abs() < 1e-12);
    // Gini over [0×6, 1, 1, 2, 3]: (3·1 + 5·1 + 7·2 + 9·3) / (10 · 7) = 0.7.
    assert!((e.gini_exposure - 0.7).abs() < 1e-9, "{}", e.gini_exposure);
    // First watches: alpha by user 1 after an answer listing it; echo by 2 and 3, organic.
    assert_eq!((e.watches, e.recommended_watches), (3, 1));
    // Organic watches: echo 2 → Gini over [0×9, 2] = 0.9.
    assert!((e.gini_organic - 0.9).abs() < 1e-9, "{}", e.gini_organic);
    let alpha = &e.top[0];
    assert_eq!((alpha.movie_id.as_str(), alpha.slots, alpha.watches, alpha.organic), ("alpha+2001", 3, 1, 0));
    assert!(alpha.amplification.is_none(), "never watched organically");

    // Fairness: user 1 (F, 25–34, scientist) converted; user 2 (M) did not; user 3 has no profile.
    let f = &report.fairness;
    assert_eq!((f.users, f.users_with_profile), (3, 2));
    let group = |dimension: &str, name: &str| {
        f.groups
            .iter()
            .find(|g| g.dimension == dimension && g.group == name)
            .unwrap_or_else(|| panic!("{dimension}/{name}"))
    };
    assert_eq!((group("gender", "F").conversion.hits, group("gender", "F").conversion.n), (1, 1));
    assert_eq!((group("gender", "M").conversion.hits, group("gender", "M").conversion.n), (0, 1));
    assert_eq!(group("age", "25-34").users, 1);
    assert_eq!(group("age", "35-44").users, 1);
    assert_eq!(group("occupation", "unknown").conversion.n, 1);
    assert_eq!(group("gender", "F").popular_exposure.n, 3, "user 1's three slots");

    // Drift, first half against second: watch lengths 3 and 1 minutes vs 40; ratings 4 vs 5
    // stars; new users 1 of 2 (user 2 was answered before) vs 1 of 1; cold starts 0/2 vs 1/1.
    let d = &report.drift;
    let watch = &d.distributions[0];
    assert_eq!((watch.baseline.n, watch.current.n), (2, 1));
    assert_eq!(watch.baseline.counts, [1, 1, 0, 0, 0, 0, 0]);
    assert_eq!(watch.current.counts, [0, 0, 0, 0, 1, 0, 0]);
    assert!(watch.psi.expect("psi") > 0.25, "a shift");
    let rating = &d.distributions[1];
    assert_eq!((rating.baseline.mean, rating.current.mean), (4.0, 5.0));
    assert_eq!((d.new_users.0.hits, d.new_users.0.n, d.new_users.1.hits, d.new_users.1.n), (1, 2, 1, 1));
    assert_eq!((d.cold_start_answers.0.hits, d.cold_start_answers.1.hits), (0, 1));

    // The command: JSON over the same range; a backwards range is one line, exit 2.
    let bin = env!("CARGO_BIN_EXE_lazyrec-report");
    let out = Command::new(bin)
        .args(["--since", &t(0).to_rfc3339(), "--until", &t(60).to_rfc3339(), "--json"])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(doc["answers"], 3);
    assert_eq!(doc["exposure"]["slots"], 7);
    let bad = Command::new(bin)
        .args(["--since", &t(60).to_rfc3339(), "--until", &t(0).to_rfc3339()])
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("is not before") && stderr.trim().lines().count() == 1, "{stderr}");
}
