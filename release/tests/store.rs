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
