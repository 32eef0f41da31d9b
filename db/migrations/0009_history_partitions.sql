-- recommendations_history partitioned by month (declarative range partitioning on ts), every
-- row moved, none lost (checked below; the migration fails and changes nothing otherwise).
--
-- The primary key becomes (request_id, ts): a partitioned table's unique keys include the
-- partition key. A row shipped again after a crash has the same request id and the same ts (both
-- come from its journal line), so `ON CONFLICT (request_id, ts) DO NOTHING` still stores each
-- response once. Partitions are named recommendations_history_YYYY_MM (UTC months), created
-- here from the oldest row to three months ahead and later by history_ensure_partitions — the
-- load balancer's shipper calls it when a row finds no partition, `lazyrec-provenance prune`
-- keeps three months ahead — and dropped whole by prune when the cut passes their end.

-- Monthly partitions covering [from_ts, until_ts] (UTC months); returns how many it created.
CREATE FUNCTION history_ensure_partitions(from_ts timestamptz, until_ts timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month timestamp := date_trunc('month', from_ts AT TIME ZONE 'UTC');
    made integer := 0;
    name text;
BEGIN
    WHILE month <= until_ts AT TIME ZONE 'UTC' LOOP
        name := 'recommendations_history_' || to_char(month, 'YYYY_MM');
        IF to_regclass(name) IS NULL THEN
            EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF recommendations_history FOR VALUES FROM (%L) TO (%L)',
                           name, month AT TIME ZONE 'UTC', (month + interval '1 month') AT TIME ZONE 'UTC');
            made := made + 1;
        END IF;
        month := month + interval '1 month';
    END LOOP;
    RETURN made;
END $$;

-- The view reads the table by identity: dropped, and made again on the new table below.
DO $$
DECLARE
    provenance text := pg_get_viewdef('recommendation_provenance'::regclass);
    oldest timestamptz;
    before bigint;
    after bigint;
BEGIN
    DROP VIEW recommendation_provenance;
    ALTER TABLE recommendations_history RENAME TO recommendations_history_unpartitioned;
    ALTER TABLE recommendations_history_unpartitioned DROP CONSTRAINT recommendations_history_pkey;
    DROP INDEX recommendations_history_ts, recommendations_history_user,
               recommendations_history_popularity_run, recommendations_history_collection;
    CREATE TABLE recommendations_history (LIKE recommendations_history_unpartitioned INCLUDING DEFAULTS)
        PARTITION BY RANGE (ts);
    SELECT min(ts), count(*) INTO oldest, before FROM recommendations_history_unpartitioned;
    PERFORM history_ensure_partitions(coalesce(oldest, now()), now() + interval '3 months');
    -- Rows first, keys and indexes after (built once per partition, not row by row).
    INSERT INTO recommendations_history SELECT * FROM recommendations_history_unpartitioned;
    SELECT count(*) INTO after FROM recommendations_history;
    IF after <> before THEN
        RAISE EXCEPTION 'partitioning recommendations_history: % rows before, % after', before, after;
    END IF;
    DROP TABLE recommendations_history_unpartitioned;
    ALTER TABLE recommendations_history ADD PRIMARY KEY (request_id, ts);
    CREATE INDEX recommendations_history_ts ON recommendations_history (ts);
    CREATE INDEX recommendations_history_user ON recommendations_history (user_id, ts);
    CREATE INDEX recommendations_history_popularity_run ON recommendations_history (history_popularity_run(inputs))
        WHERE history_popularity_run(inputs) IS NOT NULL;
    CREATE INDEX recommendations_history_collection ON recommendations_history (history_collection(inputs))
        WHERE history_collection(inputs) IS NOT NULL;
    EXECUTE 'CREATE VIEW recommendation_provenance AS ' || provenance;
    RAISE NOTICE 'recommendations_history partitioned by month: % rows', after;
END $$;

-- Drops every partition that ends at or before `before` (all its rows are older than the cut);
-- returns each with the rows it held. `lazyrec-provenance prune` calls it before deleting the
-- remaining older rows one batch at a time.
CREATE FUNCTION history_drop_partitions(before timestamptz) RETURNS TABLE (partition text, rows bigint)
LANGUAGE plpgsql AS $$
DECLARE
    p record;
BEGIN
    FOR p IN
        SELECT c.relname AS name,
               substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz AS upper
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'recommendations_history'::regclass
        ORDER BY 2
    LOOP
        CONTINUE WHEN p.upper IS NULL OR p.upper > before;
        partition := p.name;
        EXECUTE format('SELECT count(*) FROM %I', p.name) INTO rows;
        EXECUTE format('DROP TABLE %I', p.name);
        RETURN NEXT;
    END LOOP;
END $$;
