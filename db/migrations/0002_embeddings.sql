-- Embeddings: a vector cache keyed by (model, text hash) so unchanged movies are never embedded
-- twice, and the history of vector collections (which model, template and catalog snapshot
-- each one holds, and when it became live).

CREATE TABLE embedding_cache (
    model      text NOT NULL,                    -- model id incl. a hash of its weights
    text_hash  text NOT NULL,                    -- sha256 of the movie text (template applied)
    vector     real[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, text_hash)
);

CREATE TABLE embedding_collections (
    name          text PRIMARY KEY,              -- movies_<model>_<template>_<catalog snapshot>
    store         text NOT NULL,                 -- 'edge:<dir>' or 'qdrant:<url>'
    model         text NOT NULL,
    template      text NOT NULL,
    catalog_hash  text NOT NULL,
    dim           integer NOT NULL,
    points        integer,
    state         text NOT NULL DEFAULT 'building', -- building | live | previous | dropped
    created_at    timestamptz NOT NULL DEFAULT now(),
    live_at       timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
