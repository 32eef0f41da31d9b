#!/usr/bin/env bash
# The tag pipeline (.gitlab-ci.yml) end to end under gitlab-ci-local, against the local stack with
# simulated users, three releases in a row, each checked:
#   A  neighbours-v2 against a neighbours-v1 main   → gated, deployed, promoted automatically
#   B  popularity-v1 against that neighbours-v2 main, the gate forced open
#      (RELEASE_GATE_TOLERANCE=1)                    → deployed, aborted online by conversion
#   C  popularity-v1 with the normal gate            → rejected by the gate, nothing deployed
# and throughout: zero failed client requests (the simulator's report), no user changed variant
# within an experiment, every outcome at a local webhook receiver, the exporter's metrics.
# State in .state/pipeline, made afresh each run (the held-out load of `ci/up.sh --simulate`:
# the simulated users' futures are consumed as they watch, so a reused state converts less and
# less and the comparisons drift). Exit 0 when every check holds.
#   ci/release-pipeline.sh [RATE]          (default 150 simulated requests/s)
RATE="${1:-150}"
source "$(dirname "$0")/lib.sh"
export LAZYREC_SIM_STATE_DIR="$ROOT/.state/pipeline"
if [ -x "$BIN/lazyrec-db" ] && [ -d "$LAZYREC_SIM_STATE_DIR" ]; then
  LAZYREC_STATE_DIR="$LAZYREC_SIM_STATE_DIR" "$BIN/lazyrec-db" down >/dev/null 2>&1 || true
fi
rm -rf "$LAZYREC_SIM_STATE_DIR"
"$ROOT/ci/up.sh" --simulate "$RATE" --no-serve >/dev/null
export LAZYREC_STATE_DIR="$LAZYREC_SIM_STATE_DIR"
source "$ROOT/ci/stack.sh"
cd "$ROOT"
cargo build --release --locked --quiet --workspace --bins
# gitlab-ci-local 4.65.1 (later versions need Node 22) and rsync (it copies artifacts with it).
command -v rsync >/dev/null || apt-get install -y -q rsync >/dev/null
command -v gitlab-ci-local >/dev/null || npm install -g --silent gitlab-ci-local@4.65.1
eval "export $("$BIN/lazyrec-db" up)"

HOOK_PORT=9188
WEBHOOK_LOG="$RUN/webhook.jsonl"
cleanup() {
  stop_stack
  [ -f "$RUN/webhook.pid" ] && kill "$(cat "$RUN/webhook.pid")" 2>/dev/null
  rm -f "$RUN/webhook.pid"
}
trap cleanup EXIT
stop_stack
prepare_stack
: > "$WEBHOOK_LOG"
python3 "$ROOT/ci/webhook-receiver.py" "$HOOK_PORT" "$WEBHOOK_LOG" &
echo $! > "$RUN/webhook.pid"
LAZYREC_SERVER_MODEL__STRATEGY=neighbours-v1 start_server main 8080 50051
# The load balancer starts with main only; releases route the nightly share. Admin changes an
# earlier run left in Postgres (they survive restarts) would override that: --reset-routing.
start_lb main-only
wait_ready 8080 8082
"$BIN/lazyrec-release" exporter --listen 127.0.0.1:9187 >>"$RUN/exporter.log" 2>&1 &
echo $! > "$RUN/exporter.pid"
: >> "$RUN/simulated.log"
start_ingester "$RUN/simulated.log"
start_simulator "$RATE" "file:$RUN/simulated.log"
export LAZYREC_LB_ADMIN_TOKEN="$(cat "$RUN/admin-token")"
export LAZYREC_RELEASE_WEBHOOK="http://127.0.0.1:$HOOK_PORT/release"

FAILED=0
check() { # description, then a command that must succeed
  local what="$1"; shift
  if "$@"; then echo "  ok: $what"; else echo "  FAILED: $what"; FAILED=1; fi
}
sql() { psql "$DATABASE_URL" -Atc "$1"; }

STAMP="$(date +%s)"
pipeline() { # name strategy reference tolerance → gitlab-ci-local's exit code
  local tag="release-recommender-nightly-$STAMP$1"
  say "pipeline $tag: $2 against main's $3 (gate tolerance $4)"
  set +e
  gitlab-ci-local --no-color \
    --variable CI_COMMIT_TAG="$tag" \
    --variable RELEASE_SKIP_TESTS=1 \
    --variable DATABASE_URL="$DATABASE_URL" \
    --variable LAZYREC_STATE_DIR="$LAZYREC_STATE_DIR" \
    --variable LAZYREC_LB_ADMIN_TOKEN="$LAZYREC_LB_ADMIN_TOKEN" \
    --variable LAZYREC_RELEASE_WEBHOOK="$LAZYREC_RELEASE_WEBHOOK" \
    --variable RELEASE_STRATEGY="$2" --variable RELEASE_REFERENCE="$3" --variable RELEASE_GATE_TOLERANCE="$4" \
    --variable EVALUATE_EVERY_S=20 --variable EVALUATE_LOOKS=30 \
    --variable EVALUATE_ARGS="--window-s 30 --min-duration-s 60 --min-responses 500" \
    > "$RUN/pipeline-$1.log" 2>&1
  local code=$?
  set -e
  grep -E '^(gate|deploy|experiment|evaluate|notify|build) +(>|\$)|release [0-9]+:|PROMOTE|ABORT|CONTINUE|conversion|split:|finished in|FAIL|PASS' \
    "$RUN/pipeline-$1.log" | sed 's/^/    /' | tail -40 || true
  echo "    (gitlab-ci-local exit $code; full log $RUN/pipeline-$1.log)"
  RELEASE="$(sql "SELECT release_id FROM releases WHERE tag = '$tag'")"
  return 0
}
state_of() { sql "SELECT state FROM releases WHERE release_id = $1"; }

sleep 20   # some traffic before the first release
T0=$(date +%s)
pipeline a neighbours-v2 neighbours-v1 0.02
A="$RELEASE"
say "pipeline a took $(( $(date +%s) - T0 )) s"
check "A (neighbours-v2) promoted" [ "$(state_of "$A")" = promoted ]
check "main serves A's model" [ "$(curl -s -D - -o /dev/null localhost:8082/recommend/1 | tr -d '\r' | sed -n 's/^x-model-version: //Ip')" = "$(sql "SELECT model_version FROM releases WHERE release_id = $A")" ]

[ "$(state_of "$A")" = promoted ] || { echo "  FAILED: A was not promoted; B would not run against neighbours-v2"; exit 1; }
T0=$(date +%s)
pipeline b popularity-v1 neighbours-v2 1.0
B="$RELEASE"
say "pipeline b took $(( $(date +%s) - T0 )) s"
check "B (popularity-v1, gate forced open) aborted" [ "$(state_of "$B")" = aborted ]
check "B aborted by the conversion criterion" sh -c "psql '$DATABASE_URL' -Atc \"SELECT decision_reason FROM releases WHERE release_id = $B\" | grep -q '^Conversion'"
check "main is still A after B's abort" [ "$(lb_state main_release_id)" = "$A" ]

pipeline c popularity-v1 neighbours-v2 0.02
C="$RELEASE"
check "C (popularity-v1) rejected by the gate" [ "$(state_of "$C")" = rejected ]
check "C never deployed" [ "$(sql "SELECT count(*) FROM release_events WHERE release_id = $C AND step = 'state.deployed'")" = 0 ]
check "nothing routed to a nightly after C" [ -z "$(lb_state nightly)" ]

say "traffic through all three pipelines"
sleep 5
stop_stack simulator
python3 - "$RUN/simulation.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
answers = {k: v["answers"] for k, v in r["variants"].items()}
print(f"    simulator: {r['requests']} requests, availability {100 * r['availability']['rate']:.3f} %, "
      f"failed {r['failed']}, timeouts {r['timeouts']}, non-200 {r['status_other']}, invalid {r['invalid']}, "
      f"not sent {r['not_sent']}; answers by variant {answers}")
PY
check "zero failed client requests (no error, timeout, invalid list or fallback answer)" python3 -c "
import json,sys; r=json.load(open('$RUN/simulation.json'))
bad = r['failed'] + r['timeouts'] + r['status_other'] + r['invalid'] + r['not_sent']
sys.exit(0 if bad == 0 and r['variants'].get('fallback', {}).get('answers', 0) == 0 else 1)"
for id in "$A" "$B"; do
  # The experiment's window is the one the load balancer applied (recorded from its answers).
  window="r.release_id = $id AND h.ts < COALESCE(r.experiment_ended_at, now())"
  switched="$(sql "SELECT count(*) FROM (SELECT user_id FROM recommendations_history h JOIN releases r ON h.experiment = r.experiment_salt
    WHERE $window AND h.assigned_variant IN ('main', 'nightly') GROUP BY user_id HAVING count(DISTINCT h.assigned_variant) > 1) s")"
  users="$(sql "SELECT count(DISTINCT user_id) FROM recommendations_history h JOIN releases r ON h.experiment = r.experiment_salt WHERE $window")"
  check "release $id: no user changed variant during its experiment ($users users, $switched switched)" [ "$switched" = 0 ]
done

say "the release records"
sql "SELECT release_id, tag, state, model_version, left(decision_reason, 150) FROM releases WHERE release_id IN ($A, $B, $C) ORDER BY release_id" | sed 's/^/    /'
sql "SELECT release_id, step, at::time(0), left(COALESCE(details->>'reason', details->'decision'->>'outcome' || ': ' || (details->'decision'->>'reason'), ''), 110)
     FROM release_events WHERE release_id IN ($A, $B, $C) ORDER BY id" | sed 's/^/    /'
say "notifications received"
python3 -c "
import json
for line in open('$WEBHOOK_LOG'):
    print('    ' + json.loads(line)['body'].get('text', '')[:150])"
check "A's promotion notified" grep -q "release $A promoted to main" "$WEBHOOK_LOG"
check "B's abort notified" grep -q "release $B aborted: Conversion" "$WEBHOOK_LOG"
check "C's rejection notified" grep -q "($C) rejected by the offline gate" "$WEBHOOK_LOG"
say "release metrics (lazyrec-release exporter)"
curl -s localhost:9187/metrics | grep -E "^lazyrec_release_(decisions_total|looks_total|conversion\{release_id=\"($A|$B)\")" | sed 's/^/    /'
check "exporter counts A's promotion" sh -c "curl -s localhost:9187/metrics | grep -q '^lazyrec_release_decisions_total{outcome=\"promoted\"} [1-9]'"
[ "$FAILED" = 0 ] && say "all checks hold" || say "SOME CHECKS FAILED"
exit "$FAILED"
