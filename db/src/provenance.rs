//! A past answer's provenance, from the `recommendation_provenance` view and
//! `recommendation_data_sources(request_id)` (migration 0003): routing, model and code, release,
//! data. Here (not in the provenance crate) so the load balancer's admin API serves the same
//! document as `lazyrec-provenance show`.

use serde::Serialize;
use sqlx::PgPool;

/// One data source and the part of it an answer saw.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SourceRange {
    /// The source (file path, stream name, Kafka topic/partition).
    pub source: String,
    /// file, stream, kafka.
    pub kind: String,
    /// From this byte (offset)…
    pub from_position: Option<i64>,
    /// …to this one.
    pub to_position: Option<i64>,
    /// Its first event id.
    pub first_event_id: Option<i64>,
    /// Its last event id at or below the watermark.
    pub last_event_id: Option<i64>,
    /// Committed batches.
    pub batches: Option<i64>,
}

/// Everything SQL knows about one answer.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Provenance {
    /// The request id.
    pub request_id: String,
    /// When.
    pub ts: chrono::DateTime<chrono::Utc>,
    /// Who.
    pub user_id: Option<i64>,
    /// HTTP status.
    pub status: i32,
    /// personal, cold_start, degraded, fallback.
    pub kind: Option<String>,
    /// The answer.
    pub movie_ids: Vec<String>,
    /// Degraded.
    pub degraded: bool,
    /// The experiment (salt).
    pub experiment: Option<String>,
    /// Assigned variant.
    pub assigned_variant: Option<String>,
    /// Served variant.
    pub served_variant: String,
    /// The backend.
    pub backend: Option<String>,
    /// `<strategy>@<params hash>+<git sha>`.
    pub model_version: Option<String>,
    /// The strategy (from `models`).
    pub strategy: Option<String>,
    /// Its parameters.
    pub params: Option<serde_json::Value>,
    /// The code that served it.
    pub code_git_sha: Option<String>,
    /// The release.
    pub release_id: Option<i64>,
    /// Its tag.
    pub release_tag: Option<String>,
    /// Its commit.
    pub release_git_sha: Option<String>,
    /// Its pipeline.
    pub release_pipeline_id: Option<String>,
    /// The ingest watermark of the answer.
    pub data_watermark: Option<i64>,
    /// The popularity run it read.
    pub popularity_run: Option<i64>,
    /// When that run was computed.
    pub popularity_computed_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The watermark that run saw.
    pub popularity_watermark: Option<i64>,
    /// The vector collection it read.
    pub collection: Option<String>,
    /// The embedding model of that collection.
    pub embedding_model: Option<String>,
    /// Its text template.
    pub embedding_template: Option<String>,
    /// The catalog snapshot it embedded.
    pub embedding_catalog_hash: Option<String>,
    /// When it went live.
    pub collection_live_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The data sources and ranges in by the watermark.
    #[sqlx(skip)]
    pub sources: Vec<SourceRange>,
}

/// The provenance of `request_id` (None: no such row).
pub async fn provenance(pool: &PgPool, request_id: &str) -> Result<Option<Provenance>, sqlx::Error> {
    let Some(mut p) = sqlx::query_as::<_, Provenance>("SELECT * FROM recommendation_provenance WHERE request_id = $1")
        .bind(request_id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    p.sources =
        sqlx::query_as("SELECT * FROM recommendation_data_sources($1)").bind(request_id).fetch_all(pool).await?;
    Ok(Some(p))
}

impl Provenance {
    /// The readable report: the course's three questions (model, code, data) and the routing.
    pub fn render(&self) -> String {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let num = |v: Option<i64>| v.map_or("-".into(), |n| n.to_string());
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!(
            "request {}  at {}  user {}  status {}  {}",
            self.request_id,
            self.ts,
            num(self.user_id),
            self.status,
            or(&self.kind)
        ));
        line(format!("answer   {}", self.movie_ids.join(",")));
        line(format!(
            "routing  experiment {}  assigned {}  served {}  backend {}",
            or(&self.experiment),
            or(&self.assigned_variant),
            self.served_variant,
            or(&self.backend)
        ));
        line(format!(
            "model    {}  = strategy {} with {}",
            or(&self.model_version),
            or(&self.strategy),
            self.params.as_ref().map_or("-".into(), |p| p.to_string())
        ));
        line(format!(
            "code     git {}  release {} ({})  release commit {}  pipeline {}",
            or(&self.code_git_sha),
            num(self.release_id),
            or(&self.release_tag),
            or(&self.release_git_sha),
            or(&self.release_pipeline_id)
        ));
        line(format!(
            "data     events ≤ {}  popularity run {} (computed {}, at watermark {})",
            num(self.data_watermark),
            num(self.popularity_run),
            self.popularity_computed_at.map_or("-".into(), |t| t.to_string()),
            num(self.popularity_watermark)
        ));
        line(format!(
            "vectors  {}  (model {}, template {}, catalog {}, live since {})",
            or(&self.collection),
            or(&self.embedding_model),
            or(&self.embedding_template),
            or(&self.embedding_catalog_hash),
            self.collection_live_at.map_or("-".into(), |t| t.to_string())
        ));
        for s in &self.sources {
            line(format!(
                "source   {} {}: bytes/offsets {}..{}, events {}..{} ({} batches)",
                s.kind,
                s.source,
                num(s.from_position),
                num(s.to_position),
                num(s.first_event_id),
                num(s.last_event_id),
                num(s.batches)
            ));
        }
        out
    }
}
