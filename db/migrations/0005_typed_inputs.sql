-- Typed inputs: the data versions an answer names become a JSON object, and the search
-- parameters of a model are recorded with it.

-- A model's search parameters (`{"exact": false, "ef": 256}`): part of the model, since another
-- `ef` can return other neighbour lists. NULL: recorded before they were, when every server
-- searched with the defaults (exact false, ef 256).
ALTER TABLE models ADD COLUMN search jsonb;

-- `inputs.data_versions` was the header's text (`popularity=3;collection=movies_x`); it is now the
-- object `{"popularity": 3, "collection": "movies_x"}` (degraded answers: `"exclude": "history"`
-- or `"none"`), read as an object: no regular expression left in SQL.
CREATE OR REPLACE FUNCTION history_popularity_run(inputs jsonb) RETURNS bigint
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN (inputs #>> '{data_versions,popularity}')::bigint;

CREATE OR REPLACE FUNCTION history_collection(inputs jsonb) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN inputs #>> '{data_versions,collection}';

-- Existing rows: the text form, parsed once here (the same rule as `DataVersions::parse`).
UPDATE recommendations_history
SET inputs = jsonb_set(inputs, '{data_versions}', jsonb_strip_nulls(jsonb_build_object(
        'popularity', (substring(inputs->>'data_versions' FROM 'popularity=([0-9]+)'))::bigint,
        'collection', substring(inputs->>'data_versions' FROM 'collection=([^;]+)'),
        'exclude',    substring(inputs->>'data_versions' FROM 'exclude=(history|none)'))))
WHERE jsonb_typeof(inputs->'data_versions') = 'string';

-- The two expression indexes were built with the old definitions.
REINDEX INDEX recommendations_history_popularity_run;
REINDEX INDEX recommendations_history_collection;

-- The provenance view also names the model's search parameters.
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
       c.live_at                              AS collection_live_at,
       coalesce(m.search, '{"exact": false, "ef": 256}'::jsonb) AS search
FROM recommendations_history h
CROSS JOIN LATERAL (
    SELECT history_popularity_run(h.inputs) AS popularity_run,
           history_collection(h.inputs)     AS collection
) v
LEFT JOIN models m ON m.model_version = h.model_version
LEFT JOIN releases r ON r.release_id = h.release_id
LEFT JOIN popularity_runs p ON p.run_id = v.popularity_run
LEFT JOIN embedding_collections c ON c.name = v.collection;
