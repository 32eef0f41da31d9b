#!/usr/bin/env bash
# The pipeline's deploy step for the local stack (ci/up.sh): (re)starts the nightly server on
# :8081 with the release's strategy and prints its base URL once it answers /ready. Replace this
# command (DEPLOY_COMMAND) to deploy elsewhere: it gets the strategy and the tag, and must print
# the URL(s) of ready nightly backends — e.g. `systemctl restart lazyrec-nightly@$2` or
# `kubectl rollout status deploy/lazyrec-nightly` followed by `echo http://nightly.svc:8080`.
#   ci/deploy-nightly.sh STRATEGY TAG
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
STRATEGY="${1:?strategy}"
TAG="${2:?tag}"
stop_stack nightly >&2
mkdir -p "$RUN"
rm -rf "$RUN/nightly-edge"
cp -a "$LAZYREC_STATE_DIR/qdrant-edge" "$RUN/nightly-edge"
echo "deploying $TAG ($STRATEGY) on :8081" >> "$RUN/nightly.log"
LAZYREC_SERVER_MODEL__STRATEGY="$STRATEGY" start_server nightly 8081 50052
wait_ready 8081 >&2
echo "http://127.0.0.1:8081"
