#!/usr/bin/env bash
# The pipeline's evaluation: up to LOOKS looks EVERY seconds apart at release ID (or `latest`:
# the newest deployed release), each recorded on the release; stops at the first promote or
# abort, which `--act` carries out. Exit 0 promoted, 4 aborted, 3 still undecided after LOOKS.
#   ci/evaluate-release.sh ID|latest LOOKS EVERY
source "$(dirname "$0")/lib.sh"
ID="${1:?release id or latest}"
# The controller's exit codes (EXIT_SUCCESS, EXIT_CONTINUE, EXIT_STOP, …), from the controller.
eval "$("$BIN/lazyrec-release" exit-codes)"
LOOKS="${2:-30}"
EVERY="${3:-20}"
if [ "$ID" = latest ]; then
  ID="$(psql "${DATABASE_URL:?}" -Atc "SELECT max(release_id) FROM releases WHERE state = 'deployed'")"
  [ -n "$ID" ] || { echo "no deployed release to evaluate"; exit 0; }
fi
for look in $(seq 1 "$LOOKS"); do
  sleep "$EVERY"
  echo "== look $look at release $ID"
  set +e
  "$BIN/lazyrec-release" evaluate --release "$ID" --act ${EVALUATE_ARGS:-}
  code=$?
  set -e
  [ "$code" = "$EXIT_CONTINUE" ] || exit "$code"
done
exit "$EXIT_CONTINUE"
