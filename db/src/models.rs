//! `models`: every model a server has served, by version — the strategy, its parameters and the
//! search parameters of its neighbour lists (what a replay rebuilds it from).

use sqlx::PgPool;

/// A recorded model.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedModel {
    /// The registry name.
    pub strategy: String,
    /// The resolved parameters.
    pub params: serde_json::Value,
    /// The search parameters; `None` for models recorded before they were (served with the
    /// defaults of that time).
    pub search: Option<serde_json::Value>,
    /// The code that served it first.
    pub git_sha: String,
}

/// Records a model once per version (a second server of the same version changes nothing).
pub async fn register(pool: &PgPool, model_version: &str, model: &RecordedModel) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO models (model_version, strategy, params, search, git_sha) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (model_version) DO NOTHING",
    )
    .bind(model_version)
    .bind(&model.strategy)
    .bind(&model.params)
    .bind(&model.search)
    .bind(&model.git_sha)
    .execute(pool)
    .await?;
    Ok(())
}

/// The model recorded under `model_version`.
pub async fn find(pool: &PgPool, model_version: &str) -> Result<Option<RecordedModel>, sqlx::Error> {
    let row: Option<(String, serde_json::Value, Option<serde_json::Value>, String)> =
        sqlx::query_as("SELECT strategy, params, search, git_sha FROM models WHERE model_version = $1")
            .bind(model_version)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(strategy, params, search, git_sha)| RecordedModel { strategy, params, search, git_sha }))
}
