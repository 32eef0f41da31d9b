#!/usr/bin/env bash
# Nothing lost, scripted on the running local stack (start it with ci/up.sh first):
#   1. 60 s at 500 req/s through the load balancer while Postgres is restarted (down 5 s);
#   2. 60 s at 500 req/s while the load balancer is restarted gracefully (SIGTERM, start again);
#   3. 60 s at 500 req/s while the load balancer is killed (SIGKILL: no chance to flush anything)
#      and started again: the rows of the responses it sent are in its journal, shipped by the
#      new process;
#   lb-replace (not in the default set): 60 s at 500 req/s while the load balancer is replaced
#      without downtime (ci/stack.sh replace_lb: a second replica on the port, then the old one
#      stops) — no failed request expected.
#   pg-failover (not in the default set; the stack must run with a hot standby: `ci/up.sh
#      --standby`): 60 s at 500 req/s while the Postgres primary is SIGKILLed and the standby
#      promoted (`lazyrec-db promote`) — no failed request expected (answers read the standby
#      meanwhile), rows = responses once the journals drained into the new primary; the standby's
#      replication lag is sampled under the load before the kill. Once per stack: afterwards the
#      old primary is fenced.
# After each: rows added to recommendations_history == responses the client received — except
# after a SIGKILL, where the invariant allows a row for a response the process journaled but
# did not finish sending: responses ≤ rows ≤ responses + the client's failed requests.
# Usage: ci/soak.sh [seconds] [rate] [scenario ...]   (scenarios: postgres-restart lb-restart
# lb-kill lb-replace pg-failover; default: the first three once; e.g. `ci/soak.sh 30 500 lb-kill lb-kill lb-kill`)
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
SECONDS_PER_RUN="${1:-60}"
RATE="${2:-500}"
shift $(( $# < 2 ? $# : 2 ))
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(postgres-restart lb-restart lb-kill)
eval "export $("$BIN/lazyrec-db" up)"
wait_ready 8080 8081 8082
rows() { psql "$DATABASE_URL" -Atc "SELECT count(*) FROM recommendations_history"; }
settled() { # waits until the load balancer's queue and spool are empty
  python3 - <<PY
import json, time, urllib.request
req = urllib.request.Request("http://127.0.0.1:8084/admin/state", headers={"authorization": "Bearer $(cat "$RUN/admin-token")"})
deadline = time.time() + 120
while True:
    try:
        h = json.load(urllib.request.urlopen(req, timeout=2))["history"]
        if h.get("pending", h.get("queued")) == 0 and h.get("journal_bytes", h.get("spool_bytes")) == 0:
            print(f"settled: {h}")
            break
    except Exception as e:
        pass
    if time.time() > deadline:
        raise SystemExit("the response log did not settle within 120 s")
    time.sleep(0.5)
PY
}
run_load() { # label, then a disruption function run a third into the load
  local label="$1" disrupt="$2" before after responses errors added
  settled
  before="$(rows)"
  "$BIN/load-bench" run --url http://127.0.0.1:8082 --users 610 --rate "$RATE" --seconds "$SECONDS_PER_RUN" \
    > "$RUN/soak-$label.out" 2>&1 &
  local load=$!
  sleep $(( SECONDS_PER_RUN / 3 ))
  "$disrupt"
  wait "$load"
  settled
  after="$(rows)"
  responses="$(grep -o '[0-9]* responses' "$RUN/soak-$label.out" | grep -o '^[0-9]*')"
  cat "$RUN/soak-$label.out"
  errors="$(grep -o '[0-9]* errors' "$RUN/soak-$label.out" | grep -o '^[0-9]*')"
  added=$((after - before))
  echo "$label: $responses responses received, $added rows added to recommendations_history"
  if [ "$disrupt" = kill_lb ]; then
    # A row per response sent, never fewer; an extra row only for a request the client saw fail.
    if [ "$added" -lt "$responses" ] || [ "$added" -gt $((responses + errors)) ]; then
      echo "MISMATCH (killed: rows must be in $responses..$((responses + errors)))" >&2; return 1
    fi
    [ "$added" = "$responses" ] || echo "  $((added - responses)) row(s) for responses journaled but cut by the SIGKILL (of $errors failed requests)"
  elif [ "$responses" != "$added" ]; then echo "MISMATCH" >&2; return 1; fi
}
restart_postgres() {
  say "restarting Postgres (down 5 s)"
  "$BIN/lazyrec-db" down
  sleep 5
  env -u DATABASE_URL "$BIN/lazyrec-db" up >/dev/null   # (with DATABASE_URL set, `up` would only connect)
}
restart_lb() {
  say "restarting the load balancer gracefully"
  local t0; t0="$(date +%s.%N)"
  stop_stack loadbalancer
  start_lb
  wait_ready 8082
  echo "load balancer back after $(python3 -c "import time; print(f'{time.time() - $t0:.2f}')") s"
}
replace_lb_timed() {
  say "replacing the load balancer without downtime (new replica on the port, then the old one stops)"
  local t0; t0="$(date +%s.%N)"
  replace_lb
  echo "old replica gone, new one serving, after $(python3 -c "import time; print(f'{time.time() - $t0:.2f}')") s"
}
replication_lag() { # a few samples of pg_stat_replication on the primary, and the servers' read lag
  local primary_port; primary_port="$(cat "$LAZYREC_STATE_DIR/pg/port")"
  local url="postgres://postgres:$(cat "$LAZYREC_STATE_DIR/pg/password")@127.0.0.1:$primary_port/lazyrec"
  for _ in 1 2 3 4 5; do
    psql "$url" -Atc "SELECT format('standby %s (%s): write_lag %s, flush_lag %s, replay_lag %s, replay behind by %s bytes', application_name, sync_state, coalesce(write_lag::text, '0'), coalesce(flush_lag::text, '0'), coalesce(replay_lag::text, '0'), pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)) FROM pg_stat_replication"
    for port in 8080 8081; do
      curl -s "http://127.0.0.1:$port/metrics" | grep -E '^lazyrec_server_db_read_lag_events' | sed "s/^/  server :$port /"
    done
    sleep 1
  done
}
failover_postgres() {
  replication_lag
  say "SIGKILL of the Postgres primary, then lazyrec-db promote of the standby"
  local pid t0
  pid="$(head -1 "$LAZYREC_STATE_DIR/pg/data/postmaster.pid")"
  t0="$(date +%s.%N)"
  kill -KILL "$pid"
  env -u DATABASE_URL "$BIN/lazyrec-db" promote >/dev/null   # (with DATABASE_URL set, promote refuses)
  echo "primary (pid $pid) SIGKILLed, standby promoted after $(python3 -c "import time; print(f'{time.time() - $t0:.2f}')") s"
}
kill_lb() {
  say "killing the load balancer (SIGKILL) and starting it again"
  local t0; t0="$(date +%s.%N)"
  kill -KILL "$(cat "$RUN/loadbalancer.pid")"
  while alive "$(cat "$RUN/loadbalancer.pid")"; do sleep 0.01; done
  start_lb
  wait_ready 8082
  echo "load balancer back after $(python3 -c "import time; print(f'{time.time() - $t0:.2f}')") s"
}
failed=0
for scenario in "${SCENARIOS[@]}"; do
  case "$scenario" in
    postgres-restart) run_load postgres-restart restart_postgres || failed=1 ;;
    lb-restart) run_load lb-restart restart_lb || failed=1 ;;
    lb-kill) run_load lb-kill kill_lb || failed=1 ;;
    lb-replace) run_load lb-replace replace_lb_timed || failed=1 ;;
    pg-failover)
      [ -f "$LAZYREC_STATE_DIR/pg-standby/port" ] || { echo "pg-failover needs a hot standby: start the stack with ci/up.sh --standby" >&2; exit 2; }
      run_load pg-failover failover_postgres || failed=1 ;;
    *) echo "unknown scenario $scenario (postgres-restart, lb-restart, lb-kill, lb-replace, pg-failover)" >&2; exit 2 ;;
  esac
done
exit "$failed"
