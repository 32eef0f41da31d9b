#!/usr/bin/env bash
# The deploy step for the local stack (ci/up.sh): starts a server with a release's strategy in a
# free slot and prints its base URL once it answers /ready. Slots are :8081 (`nightly`), :8085
# and :8086; a slot is free when the load balancer routes neither main nor nightly to it, so a
# new nightly never replaces the server main runs on (after a promotion main *is* the old
# nightly slot). Used for new nightlies (the pipeline's deploy job) and for a rollback whose
# servers are gone (`lazyrec-release rollback --deploy-command ci/deploy.sh`).
#
# Replace it (DEPLOY_COMMAND) to deploy elsewhere. The contract: called as `COMMAND STRATEGY TAG`
# with LAZYREC_RELEASE_PARAMS (JSON object), LAZYREC_MODEL_VERSION and DEPLOY_ROLE
# (nightly|rollback) in the environment; prints the URL(s) of ready backends on stdout, one per
# line, everything else on stderr; exits non-zero on failure. E.g. for systemd:
#   systemctl restart "lazyrec@$2" && echo "http://10.0.0.5:$(systemctl show -p Port …)"
# or Kubernetes:
#   kubectl set env deploy/lazyrec-nightly LAZYREC_SERVER_MODEL__STRATEGY="$1" &&
#   kubectl rollout status deploy/lazyrec-nightly >&2 && echo http://lazyrec-nightly.svc:8080
# The controller then checks each URL's /ready reports LAZYREC_MODEL_VERSION before routing.
#   ci/deploy.sh STRATEGY TAG
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
STRATEGY="${1:?strategy}"
TAG="${2:?tag}"
PARAMS="${LAZYREC_RELEASE_PARAMS:-{\}}"
mkdir -p "$RUN"
slot=""
for candidate in 8081:50052:nightly 8085:50055:slot-8085 8086:50056:slot-8086; do
  port="${candidate%%:*}"
  # A slot the load balancer routes (as main or nightly) is taken (typed: lazyrec-lb admin routes).
  if ! lb_routes "http://127.0.0.1:$port"; then slot="$candidate"; break; fi
done
[ -n "$slot" ] || { echo "error: no free slot: main and nightly use every one of :8081 :8085 :8086" >&2; exit 1; }
IFS=: read -r port grpc name <<<"$slot"
stop_stack "$name" >&2
rm -rf "$RUN/$name-edge"
cp -a "$LAZYREC_STATE_DIR/qdrant-edge" "$RUN/$name-edge"
# Parameters go in a config file ([model] table); flat JSON objects only.
config="$RUN/$name.toml"
python3 - "$STRATEGY" "$PARAMS" > "$config" <<'PY' || exit 1
import json, sys
strategy, params = sys.argv[1], json.loads(sys.argv[2])
if not isinstance(params, dict) or any(isinstance(v, (dict, list)) for v in params.values()):
    sys.exit(f"error: parameters must be a flat JSON object, got {sys.argv[2]}")
print("[model]")
print(f"strategy = {json.dumps(strategy)}")
print("[model.params]")
for k, v in params.items():
    # Keys quoted too: a key is data, never TOML (a JSON string is a valid TOML basic string).
    print(f"{json.dumps(k)} = {json.dumps(v)}")
PY
variant=nightly
[ "${DEPLOY_ROLE:-nightly}" = rollback ] && variant=main
echo "deploying $TAG ($STRATEGY $PARAMS, ${DEPLOY_ROLE:-nightly}) on :$port" >> "$RUN/$name.log"
LAZYREC_SERVER_STORE__EDGE_DIR="$RUN/$name-edge" \
  "$BIN/lazyrec-server" --config "$config" --variant "$variant" --http-addr "127.0.0.1:$port" --grpc-addr "127.0.0.1:$grpc" \
  >>"$RUN/$name.log" 2>&1 &
echo $! > "$RUN/$name.pid"
wait_ready "$port" >&2
echo "http://127.0.0.1:$port"
