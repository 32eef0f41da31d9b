-- The one definition of a conversion: a watch converts an answer when it is the user's first
-- watch of one of the answered movies, at or after the answer and before the conversion window
-- ends. Every query that counts conversions (the release's looks, its exporter, the report's
-- fairness and exposure tables) calls this; inlined by the planner (a plain SQL expression).
CREATE FUNCTION watch_converts(answered_at timestamptz, first_watched_at timestamptz, within interval)
    RETURNS boolean
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN first_watched_at >= answered_at AND first_watched_at < answered_at + within;
