//! Where evaluation data comes from besides files: the interactions in Postgres (what the
//! server reads: watches and ratings, up to the watermark) and content vectors from the vector
//! store's live collection.

use std::collections::HashMap;

use sqlx::PgPool;
use vectorstore::VectorStore;

use crate::dataset::Row;

/// Every (user, movie) with a watch or a rating ([`db::interactions::snapshot`]) as rows
/// ordered by their latest event id, ratings as stars out of 5, and the watermark.
pub async fn postgres_rows(pool: &PgPool) -> Result<(Vec<Row>, i64), sqlx::Error> {
    let (rows, watermark) = db::interactions::snapshot(pool).await?;
    let rows = rows
        .into_iter()
        .map(|i| Row {
            user: i.user_id.to_string(),
            rating: strategy::five_star(i.rating, i.scale),
            item: i.movie_id,
            order: i.last_event_id,
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
        for (id, v) in store.vectors(&collection, vectorstore::Space::Content, chunk).await? {
            let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
            if norm > 0.0 {
                out[wanted[&id]] = Some(v.into_iter().map(|a| a / norm).collect());
            }
        }
    }
    Ok(Some((collection, out)))
}
