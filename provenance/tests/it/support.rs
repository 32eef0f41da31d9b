//! What the replay tests share: asking through the load balancer, waiting for the history rows,
//! replaying a set of request ids, routing a role.

use std::time::Duration;

use provenance::replay::{Replayer, Tally};
use testkit::fleet;

/// Requests `/recommend/<user>` through the load balancer for each user; the request ids.
pub async fn ask(base: &str, users: impl IntoIterator<Item = i64>) -> Vec<String> {
    let client = fleet::Client::new();
    let mut ids = Vec::new();
    for user in users {
        let reply = client.get(&format!("{base}/recommend/{user}")).await;
        assert_eq!(reply.status, 200, "user {user}: {}", reply.body);
        ids.push(reply.header("x-request-id").to_string());
    }
    ids
}

/// Waits until every request id is in recommendations_history.
pub async fn shipped(pool: &sqlx::PgPool, ids: &[String]) {
    for _ in 0..300 {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM recommendations_history WHERE request_id = ANY($1)")
            .bind(ids)
            .fetch_one(pool)
            .await
            .expect("count");
        if n as usize == ids.len() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("history rows were not shipped");
}

/// Replays every id; the tally.
pub async fn replay_all(replayer: &mut Replayer, ids: &[String]) -> Tally {
    let mut tally = Tally::default();
    for id in ids {
        let (recorded, outcome) = replayer.replay(id).await.expect("replay");
        tally.add(&recorded, &outcome);
    }
    tally
}

/// Routes `role` (main or nightly) of the load balancer at `admin_url` to `backend`.
pub async fn route(admin_url: &str, role: &str, backend: &str) {
    let reply = fleet::Client::new()
        .try_request(
            "PUT",
            &format!("{admin_url}/admin/{role}"),
            &[("authorization", &format!("Bearer {}", fleet::TOKEN))],
            Some(&serde_json::json!({"backends": [backend]}).to_string()),
        )
        .await
        .expect("admin");
    assert_eq!(reply.status, 200, "{}", reply.body);
}
