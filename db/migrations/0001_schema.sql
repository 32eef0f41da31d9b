-- The whole lazyrec schema. Later issues fill these tables; they do not reshape them.
-- Conventions: course movie ids (`toy+story+1995`) are the movie key everywhere; user ids are
-- bigint; every event has an `event_id` from the ingest watermark; times are timestamptz (UTC).

-- ---------------------------------------------------------------------------------------------
-- Catalog and users
-- ---------------------------------------------------------------------------------------------
CREATE TABLE movies (
    movie_id          text PRIMARY KEY,          -- course id, e.g. 'toy+story+1995'
    tmdb_id           bigint,
    imdb_id           text,
    ml_movie_id       integer,                   -- MovieLens movieId when known
    title             text NOT NULL,
    original_title    text,
    year              integer,
    genres            text[] NOT NULL DEFAULT '{}',
    overview          text,
    tagline           text,
    keywords          text[] NOT NULL DEFAULT '{}',
    popularity        double precision,          -- TMDB popularity
    vote_average      double precision,
    vote_count        integer,
    runtime           integer,
    original_language text,
    release_date      date,
    source            text NOT NULL,             -- which import wrote the row
    raw               jsonb NOT NULL DEFAULT '{}'::jsonb,
    content_hash      text NOT NULL,             -- hash of the fields above: drives incremental embedding
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX movies_tmdb_id ON movies (tmdb_id);

CREATE TABLE users (
    user_id    bigint PRIMARY KEY,
    age        integer,
    occupation text,
    gender     text,
    source     text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Ingest bookkeeping: the watermark, per-source offsets, batches, rejected lines
-- ---------------------------------------------------------------------------------------------
-- Exactly one row. Every event with event_id <= last_event_id is committed; none above it is.
CREATE TABLE ingest_watermark (
    singleton     boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    last_event_id bigint NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO ingest_watermark (last_event_id) VALUES (0);

-- One row per input (a file path, a named stdin stream, later a Kafka topic/partition).
-- `position` advances in the same transaction as the events it covers.
CREATE TABLE ingest_sources (
    source          text PRIMARY KEY,
    kind            text NOT NULL,               -- 'file' | 'stream' | 'kafka'
    position        bigint NOT NULL DEFAULT 0,   -- bytes (files, streams) or offset (kafka)
    fingerprint     text,                        -- hash of the first bytes: detects a replaced file
    fingerprint_len bigint,
    lines           bigint NOT NULL DEFAULT 0,
    accepted        bigint NOT NULL DEFAULT 0,
    rejected        bigint NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per committed batch: which events came from which bytes of which source.
CREATE TABLE ingest_batches (
    batch_id       bigserial PRIMARY KEY,
    source         text NOT NULL REFERENCES ingest_sources (source),
    from_position  bigint NOT NULL,
    to_position    bigint NOT NULL,
    first_event_id bigint,                       -- NULL when the batch had only rejected lines
    last_event_id  bigint,
    lines          integer NOT NULL,
    accepted       integer NOT NULL,
    rejected       integer NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE rejected_lines (
    id          bigserial PRIMARY KEY,
    source      text NOT NULL,
    line_no     bigint NOT NULL,                 -- 1-based line number within the source
    position    bigint NOT NULL,                 -- byte offset of the line's start
    reason      text NOT NULL,                   -- stable code, see RejectReason::code
    detail      text NOT NULL,
    raw         text NOT NULL,                   -- the line as read (invalid UTF-8 replaced)
    rejected_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rejected_lines_reason ON rejected_lines (reason, rejected_at);

-- ---------------------------------------------------------------------------------------------
-- Events (append-only; event ids are unique across the four tables)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE watch_events (
    event_id bigint NOT NULL,
    ts       timestamptz NOT NULL,
    user_id  bigint NOT NULL,
    movie_id text NOT NULL,
    minute   integer NOT NULL
);
CREATE INDEX watch_events_event_id ON watch_events USING brin (event_id);

CREATE TABLE rating_events (
    event_id bigint NOT NULL,
    ts       timestamptz NOT NULL,
    user_id  bigint NOT NULL,
    movie_id text NOT NULL,
    rating   smallint NOT NULL,
    scale    smallint NOT NULL
);
CREATE INDEX rating_events_event_id ON rating_events USING brin (event_id);

CREATE TABLE recommendation_events (
    event_id   bigint NOT NULL,
    ts         timestamptz NOT NULL,
    user_id    bigint NOT NULL,
    server     text NOT NULL,
    status     integer NOT NULL,
    latency_ms integer NOT NULL,
    movie_ids  text[],                           -- status 200: what the simulator parsed
    error      text                              -- other statuses: the error text
);
CREATE INDEX recommendation_events_event_id ON recommendation_events USING brin (event_id);

CREATE TABLE account_events (
    event_id bigint NOT NULL,
    ts       timestamptz NOT NULL,
    user_id  bigint NOT NULL
);
CREATE INDEX account_events_event_id ON account_events USING brin (event_id);

-- ---------------------------------------------------------------------------------------------
-- Per-user summaries maintained by the ingester in the same transaction as the events
-- ---------------------------------------------------------------------------------------------
CREATE TABLE user_watched (
    user_id        bigint NOT NULL,
    movie_id       text NOT NULL,
    minute_events  integer NOT NULL,             -- watched-minute lines seen
    max_minute     integer NOT NULL,
    first_ts       timestamptz NOT NULL,
    last_ts        timestamptz NOT NULL,
    first_event_id bigint NOT NULL,
    last_event_id  bigint NOT NULL,
    PRIMARY KEY (user_id, movie_id)
);
CREATE INDEX user_watched_movie ON user_watched (movie_id);

-- The latest rating per (user, movie): latest by log time, then by event id.
CREATE TABLE ratings (
    user_id  bigint NOT NULL,
    movie_id text NOT NULL,
    rating   smallint NOT NULL,
    scale    smallint NOT NULL,
    ts       timestamptz NOT NULL,
    event_id bigint NOT NULL,
    PRIMARY KEY (user_id, movie_id)
);
CREATE INDEX ratings_movie ON ratings (movie_id);

-- ---------------------------------------------------------------------------------------------
-- Popularity (recomputed by `lazyrec-db popularity`), stamped with the watermark it saw
-- ---------------------------------------------------------------------------------------------
CREATE TABLE popularity_runs (
    run_id       bigserial PRIMARY KEY,
    computed_at  timestamptz NOT NULL DEFAULT now(),
    watermark    bigint NOT NULL,
    window_start timestamptz,
    window_end   timestamptz,
    params       jsonb NOT NULL,
    movies       integer NOT NULL
);

CREATE TABLE popularity (
    movie_id    text PRIMARY KEY,
    rank        integer NOT NULL,
    score       double precision NOT NULL,
    watch_users bigint NOT NULL,                 -- distinct users with activity in the window
    tmdb_score  double precision NOT NULL,
    run_id      bigint NOT NULL REFERENCES popularity_runs (run_id),
    watermark   bigint NOT NULL
);
CREATE INDEX popularity_rank ON popularity (rank);

-- ---------------------------------------------------------------------------------------------
-- Serving, routing and releases (written by server / loadbalancer / ci)
-- ---------------------------------------------------------------------------------------------
CREATE TABLE releases (
    release_id        bigserial PRIMARY KEY,
    tag               text UNIQUE,               -- release-recommender-nightly-<v>
    version           text NOT NULL,
    git_sha           text,
    pipeline_id       text,
    strategy          text NOT NULL,             -- registry name of the model strategy
    params            jsonb NOT NULL DEFAULT '{}'::jsonb,
    model_version     text NOT NULL,             -- strategy + params hash + git sha
    embedding_version text,                      -- collection the model reads
    data_watermark    bigint,
    state             text NOT NULL DEFAULT 'created', -- created|gated|deployed|promoted|aborted|rolled_back
    experiment_salt   text,
    share             double precision,
    offline_metrics   jsonb,
    online_metrics    jsonb,
    decision          text,
    decision_reason   text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    decided_at        timestamptz
);

CREATE TABLE release_events (
    id         bigserial PRIMARY KEY,
    release_id bigint REFERENCES releases (release_id),
    at         timestamptz NOT NULL DEFAULT now(),
    step       text NOT NULL,
    details    jsonb NOT NULL DEFAULT '{}'::jsonb
);

-- The first sighting of each user in each experiment (routing itself never reads this table).
CREATE TABLE user_model_map (
    user_id    bigint NOT NULL,
    experiment text NOT NULL,                    -- the experiment salt
    bucket     integer NOT NULL,                 -- hash(salt, user) mod 10000
    variant    text NOT NULL,                    -- assigned variant
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, experiment)
);

-- Exactly one row per response the load balancer sent.
CREATE TABLE recommendations_history (
    request_id       text PRIMARY KEY,
    ts               timestamptz NOT NULL,
    user_id          bigint,                     -- NULL when the path had no valid user id
    experiment       text,
    assigned_variant text,
    served_variant   text NOT NULL,              -- main | nightly | fallback
    backend          text,
    release_id       bigint,
    model_version    text,
    data_watermark   bigint,
    status           integer NOT NULL,
    latency_us       bigint NOT NULL,
    movie_ids        text[] NOT NULL DEFAULT '{}',
    degraded         boolean NOT NULL DEFAULT false,
    error            text,
    inputs           jsonb
);
CREATE INDEX recommendations_history_ts ON recommendations_history (ts);
CREATE INDEX recommendations_history_user ON recommendations_history (user_id, ts);
