//! A Qdrant server or cluster through qdrant-client (gRPC). What users switch to when one
//! machine is not enough; the live pointer is a collection alias.

use std::time::Duration;

use async_trait::async_trait;
use qdrant_client::qdrant::{
    Condition, CountPointsBuilder, CreateAliasBuilder, CreateCollectionBuilder, CreateFieldIndexCollectionBuilder,
    DeletePointsBuilder, Distance, FieldType, Filter, GetPointsBuilder, PointId, PointStruct, PointsIdsList,
    ScrollPointsBuilder, SearchParamsBuilder, SearchPointsBuilder, UpsertPointsBuilder, VectorParamsBuilder,
    point_id::PointIdOptions, vector_output, vectors_output::VectorsOptions,
};
use qdrant_client::{Payload, Qdrant};

use super::{Hit, MoviePoint, PointDigest, SearchFilter, StoreError, VectorStore};

const ENGINE: &str = "qdrant";
/// The alias readers use.
pub const LIVE_ALIAS: &str = "movies_live";

fn engine(operation: &'static str) -> impl FnOnce(qdrant_client::QdrantError) -> StoreError {
    move |e| StoreError::Engine { engine: ENGINE, operation, detail: e.to_string() }
}

/// A Qdrant server.
pub struct ServerStore {
    client: Qdrant,
    url: String,
}

impl std::fmt::Debug for ServerStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerStore").field("url", &self.url).finish()
    }
}

impl ServerStore {
    /// Connects to `url` (gRPC, e.g. `http://localhost:6334`) with an optional API key.
    pub fn connect(url: &str, api_key: Option<String>, timeout: Duration) -> Result<Self, StoreError> {
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .timeout(timeout)
            .skip_compatibility_check()
            .build()
            .map_err(engine("connecting"))?;
        Ok(Self { client, url: url.to_string() })
    }
}

fn num_id(id: Option<&PointId>) -> Option<u64> {
    match id?.point_id_options.as_ref()? {
        PointIdOptions::Num(n) => Some(*n),
        PointIdOptions::Uuid(_) => None,
    }
}

fn payload_string(payload: &std::collections::HashMap<String, qdrant_client::qdrant::Value>, key: &str) -> String {
    payload.get(key).and_then(|v| v.as_str()).map(|s| s.to_string()).unwrap_or_default()
}

#[async_trait]
impl VectorStore for ServerStore {
    fn describe(&self) -> String {
        format!("qdrant:{}", self.url)
    }

    async fn collections(&self) -> Result<Vec<String>, StoreError> {
        let list = self.client.list_collections().await.map_err(engine("listing collections"))?;
        let mut names: Vec<String> = list.collections.into_iter().map(|c| c.name).collect();
        names.sort();
        Ok(names)
    }

    async fn create_collection(&self, name: &str, dim: usize) -> Result<(), StoreError> {
        if self.client.collection_exists(name).await.map_err(engine("checking a collection"))? {
            return Ok(());
        }
        self.client
            .create_collection(
                CreateCollectionBuilder::new(name)
                    .vectors_config(VectorParamsBuilder::new(dim as u64, Distance::Cosine)),
            )
            .await
            .map_err(engine("creating a collection"))?;
        for (field, kind) in
            [("genres", FieldType::Keyword), ("year", FieldType::Integer), ("movie_id", FieldType::Keyword)]
        {
            self.client
                .create_field_index(CreateFieldIndexCollectionBuilder::new(name, field, kind).wait(true))
                .await
                .map_err(engine("creating a payload index"))?;
        }
        Ok(())
    }

    async fn drop_collection(&self, name: &str) -> Result<(), StoreError> {
        self.client.delete_collection(name).await.map_err(engine("dropping a collection"))?;
        Ok(())
    }

    async fn upsert(&self, collection: &str, points: Vec<MoviePoint>) -> Result<(), StoreError> {
        let points: Vec<PointStruct> = points
            .into_iter()
            .map(|p| {
                let payload = Payload::try_from(serde_json::json!({
                    "movie_id": p.movie_id, "title": p.title, "year": p.year,
                    "genres": p.genres, "text_hash": p.text_hash,
                }))
                .unwrap_or_default();
                PointStruct::new(p.id, p.vector, payload)
            })
            .collect();
        for chunk in points.chunks(256) {
            self.client
                .upsert_points(UpsertPointsBuilder::new(collection, chunk.to_vec()).wait(true))
                .await
                .map_err(engine("upsert"))?;
        }
        Ok(())
    }

    async fn delete(&self, collection: &str, ids: Vec<u64>) -> Result<(), StoreError> {
        let ids: Vec<PointId> = ids.into_iter().map(PointId::from).collect();
        self.client
            .delete_points(DeletePointsBuilder::new(collection).points(PointsIdsList { ids }).wait(true))
            .await
            .map_err(engine("delete"))?;
        Ok(())
    }

    async fn finish_bulk_load(&self, _collection: &str) -> Result<(), StoreError> {
        // The server indexes in the background as points arrive; nothing to force.
        Ok(())
    }

    async fn count(&self, collection: &str) -> Result<u64, StoreError> {
        let r = self.client.count(CountPointsBuilder::new(collection).exact(true)).await.map_err(engine("count"))?;
        Ok(r.result.map(|c| c.count).unwrap_or(0))
    }

    async fn digests(&self, collection: &str) -> Result<Vec<PointDigest>, StoreError> {
        let mut out = Vec::new();
        let mut offset: Option<PointId> = None;
        loop {
            let mut req = ScrollPointsBuilder::new(collection).limit(1_000).with_payload(true).with_vectors(false);
            if let Some(o) = offset.take() {
                req = req.offset(o);
            }
            let page = self.client.scroll(req).await.map_err(engine("scroll"))?;
            for p in page.result {
                if let Some(id) = num_id(p.id.as_ref()) {
                    out.push(PointDigest {
                        id,
                        movie_id: payload_string(&p.payload, "movie_id"),
                        text_hash: payload_string(&p.payload, "text_hash"),
                    });
                }
            }
            match page.next_page_offset {
                Some(next) => offset = Some(next),
                None => return Ok(out),
            }
        }
    }

    async fn vectors(&self, collection: &str, ids: &[u64]) -> Result<Vec<(u64, Vec<f32>)>, StoreError> {
        let point_ids: Vec<PointId> = ids.iter().map(|id| PointId::from(*id)).collect();
        let r = self
            .client
            .get_points(GetPointsBuilder::new(collection, point_ids).with_vectors(true).with_payload(false))
            .await
            .map_err(engine("retrieve"))?;
        let mut found: std::collections::HashMap<u64, Vec<f32>> = std::collections::HashMap::new();
        for p in r.result {
            let Some(id) = num_id(p.id.as_ref()) else { continue };
            #[allow(deprecated)]
            let vector = match p.vectors.and_then(|v| v.vectors_options) {
                Some(VectorsOptions::Vector(v)) => match v.vector {
                    Some(vector_output::Vector::Dense(d)) => Some(d.data),
                    Some(vector_output::Vector::Sparse(_) | vector_output::Vector::MultiDense(_)) => None,
                    None => Some(v.data),
                },
                Some(VectorsOptions::Vectors(_)) | None => None,
            };
            if let Some(vector) = vector {
                found.insert(id, vector);
            }
        }
        Ok(ids.iter().filter_map(|id| Some((*id, found.remove(id)?))).collect())
    }

    async fn search(
        &self,
        collection: &str,
        vector: Vec<f32>,
        limit: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<Hit>, StoreError> {
        let mut req = SearchPointsBuilder::new(collection, vector, limit as u64).with_payload(true);
        if filter.exact {
            req = req.params(SearchParamsBuilder::default().exact(true));
        }
        let mut f = Filter::default();
        if !filter.any_genre.is_empty() {
            f.must.push(Condition::matches("genres", filter.any_genre.clone()));
        }
        if !filter.exclude_ids.is_empty() {
            f.must_not.push(Condition::has_id(filter.exclude_ids.iter().copied()));
        }
        if !f.must.is_empty() || !f.must_not.is_empty() {
            req = req.filter(f);
        }
        let r = self.client.search_points(req).await.map_err(engine("search"))?;
        Ok(r.result
            .into_iter()
            .filter_map(|p| {
                Some(Hit {
                    id: num_id(p.id.as_ref())?,
                    movie_id: payload_string(&p.payload, "movie_id"),
                    score: p.score,
                })
            })
            .collect())
    }

    async fn live(&self) -> Result<Option<String>, StoreError> {
        let aliases = self.client.list_aliases().await.map_err(engine("listing aliases"))?;
        Ok(aliases.aliases.into_iter().find(|a| a.alias_name == LIVE_ALIAS).map(|a| a.collection_name))
    }

    async fn set_live(&self, collection: &str) -> Result<(), StoreError> {
        // Qdrant's create-alias replaces an existing alias of the same name in one operation,
        // so readers see either the old or the new collection, never none.
        self.client
            .create_alias(CreateAliasBuilder::new(collection, LIVE_ALIAS))
            .await
            .map_err(engine("switching the live alias"))?;
        Ok(())
    }
}
