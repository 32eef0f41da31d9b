#!/usr/bin/env bash
# Hostile traffic against the default stack (issue 25): normal traffic (RATE req/s for SECS
# seconds through :8082, users 1..610) first alone, then again while, in parallel,
#   - ci/hostile.py: 10,000 requests with 60 kB invalid ids, 1,000 slowloris connections, up to
#     1,000,000 distinct user ids;
#   - a backend answering 2 MB error bodies joins nightly's pool (admin API);
#   - the followed ingest file gets 1 MB lines, then a 2 GB line, then a normal line;
#   - with a Kafka broker (tansu, ci/install-kafka.sh), the same 1 MB lines and a normal line go
#     to a topic ingested afterwards (SKIPPED otherwise).
# Prints normal traffic's p99 and errors in both runs, the load balancer's and the ingester's
# peak RSS, history rows of the normal users vs the responses the normal client got, what each
# hostile input got back, and whether the next normal line and row went through.
# Needs the data ci/up.sh loads (run it once). Usage: ci/hostile.sh [seconds] [rate]
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
SECS="${1:-300}" RATE="${2:-200}"
for b in lazyrec-db lazyrec-lb lazyrec-server load-bench; do
  [ -x "$BIN/$b" ] || { echo "error: $BIN/$b is missing: build the workspace (ci/up.sh)" >&2; exit 1; }
done
[ -d "$LAZYREC_STATE_DIR/qdrant-edge" ] || { echo "error: no vector store: run ci/up.sh first" >&2; exit 1; }
eval "export $("$BIN/lazyrec-db" up)"
H="$RUN/hostile"
rm -rf "$H"; mkdir -p "$H"
stop_stack
# On any exit: nightly's pool as it was (admin changes persist in Postgres), then stop.
trap '[ -n "${BLOAT_PID:-}" ] && admin PUT /admin/nightly "{\"backends\": [\"http://127.0.0.1:8081\"], \"share\": 0.2}" >/dev/null
      stop_stack; [ -n "${BLOAT_PID:-}" ] && kill "$BLOAT_PID" 2>/dev/null; rm -f "$INGEST"' EXIT
start_model_stack
psql() { command psql -X "$DATABASE_URL" -Atc "$1"; }
# The ingester follows a file of its own.
# A new file per run: a file replaced under a name already ingested is refused (by design).
INGEST="$H/ingest-$(date +%s).log"; : > "$INGEST"
start_ingester "$INGEST"
peak() { awk '/VmHWM/ { printf "%.0f MiB", $2 / 1024 }' "/proc/$(cat "$RUN/$1.pid")/status"; }
normal_rows() { psql "SELECT count(*) FROM recommendations_history WHERE user_id BETWEEN 1 AND 610 AND ts >= '$1'"; }
settle() { # until the load balancer's journal is empty
  for _ in $(seq 1 240); do
    [ "$(lb_state history | python3 -c 'import json,sys; h=json.load(sys.stdin); print(h.get("pending", 1))')" = 0 ] && return 0
    sleep 0.5
  done
  echo "warning: the journal did not drain within 2 minutes" >&2
}
normal_run() { # label → prints load-bench's report; checks rows = responses
  local since; since="$(psql 'SELECT now()')"
  "$BIN/load-bench" run --url http://127.0.0.1:8082 --users 610 --rate "$RATE" --seconds "$SECS" | tee "$H/$1.txt"
  settle
  echo "$1: history rows of users 1..610 since the start: $(normal_rows "$since")"
}

say "1. normal traffic alone: $RATE req/s for $SECS s"
normal_run baseline
echo "peak RSS so far: load balancer $(peak loadbalancer), ingester $(peak ingester)"

say "2. the same normal traffic under attack"
# A backend whose every answer is a 2 MB error body, in nightly's pool beside the real nightly.
python3 - "$H/bloat.port" <<'PY' &
import http.server, socketserver, sys
body = b"e" * (2 << 20)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        ok = self.path == "/ready"
        self.send_response(200 if ok else 500)
        self.send_header("content-length", "2" if ok else str(len(body)))
        self.end_headers()
        self.wfile.write(b"ok" if ok else body)
    def log_message(self, *a): pass
class S(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    def handle_error(self, request, client_address): pass  # the load balancer hangs up on 5xx bodies: expected
s = S(("127.0.0.1", 0), H)
open(sys.argv[1], "w").write(str(s.server_address[1]))
s.serve_forever()
PY
BLOAT_PID=$!
for _ in $(seq 1 50); do [ -s "$H/bloat.port" ] && break; sleep 0.1; done
admin PUT /admin/nightly "{\"backends\": [\"http://127.0.0.1:8081\", \"http://127.0.0.1:$(cat "$H/bloat.port")\"], \"share\": 0.2}" >/dev/null
python3 "$ROOT/ci/hostile.py" 127.0.0.1 8082 "$SECS" > "$H/attack.json" &
ATTACK=$!
# Ingest: 100 lines of 1 MB, a 2 GB line, a normal line (written as the attack runs).
MARK=$(( (RANDOM * 32768 + RANDOM) % 900000 + 100000 ))   # the normal line's user, new per run
( sleep 5; python3 "$ROOT/ci/hostile-lines.py" file "$INGEST" "$MARK" ) &
normal_run attack
wait "$ATTACK" || true
echo "attacks: $(cat "$H/attack.json")"
admin PUT /admin/nightly '{"backends": ["http://127.0.0.1:8081"], "share": 0.2}' >/dev/null
sleep 3
echo "peak RSS: load balancer $(peak loadbalancer), ingester $(peak ingester)"
echo "load balancer: $(curl -s localhost:8082/metrics | grep -E '^lazyrec_lb_(connections_refused_total|history_rows_dropped_total|history_rows_refused_total|errors_total)' | tr '\n' ' ')"
echo "ingester: rejected lines: $(psql "SELECT string_agg(reason || '=' || n || ' (raw kept ≤ ' || raw_max || ' B)', ', ') FROM (SELECT reason, count(*) n, max(octet_length(raw)) raw_max FROM rejected_lines WHERE source = 'file:$INGEST' GROUP BY reason) r")"
echo "ingester: the normal line after them: $(psql "SELECT count(*) FROM rating_events WHERE user_id = $MARK") rating event(s) of user $MARK"
echo "next normal request: $(curl -s -o /dev/null -w '%{http_code}' localhost:8082/recommend/7); journal pending: $(lb_state history)"

if command -v tansu >/dev/null || [ -x "$HOME/.cargo/bin/tansu" ]; then
  say "3. Kafka: 100 messages of 1 MB, then a normal one"
  TOPIC="hostile-$(date +%s)"   # a new topic per run: positions of earlier runs stay in Postgres
  start_kafka "$TOPIC"
  python3 -c 'import confluent_kafka' 2>/dev/null || pip install -q confluent-kafka >/dev/null
  python3 "$ROOT/ci/hostile-lines.py" kafka 127.0.0.1:9092 "$TOPIC" "$MARK"
  stop_stack ingester
  /usr/bin/time -f "kafka ingester peak RSS %M KiB" "$BIN/lazyrec-db" ingest --kafka-topic "$TOPIC" \
    --kafka-brokers 127.0.0.1:9092 --rating-scale 10 --no-progress | tail -3
  echo "kafka: rejected $(psql "SELECT count(*) FROM rejected_lines WHERE source LIKE 'kafka:$TOPIC%' AND reason = 'line_too_long'") long lines; the normal message: $(psql "SELECT count(*) FROM rating_events WHERE user_id = $((MARK + 1))") rating event(s)"
else
  echo "SKIPPED kafka: no broker (tansu) installed; ci/install-kafka.sh installs it"
fi
