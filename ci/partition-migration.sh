#!/usr/bin/env bash
# The partition migration (db/migrations/0009, issue 26) on a copy of course-scale history: a
# scratch database in the private cluster at the schema before it (0001–0008 applied with psql),
# ROWS answers (default 10,000,000) spread over the last MONTHS months (default 6) in
# recommendations_history, then 0009 applied and timed; rows before and after compared (the
# migration itself also refuses to finish on a mismatch). Then the oldest month is pruned the
# old way (DELETE) and the next one the new way (history_drop_partitions, what
# `lazyrec-provenance prune` calls), both timed. The scratch database is dropped at the end.
#   ci/partition-migration.sh [ROWS] [MONTHS]
source "$(dirname "$0")/lib.sh"
ROWS="${1:-10000000}"
MONTHS="${2:-6}"
cd "$ROOT"
[ -x "$BIN/lazyrec-db" ] || cargo build --release --locked --quiet --workspace --bins
eval "export $("$BIN/lazyrec-db" up)"
SCRATCH=lazyrec_partition_check
URL="${DATABASE_URL%/*}/$SCRATCH"
q() { psql -X -q -v ON_ERROR_STOP=1 "$URL" -Atc "$1"; }
timed() { # label, then a command
  local label="$1" t0; shift
  t0="$(date +%s.%N)"
  "$@"
  printf '%s: %.1f s\n' "$label" "$(echo "$(date +%s.%N) - $t0" | bc)"
}
psql -X -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $SCRATCH" -c "CREATE DATABASE $SCRATCH"
trap 'psql -X -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)"' EXIT
for f in db/migrations/000[1-8]_*.sql; do psql -X -q -v ON_ERROR_STOP=1 "$URL" -f "$f" >/dev/null; done
say "$ROWS answers over $MONTHS months in the unpartitioned table"
timed "generated" q "
  INSERT INTO recommendations_history
    (request_id, ts, user_id, experiment, assigned_variant, served_variant, backend, release_id,
     model_version, data_watermark, status, latency_us, movie_ids, degraded, inputs)
  SELECT md5(g::text)::uuid::text,
         now() - ($MONTHS * interval '30 days') * (g::float8 / $ROWS),
         g % 1000000, 'release-7', CASE WHEN g % 5 = 0 THEN 'nightly' ELSE 'main' END,
         CASE WHEN g % 5 = 0 THEN 'nightly' ELSE 'main' END, 'http://127.0.0.1:8080', 7,
         'items-v1@2f1c0a9e+f7cd10a2b25d', 1000000 + g / 100, 200, 2000 + g % 5000,
         ARRAY(SELECT 'movie+' || ((g * 7 + k) % 27000) FROM generate_series(1, 20) k), false,
         jsonb_build_object('kind', 'personal', 'limit', 20,
                            'data_versions', jsonb_build_object('popularity', 40 + g / 500000,
                                                                 'collection', 'movies_minilm_t1_v' || (g / 2000000)))
  FROM generate_series(1, $ROWS) g"
q "ANALYZE recommendations_history"
before="$(q "SELECT count(*) FROM recommendations_history")"
say "applying 0009 (partition by month, move every row, keys and indexes per partition)"
timed "migration" psql -X -q -v ON_ERROR_STOP=1 "$URL" -f db/migrations/0009_history_partitions.sql
after="$(q "SELECT count(*) FROM recommendations_history")"
echo "rows before: $before, after: $after"
[ "$before" = "$after" ] || { echo "MISMATCH" >&2; exit 1; }
q "SELECT c.relname || ': ' || (SELECT count(*) FROM recommendations_history h WHERE h.tableoid = c.oid)
   FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
   WHERE i.inhparent = 'recommendations_history'::regclass ORDER BY c.relname"
read -r first second < <(q "SELECT string_agg(to_char(m, 'YYYY-MM-DD'), ' ') FROM (
    SELECT date_trunc('month', min(ts) AT TIME ZONE 'UTC') + n * interval '1 month' AS m
    FROM recommendations_history, generate_series(1, 2) n GROUP BY n ORDER BY n) x")
say "prune before $first the old way (DELETE) and before $second by dropping the partition"
timed "DELETE of the oldest month" q "DELETE FROM recommendations_history WHERE ts < '$first 00:00:00+00'"
timed "history_drop_partitions" q "SELECT partition || ' dropped, ' || rows || ' rows' FROM history_drop_partitions('$second 00:00:00+00')"
echo "rows left: $(q "SELECT count(*) FROM recommendations_history")"
