//! Where evaluation data comes from besides files: the interactions in Postgres (what the
//! server reads: watches and ratings, up to the watermark) and content vectors from the vector
//! store's live collection.

use std::collections::HashMap;

use sqlx::PgPool;
use vectorstore::VectorStore;

use crate::dataset::Row;

/// Every (user, movie) with a watch or a rating, ordered by its latest event id; ratings as
/// stars out of 5. Returns the rows and the watermark they were read at (one snapshot).
pub async fn postgres_rows(pool: &PgPool) -> Result<(Vec<Row>, i64), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
    let watermark: i64 = sqlx::query_scalar("SELECT coalesce((SELECT last_event_id FROM ingest_watermark), 0)")
        .fetch_one(&mut *tx)
        .await?;
    type R = (i64, String, i64, Option<i16>, Option<i16>);
    let rows: Vec<R> = sqlx::query_as(
        "SELECT user_id, movie_id, greatest(w.last_event_id, r.event_id), r.rating, r.scale
         FROM (SELECT user_id, movie_id, last_event_id FROM user_watched) w
         FULL JOIN (SELECT user_id, movie_id, rating, scale, event_id FROM ratings) r USING (user_id, movie_id)",
    )
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let rows = rows
        .into_iter()
        .map(|(user, movie, order, rating, scale)| Row {
            user: user.to_string(),
            item: movie,
            rating: server::data::five_star(rating, scale),
            order,
        })
        .collect();
    Ok((rows, watermark))
}

/// Content vectors of the live collection for `items` (by index; `None` where a movie has no
/// point), and the collection's name. `None` when the store has no live collection.
pub async fn content_vectors(
    store: &dyn VectorStore,
    items: &[String],
) -> Result<Option<(String, Vec<Option<Vec<f32>>>)>, vectorstore::StoreError> {
    let Some(collection) = store.live().await? else { return Ok(None) };
    let wanted: HashMap<u64, usize> = items.iter().enumerate().map(|(i, m)| (vectorstore::point_id(m), i)).collect();
    let digests = store.digests(&collection).await?;
    let ids: Vec<u64> = digests.iter().map(|d| d.id).filter(|id| wanted.contains_key(id)).collect();
    let mut out = vec![None; items.len()];
    for chunk in ids.chunks(1024) {
        for (id, v) in store.vectors(&collection, chunk).await? {
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            if norm > 0.0 {
                out[wanted[&id]] = Some(v.into_iter().map(|a| a / norm).collect());
            }
        }
    }
    Ok(Some((collection, out)))
}
