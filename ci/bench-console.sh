#!/usr/bin/env bash
# Console page loads at course scale (issue 27): a scratch database in the private cluster with
# the default dataset, ROWS answers (default 10,000,000) over the last DAYS days (default 30) in
# the partitioned history (100,000 users), and one release with LOOKS recorded looks (default
# 240: one every 30 s for 2 h). lazyrec-console is started on it and every page is requested N
# times (default 50) one after another; p50, p99 and max per page are printed (a report over
# another range than the default hour is loaded once: it is computed on demand, then kept). The scratch
# database is dropped at the end unless KEEP=1; with KEEP=1 a later run reuses it (no new rows).
#   [KEEP=1] ci/bench-console.sh [ROWS] [DAYS] [N] [LOOKS]
source "$(dirname "$0")/lib.sh"
ROWS="${1:-10000000}"
DAYS="${2:-30}"
N="${3:-50}"
LOOKS="${4:-240}"
cd "$ROOT"
[ -x "$BIN/lazyrec-console" ] || cargo build --release --locked --quiet --workspace --bins
eval "export $("$BIN/lazyrec-db" up)"
SCRATCH=lazyrec_console_bench
URL="${DATABASE_URL%/*}/$SCRATCH"
PORT=18088
q() { psql -X -q -v ON_ERROR_STOP=1 "$URL" -Atc "$1"; }
console_pid=
cleanup() {
  [ -n "$console_pid" ] && kill "$console_pid" 2>/dev/null && wait "$console_pid" 2>/dev/null
  [ "${KEEP:-0}" = 1 ] || psql -X -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)"
}
trap cleanup EXIT
if [ "${KEEP:-0}" = 1 ] && [ "$(psql -X -Atc "SELECT count(*) FROM pg_database WHERE datname = '$SCRATCH'" "$DATABASE_URL")" = 1 ] \
  && [ "$(q "SELECT count(*) FROM releases" 2>/dev/null || echo 0)" -gt 0 ]; then
  say "reusing $SCRATCH: $(q "SELECT count(*) FROM recommendations_history") answers"
  id="$(q "SELECT max(release_id) FROM releases")"
else
psql -X -q "$DATABASE_URL" -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)" -c "CREATE DATABASE $SCRATCH"
say "the default dataset in a scratch database"
"$BIN/lazyrec-db" --database-url "$URL" migrate >/dev/null
"$BIN/lazyrec-db" --database-url "$URL" load-default >/dev/null
say "$ROWS answers over $DAYS days in the partitioned history"
t0="$(date +%s)"
q "SELECT history_ensure_partitions(now() - interval '$DAYS days', now())" >/dev/null
# 9,000 slates of 20 catalog movies, joined in (indexing the catalog array per row is slow).
q "CREATE TABLE bench_slates AS SELECT i, ARRAY(SELECT ids[1 + (i * 7 + k) % 9000] FROM generate_series(1, 20) k) AS movie_ids
   FROM generate_series(0, 8999) i, (SELECT array_agg(movie_id ORDER BY movie_id) AS ids FROM movies) m"
q "
  INSERT INTO recommendations_history
    (request_id, ts, user_id, experiment, assigned_variant, served_variant, backend, release_id,
     model_version, data_watermark, status, latency_us, movie_ids, degraded, inputs)
  SELECT md5(g::text)::uuid::text,
         now() - ($DAYS * interval '1 day') * (g::float8 / $ROWS),
         1 + g % 100000, 'release-recommender-nightly-7', CASE WHEN g % 5 = 0 THEN 'nightly' ELSE 'main' END,
         CASE WHEN g % 500 = 0 THEN 'fallback' WHEN g % 5 = 0 THEN 'nightly' ELSE 'main' END,
         'http://127.0.0.1:8080', 7, 'items-v1@2f1c0a9e+f7cd10a2b25d', 1000000 + g / 100, 200,
         2000 + g % 5000, s.movie_ids,
         g % 97 = 0,
         jsonb_build_object('kind', 'personal', 'limit', 20,
                            'data_versions', jsonb_build_object('popularity', 1, 'collection', 'movies_minilm_t1_v1'))
  FROM generate_series(1, $ROWS) g JOIN bench_slates s ON s.i = g % 9000"
q "DROP TABLE bench_slates"
q "ANALYZE recommendations_history"
echo "generated in $(( $(date +%s) - t0 )) s: $(q "SELECT count(*) FROM recommendations_history") rows in $(q "SELECT count(*) FROM pg_inherits WHERE inhparent = 'recommendations_history'::regclass") partitions"
id="$(q "INSERT INTO releases (tag, version, strategy, model_version, state, experiment_salt, share)
         VALUES ('release-recommender-nightly-7', '7', 'items-v1', 'items-v1@2f1c0a9e+f7cd10a2b25d', 'deployed',
                 'release-recommender-nightly-7', 0.2) RETURNING release_id")"
q "INSERT INTO release_events (release_id, at, step, details)
   SELECT $id, now() - interval '2 hours' + k * interval '30 seconds', 'evaluate', jsonb_build_object(
     'main', jsonb_build_object('variant', 'main', 'requests', 100 * k, 'users', 40 * k,
        'conversion', jsonb_build_object('hits', 18 * k, 'n', 100 * k), 'errors', 0, 'failed_over', 0,
        'degraded', k, 'p50_ms', 2.1, 'p99_ms', 120 + k % 7),
     'nightly', jsonb_build_object('variant', 'nightly', 'requests', 25 * k, 'users', 10 * k,
        'conversion', jsonb_build_object('hits', 19 * k / 4, 'n', 25 * k), 'errors', 0, 'failed_over', 0,
        'degraded', 0, 'p50_ms', 2.3, 'p99_ms', 118 + k % 5),
     'comparison', jsonb_build_object('diff', 0.01, 'variance', 0.0001, 'likelihood_ratio', 1.0,
        'p_always_valid', 1.0, 'cs_low', 0.01 - 1.0 / sqrt(k), 'cs_high', 0.01 + 1.0 / sqrt(k), 'z', 0.5,
        'p_fixed', 0.6, 'ci_low', -0.02, 'ci_high', 0.04),
     'srm', jsonb_build_object('control', 40 * k, 'treatment', 10 * k, 'expected_share', 0.2,
        'observed_share', 0.2, 'chi2', 0.0, 'p', 1.0, 'mismatch', false),
     'switched_users', 0, 'elapsed_s', 30 * k,
     'decision', jsonb_build_object('outcome', 'continue', 'reason', 'collecting'))
   FROM generate_series(1, $LOOKS) k"
fi
rid="$(q "SELECT request_id FROM recommendations_history ORDER BY ts DESC LIMIT 1")"
user="$(q "SELECT user_id FROM recommendations_history ORDER BY ts DESC LIMIT 1")"
token="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
LAZYREC_CONSOLE_TOKEN="$token" "$BIN/lazyrec-console" --database-url "$URL" --listen "127.0.0.1:$PORT" \
  --admin-url http://127.0.0.1:9 >/dev/null 2>&1 &
console_pid=$!
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
say "$N loads of each page (one at a time), $(nproc) cores"
python3 - "$PORT" "$token" "$N" "/" "/releases" "/releases/$id" "/users/$user" "/users/1" \
  "/provenance?request_id=$rid" "/reports" "/reports?hours=6|1" "/reports?hours=24|1" <<'PY'
import re, sys, time, urllib.request
port, token, n, pages = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
print(f"{'page':<62} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'bytes':>8}")
for spec in pages:
    # "page|1": one load only (a report range other than the default is computed on demand and
    # then kept for a minute: its first load is the cost).
    page, _, once = spec.partition("|")
    times, size, body = [], 0, b""
    for i in range(1 if once else n + 1):
        req = urllib.request.Request(f"http://127.0.0.1:{port}{page}", headers={"Authorization": f"Bearer {token}"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=120) as r:
            body = r.read()
            size = len(body)
            assert r.status == 200, (page, r.status)
        if i > 0 or once:  # the first load warms the connection pool
            times.append(1000 * (time.perf_counter() - t))
    times.sort()
    p = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    print(f"{page[:62]:<62} {p(0.5):8.1f} {p(0.99):8.1f} {times[-1]:8.1f} {size:8d}")
    took = re.search(rb"Computed in (\d+) ms", body)
    if took:
        print(f"  (its report's queries took {took.group(1).decode()} ms when computed)")
PY
