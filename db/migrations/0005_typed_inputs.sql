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
