-- Provenance: what a past recommendation was made from stays findable (and replayable).

-- Every popularity run's list is kept (the `popularity` table holds only the latest): an answer
-- records the run it used, and a replay reads that run's list.
CREATE TABLE popularity_run_movies (
    run_id      bigint NOT NULL REFERENCES popularity_runs (run_id),
    rank        integer NOT NULL,
    movie_id    text NOT NULL,
    watch_users bigint NOT NULL,
    PRIMARY KEY (run_id, rank)
);
INSERT INTO popularity_run_movies (run_id, rank, movie_id, watch_users)
SELECT run_id, rank, movie_id, watch_users FROM popularity;

-- Every model a server has served: its version (as recorded on each answer) → strategy and
-- parameters. Servers register themselves at start; a release records the same version.
CREATE TABLE models (
    model_version text PRIMARY KEY,              -- <strategy>@<params hash>+<git sha>
    strategy      text NOT NULL,
    params        jsonb NOT NULL,
    git_sha       text NOT NULL,
    first_served  timestamptz NOT NULL DEFAULT now()
);

-- One row per answer with everything that made it: routing, model (strategy, parameters, code),
-- release (tag, git sha, pipeline), data (watermark, popularity run, vector collection).
CREATE VIEW recommendation_provenance AS
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
    SELECT (substring(h.inputs->>'data_versions' FROM 'popularity=([0-9]+)'))::bigint AS popularity_run,
           substring(h.inputs->>'data_versions' FROM 'collection=([^;]+)')             AS collection
) v
LEFT JOIN models m ON m.model_version = h.model_version
LEFT JOIN releases r ON r.release_id = h.release_id
LEFT JOIN popularity_runs p ON p.run_id = v.popularity_run
LEFT JOIN embedding_collections c ON c.name = v.collection;

-- The data an answer saw, by source: every committed batch with events at or below its
-- watermark (files: byte ranges; Kafka: offsets).
CREATE FUNCTION recommendation_data_sources(req text)
RETURNS TABLE (source text, kind text, from_position bigint, to_position bigint,
               first_event_id bigint, last_event_id bigint, batches bigint)
LANGUAGE sql STABLE AS $$
    SELECT b.source, s.kind, min(b.from_position), max(b.to_position),
           min(b.first_event_id), max(b.last_event_id), count(*)
    FROM ingest_batches b JOIN ingest_sources s USING (source)
    WHERE b.last_event_id <= (SELECT data_watermark FROM recommendations_history WHERE request_id = req)
    GROUP BY b.source, s.kind
    ORDER BY min(b.first_event_id)
$$;
