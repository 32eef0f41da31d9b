//! Course users: the API's JSON (`{"<id>": "{\"user_id\":..}"}`, values JSON strings or
//! objects) or the CSV captured by course teams (`user_id,age,occupation,gender`).

// Matching on serde_json::Value: "any other JSON shape" is the meaning of the wildcard arms.
#![allow(clippy::wildcard_enum_match_arm)]

use std::path::Path;

use serde::Deserialize;
use sqlx::PgPool;

use super::ImportStats;

/// A course user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// Id.
    pub user_id: i64,
    /// Age in years.
    pub age: Option<i32>,
    /// Occupation label.
    pub occupation: Option<String>,
    /// `M` / `F`.
    pub gender: Option<String>,
}

/// Reading a users file failed.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// I/O.
    #[error("reading {0}: {1}")]
    Io(String, #[source] std::io::Error),
    /// Malformed CSV.
    #[error("{0}: {1}")]
    Csv(String, #[source] csv::Error),
    /// Malformed JSON.
    #[error("{0}: {1}")]
    Json(String, #[source] serde_json::Error),
}

/// Reads users from a `.csv` or `.json` file; returns them and the number of unusable records.
pub fn read_users(path: &Path) -> Result<(Vec<User>, u64), UsersError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| UsersError::Io(name.clone(), e))?;
    let mut skipped = 0;
    let mut users = Vec::new();
    if text.trim_start().starts_with('{') {
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| UsersError::Json(name.clone(), e))?;
        for (_key, value) in map {
            let parsed = match value {
                serde_json::Value::String(s) => serde_json::from_str::<User>(&s),
                other => serde_json::from_value::<User>(other),
            };
            match parsed {
                Ok(u) => users.push(u),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "skipping a user record");
                    skipped += 1;
                }
            }
        }
    } else {
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        for record in reader.deserialize::<User>() {
            match record {
                Ok(u) => users.push(u),
                Err(e) => {
                    tracing::warn!(file = %name, error = %e, "skipping a user record");
                    skipped += 1;
                }
            }
        }
    }
    users.sort_by_key(|u| u.user_id);
    Ok((users, skipped))
}

/// Inserts or updates users.
pub async fn upsert_users(pool: &PgPool, users: &[User], source: &str) -> Result<ImportStats, sqlx::Error> {
    let mut stats = ImportStats { read: users.len() as u64, ..ImportStats::default() };
    let mut tx = pool.begin().await?;
    for chunk in users.chunks(5_000) {
        let ids: Vec<i64> = chunk.iter().map(|u| u.user_id).collect();
        let ages: Vec<Option<i32>> = chunk.iter().map(|u| u.age).collect();
        let occupations: Vec<Option<String>> = chunk.iter().map(|u| u.occupation.clone()).collect();
        let genders: Vec<Option<String>> = chunk.iter().map(|u| u.gender.clone()).collect();
        let rows: Vec<(bool,)> = sqlx::query_as(
            "INSERT INTO users (user_id, age, occupation, gender, source)
             SELECT DISTINCT ON (id) id, age, occ, g, $5 FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[]) AS t(id, age, occ, g)
             ON CONFLICT (user_id) DO UPDATE SET age = excluded.age, occupation = excluded.occupation,
                gender = excluded.gender, source = excluded.source, updated_at = now()
             WHERE (users.age, users.occupation, users.gender) IS DISTINCT FROM (excluded.age, excluded.occupation, excluded.gender)
             RETURNING (xmax = 0)",
        )
        .bind(&ids)
        .bind(&ages)
        .bind(&occupations)
        .bind(&genders)
        .bind(source)
        .fetch_all(&mut *tx)
        .await?;
        let inserted = rows.iter().filter(|(new,)| *new).count() as u64;
        stats.inserted += inserted;
        stats.updated += rows.len() as u64 - inserted;
    }
    stats.unchanged = stats.read - stats.inserted - stats.updated;
    tx.commit().await?;
    Ok(stats)
}
