#!/usr/bin/env bash
# The conversion experiment: is the simulator's conversion signal real? The same population and
# seed run against popularity-v1 as main, then against neighbours-v2 (the default) as main, on
# the same data (default dataset, latest 20 % of each user held out, in a state directory of its
# own, .state/experiment, where nothing is ever ingested: both runs — and every later run — see
# the same database; `ci/up.sh --simulate` ingests into .state/simulate, which would consume the
# futures). Prints both reports and the difference of conversion with its 95 % interval.
#   ci/simulate.sh compare [REQUESTS] [RATE]      (default 6000 requests at 200/s)
# MODELS="reference candidate" (default "popularity-v1 neighbours-v2") names the two; each run
# also gets `lazyrec-report` over its own window (coverage, Gini of exposure) in $OUT/<model>.report.
#   ci/simulate.sh calls [SECONDS] [RATE]         (default 600 s at 100/s) the default model on both
#                                                 servers; prints each server's store calls per
#                                                 request (lazyrec_server_store_calls)
source "$(dirname "$0")/lib.sh"
MODE="${1:-}"
case "$MODE" in
  compare) REQUESTS="${2:-6000}"; RATE="${3:-200}" ;;
  calls) SECONDS_RUN="${2:-600}"; RATE="${3:-100}" ;;
  *) echo "usage: ci/simulate.sh compare [REQUESTS] [RATE] | calls [SECONDS] [RATE]" >&2; exit 2 ;;
esac
export LAZYREC_SIM_STATE_DIR="${LAZYREC_EXPERIMENT_STATE_DIR:-$ROOT/.state/experiment}"
"$ROOT/ci/up.sh" --simulate "$RATE" --no-serve >/dev/null
export LAZYREC_STATE_DIR="$LAZYREC_SIM_STATE_DIR"
source "$ROOT/ci/stack.sh"
eval "export $("$BIN/lazyrec-db" up)"
OUT="$LAZYREC_STATE_DIR/experiment"
mkdir -p "$OUT"
trap 'stop_stack' EXIT
if [ "$MODE" = calls ]; then
  stop_stack
  start_model_stack
  say "simulating ${SECONDS_RUN} s at $RATE/s against the default model"
  "$BIN/lazyrec-sim" run --futures "$LAZYREC_STATE_DIR/futures.tsv" --rate "$RATE" --duration "${SECONDS_RUN}s" \
    --seed 42 --output none --no-progress | head -4
  for port in 8080 8081; do
    curl -s "http://127.0.0.1:$port/metrics" | grep -E '^lazyrec_server_store_calls_(count|sum|bucket.*le="(1|2|3)")' \
      | sed "s/^/:$port /"
  done
  exit 0
fi
read -r REFERENCE CANDIDATE <<<"${MODELS:-popularity-v1 neighbours-v2}"
for model in "$REFERENCE" "$CANDIDATE"; do
  stop_stack
  # Both servers run the model: every request is answered by it, whichever variant.
  start_model_stack "$model"
  say "simulating $REQUESTS requests at $RATE/s against $model"
  since="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  "$BIN/lazyrec-sim" run --futures "$LAZYREC_STATE_DIR/futures.tsv" --rate "$RATE" --requests "$REQUESTS" \
    --seed 42 --output none --json "$OUT/$model.json" --no-progress | tee "$OUT/$model.txt"
  sleep 3 # the load balancer's shipper stores the last rows
  "$BIN/lazyrec-report" --since "$since" --until "$(date -u -d '+1 second' +%Y-%m-%dT%H:%M:%SZ)" >"$OUT/$model.report"
  grep -E '^(coverage|Gini)' "$OUT/$model.report" | sed "s/^/$model: /"
done
"$BIN/lazyrec-sim" compare "$OUT/$CANDIDATE.json" "$OUT/$REFERENCE.json" | tee "$OUT/compare.txt"
