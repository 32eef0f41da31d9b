-- Retention: what history refers to is found by index, so the embedder (at every switch) and
-- `lazyrec-provenance prune` ask "does any answer still refer to X?" without scanning history.

-- The popularity run and the vector collection an answer read (from the `x-data-versions`
-- header the load balancer stored in `inputs.data_versions`). One definition, used by the
-- indexes, the provenance view and the retention queries.
CREATE FUNCTION history_popularity_run(inputs jsonb) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (substring(inputs->>'data_versions' FROM 'popularity=([0-9]+)'))::bigint;

CREATE FUNCTION history_collection(inputs jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN substring(inputs->>'data_versions' FROM 'collection=([^;]+)');

CREATE INDEX recommendations_history_popularity_run ON recommendations_history (history_popularity_run(inputs))
    WHERE history_popularity_run(inputs) IS NOT NULL;
CREATE INDEX recommendations_history_collection ON recommendations_history (history_collection(inputs))
    WHERE history_collection(inputs) IS NOT NULL;

CREATE OR REPLACE VIEW recommendation_provenance AS
SELECT h.request_id,
       h.ts,
       h.user_id,
       h.status,
       h.inputs->>'kind'                      AS kind,
       h.movie_ids,
       h.degraded,
       -- routing
       h.experiment,
       h.assigned_variant,
       h.served_variant,
       h.backend,
       -- model and code
       h.model_version,
       m.strategy,
       m.params,
       m.git_sha                              AS code_git_sha,
       h.release_id,
       r.tag                                  AS release_tag,
       r.git_sha                              AS release_git_sha,
       r.pipeline_id                          AS release_pipeline_id,
       -- data
       h.data_watermark,
       v.popularity_run,
       p.computed_at                          AS popularity_computed_at,
       p.watermark                            AS popularity_watermark,
       v.collection,
       c.model                                AS embedding_model,
       c.template                             AS embedding_template,
       c.catalog_hash                         AS embedding_catalog_hash,
       c.live_at                              AS collection_live_at
FROM recommendations_history h
CROSS JOIN LATERAL (
    SELECT history_popularity_run(h.inputs) AS popularity_run,
           history_collection(h.inputs)     AS collection
) v
LEFT JOIN models m ON m.model_version = h.model_version
LEFT JOIN releases r ON r.release_id = h.release_id
LEFT JOIN popularity_runs p ON p.run_id = v.popularity_run
LEFT JOIN embedding_collections c ON c.name = v.collection;
