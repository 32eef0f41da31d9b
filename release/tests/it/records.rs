//! Release records on a real Postgres: allowed moves only, each with its event; unique tags.

use db::testing::TestDb;
use release::store::{self, NewRelease, State, StoreError};

fn release(tag: &str) -> NewRelease {
    NewRelease {
        tag: tag.into(),
        version: tag.rsplit('-').next().unwrap_or_default().into(),
        git_sha: Some("abc123".into()),
        pipeline_id: Some("42".into()),
        strategy: "neighbours-v2".into(),
        params: serde_json::json!({}),
        model_version: "neighbours-v2@0000+abc123".into(),
        embedding_version: Some("movies_x".into()),
        data_watermark: Some(100_836),
        experiment_salt: tag.into(),
        share: 0.2,
    }
}

#[tokio::test]
async fn a_release_moves_only_along_allowed_transitions_and_every_move_is_an_event() {
    let db = TestDb::new().await;
    let id = store::create(&db.pool, &release("release-recommender-nightly-1")).await.expect("create");
    assert!(matches!(
        store::create(&db.pool, &release("release-recommender-nightly-1")).await,
        Err(StoreError::Exists(_))
    ));
    // Not deployable before the gate.
    let refused = store::transition(&db.pool, id, State::Deployed, "skip the gate", serde_json::json!({})).await;
    assert!(matches!(refused, Err(StoreError::Transition { .. })), "{refused:?}");
    store::transition(&db.pool, id, State::Gated, "ndcg@20 +8.6 %", serde_json::json!({"ndcg": 0.14}))
        .await
        .expect("gate");
    store::transition(&db.pool, id, State::Deployed, "nightly ready", serde_json::json!({})).await.expect("deploy");
    store::record_online(&db.pool, id, &serde_json::json!({"conversion": 0.15})).await.expect("online");
    store::transition(&db.pool, id, State::Promoted, "nightly not worse", serde_json::json!({"p": 0.001}))
        .await
        .expect("promote");
    assert_eq!(store::state(&db.pool, id).await.expect("state"), State::Promoted);
    let (decision, reason, online): (Option<String>, Option<String>, Option<serde_json::Value>) =
        sqlx::query_as("SELECT decision, decision_reason, online_metrics FROM releases WHERE release_id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("row");
    assert_eq!((decision.as_deref(), reason.as_deref()), (Some("promoted"), Some("nightly not worse")));
    assert_eq!(online, Some(serde_json::json!({"conversion": 0.15})));
    let steps: Vec<String> = sqlx::query_scalar("SELECT step FROM release_events WHERE release_id = $1 ORDER BY id")
        .bind(id)
        .fetch_all(&db.pool)
        .await
        .expect("events");
    assert_eq!(steps, ["created", "state.gated", "state.deployed", "evaluate", "state.promoted"]);
    let before_after: serde_json::Value =
        sqlx::query_scalar("SELECT details FROM release_events WHERE release_id = $1 AND step = 'state.promoted'")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .expect("event");
    assert_eq!((before_after["before"].as_str(), before_after["after"].as_str()), (Some("deployed"), Some("promoted")));
    // A final state stays final; an unknown release is named.
    let rejected = store::create(&db.pool, &release("release-recommender-nightly-2")).await.expect("create");
    store::transition(&db.pool, rejected, State::Rejected, "gate failed", serde_json::json!({})).await.expect("reject");
    assert!(store::transition(&db.pool, rejected, State::Gated, "again", serde_json::json!({})).await.is_err());
    assert!(matches!(store::state(&db.pool, 999).await, Err(StoreError::NotFound(_))));
}

/// The value of the sample `name{labels}` in exposition `text` (labels as written, sorted).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn the_exporter_reports_states_the_latest_look_and_decisions_from_the_records() {
    use release::decision::{Criteria, decide};
    use release::online::VariantNumbers;
    use release::stats::Counts;
    let db = TestDb::new().await;
    let numbers = |variant: &str, users, n, hits| VariantNumbers {
        variant: variant.into(),
        requests: n,
        users,
        conversion: Counts { hits, n },
        errors: 0,
        failed_over: 0,
        degraded: 0,
        p50_ms: 5.0,
        p99_ms: 40.0,
    };
    // A running nightly with two looks, an aborted one, a rejected one.
    let running = store::create(&db.pool, &release("release-recommender-nightly-7")).await.expect("create");
    store::transition(&db.pool, running, State::Gated, "gate", serde_json::json!({})).await.expect("gate");
    store::transition(&db.pool, running, State::Deployed, "ready", serde_json::json!({})).await.expect("deploy");
    let c = Criteria::default();
    let early = decide(
        numbers("main", 800, 400, 40),
        numbers("nightly", 200, 100, 12),
        0,
        0.2,
        std::time::Duration::from_secs(60),
        1.0,
        &c,
    );
    store::record_online(&db.pool, running, &serde_json::to_value(&early).expect("json")).await.expect("look 1");
    let late = decide(
        numbers("main", 8_000, 40_000, 4_000),
        numbers("nightly", 2_000, 10_000, 1_100),
        0,
        0.2,
        std::time::Duration::from_secs(3_600),
        1.0,
        &c,
    );
    store::record_online(&db.pool, running, &serde_json::to_value(&late).expect("json")).await.expect("look 2");
    let aborted = store::create(&db.pool, &release("release-recommender-nightly-8")).await.expect("create");
    store::transition(&db.pool, aborted, State::Gated, "gate", serde_json::json!({})).await.expect("gate");
    store::transition(&db.pool, aborted, State::Aborted, "latency", serde_json::json!({})).await.expect("abort");
    let rejected = store::create(&db.pool, &release("release-recommender-nightly-9")).await.expect("create");
    store::transition(&db.pool, rejected, State::Rejected, "worse", serde_json::json!({})).await.expect("reject");

    let text = release::metrics::render(&db.pool, &Default::default()).await.expect("render");
    let r = running.to_string();
    assert_eq!(
        sample(&text, &format!("lazyrec_release_conversion{{release_id=\"{r}\",variant=\"nightly\"}}")),
        Some(0.11)
    );
    assert_eq!(sample(&text, &format!("lazyrec_release_conversion{{release_id=\"{r}\",variant=\"main\"}}")), Some(0.1));
    assert_eq!(
        sample(&text, &format!("lazyrec_release_responses{{release_id=\"{r}\",variant=\"nightly\"}}")),
        Some(10_000.0)
    );
    let diff =
        sample(&text, &format!("lazyrec_release_conversion_difference{{bound=\"estimate\",release_id=\"{r}\"}}"));
    assert!(diff.is_some_and(|d| (d - 0.01).abs() < 1e-9), "{diff:?}\n{text}");
    let p = sample(&text, &format!("lazyrec_release_p_value{{release_id=\"{r}\",test=\"always_valid\"}}"));
    assert_eq!(p, Some(late.comparison.p_always_valid), "the latest look's");
    let age = sample(
        &text,
        &format!("lazyrec_release_nightly_age_seconds{{release_id=\"{r}\",tag=\"release-recommender-nightly-7\"}}"),
    );
    assert!(age.is_some_and(|a| (0.0..60.0).contains(&a)), "{age:?}");
    for (series, want) in [
        ("lazyrec_releases{state=\"deployed\"}", 1.0),
        ("lazyrec_releases{state=\"aborted\"}", 1.0),
        ("lazyrec_releases{state=\"rejected\"}", 1.0),
        ("lazyrec_releases{state=\"promoted\"}", 0.0),
        ("lazyrec_release_decisions_total{outcome=\"aborted\"}", 1.0),
        ("lazyrec_release_decisions_total{outcome=\"rejected\"}", 1.0),
        ("lazyrec_release_decisions_total{outcome=\"promoted\"}", 0.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
    }
    for outcome in ["promote", "abort", "continue"] {
        let looks = [&early, &late]
            .iter()
            .filter(|e| serde_json::to_value(&e.decision).expect("json")["outcome"] == outcome)
            .count();
        let series = format!("lazyrec_release_looks_total{{outcome=\"{outcome}\"}}");
        assert_eq!(sample(&text, &series), Some(looks as f64), "{series}");
    }
    assert!(text.contains(&format!(
        "lazyrec_release_info{{model_version=\"neighbours-v2@0000+abc123\",release_id=\"{r}\",state=\"deployed\",tag=\"release-recommender-nightly-7\"}} 1"
    )), "{text}");
}
