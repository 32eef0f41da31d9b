//! Every (user, movie) pair with a watch or a rating, read in one snapshot with the watermark
//! it is consistent with: what the offline evaluator and the behaviour-vector job learn from.

use sqlx::PgPool;

/// One user's interaction with one movie.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Interaction {
    /// Course user id.
    pub user_id: i64,
    /// Course movie id.
    pub movie_id: String,
    /// The latest event about the pair (watch or rating): orders a user's history.
    pub last_event_id: i64,
    /// The latest rating, on its scale.
    pub rating: Option<i16>,
    /// The rating's scale (5 or 10).
    pub scale: Option<i16>,
}

/// All interactions and the watermark, read in one repeatable-read transaction (nothing above
/// the watermark is included, nothing at or below it is missing).
pub async fn snapshot(pool: &PgPool) -> Result<(Vec<Interaction>, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let watermark: i64 = sqlx::query_scalar("SELECT coalesce((SELECT last_event_id FROM ingest_watermark), 0)")
        .fetch_one(&mut *tx)
        .await?;
    let rows: Vec<Interaction> = sqlx::query_as(
        "SELECT user_id, movie_id, greatest(w.last_event_id, r.event_id) AS last_event_id, r.rating, r.scale
         FROM (SELECT user_id, movie_id, last_event_id FROM user_watched) w
         FULL JOIN (SELECT user_id, movie_id, rating, scale, event_id FROM ratings) r USING (user_id, movie_id)",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((rows, watermark))
}
