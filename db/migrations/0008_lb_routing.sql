-- The load balancers' routing (experiment, share, main and nightly backends, drained backends,
-- release ids): one row per fleet of replicas, the source of truth they all follow. Every change
-- bumps `version` in the transaction that records it in release_events and notifies the channel
-- `lazyrec_lb_routing` (payload: the fleet); replicas also poll, and keep serving their last
-- version (cached in their journal directory) while Postgres is unreachable.
CREATE TABLE lb_routing (
    fleet              text PRIMARY KEY,
    version            bigint      NOT NULL CHECK (version > 0),
    -- The configured routing this row derives from: a replica started on another configuration
    -- writes its configured routing as a new version (a configuration change wins, as it did
    -- over the routing file).
    config_fingerprint text        NOT NULL,
    spec               jsonb       NOT NULL,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    updated_by         text        NOT NULL
);
