#!/usr/bin/env bash
# The offline evaluation tables of EVALUATION.md, one command per dataset (results as text and
# JSON under $LAZYREC_STATE_DIR/eval/):
#   ci/eval.sh default   the data in Postgres (the bundled ml-latest-small), per-user temporal split
#   ci/eval.sh course    the course interaction captures in ../shared/data/course/events, per-user
#                        temporal split (leave-last-out: almost every user has 1-3 interactions)
#   ci/eval.sh files     ml-latest-small exported, split 80/20 at random into `user item rating
#                        timestamp` files, read back through the file loader
#   ci/eval.sh heldout   ml-latest-small, 20 % of users never trained on, each tested on a random
#                        20 % of their items (strong generalisation, the EASE papers' protocol)
#   ci/eval.sh all       the four
# Every run: TopPop, ItemKNN-CF, EASE, popularity-v1, neighbours-v1, neighbours-v2, items-v1 with their
# default parameters (chosen on validation splits, see EVALUATION.md); content vectors from the
# default store (ci/up.sh --no-serve prepares it).
source "$(dirname "$0")/lib.sh"
OUT="$LAZYREC_STATE_DIR/eval"
DATA="${LAZYREC_DATA:-$ROOT/../shared/data}"
MODELS=(--model popularity-v1 --model neighbours-v1 --model neighbours-v2 --model items-v1)
EDGE="$LAZYREC_STATE_DIR/qdrant-edge"

prepare() {
  cargo build --release --locked --quiet --workspace --bins
  eval "export $("$BIN/lazyrec-db" up)"
  "$BIN/lazyrec-db" load-default >&2
  "$BIN/embedder" embed --no-progress >&2
  mkdir -p "$OUT"
}

default() {
  say "default dataset (Postgres), per-user temporal split"
  "$BIN/lazyrec-eval" postgres "${MODELS[@]}" --json "$OUT/default.json" | tee "$OUT/default.txt"
}

course() {
  say "course interaction captures, per-user temporal split"
  python3 "$ROOT/ci/course-interactions.py" "$DATA/course/events" "$OUT/course.tsv"
  "$BIN/lazyrec-eval" file "$OUT/course.tsv" --split temporal --min-items 2 --edge-dir "$EDGE" "${MODELS[@]}" \
    --json "$OUT/course.json" | tee "$OUT/course.txt"
}

files() {
  say "ml-latest-small, random 80/20 split written as files"
  "$BIN/lazyrec-eval" export --out "$OUT/ml-small.tsv"
  "$BIN/lazyrec-eval" split "$OUT/ml-small.tsv" --share 0.2 --seed 42 \
    --train-out "$OUT/ml-small.train.tsv" --test-out "$OUT/ml-small.test.tsv"
  "$BIN/lazyrec-eval" files --train "$OUT/ml-small.train.tsv" --test "$OUT/ml-small.test.tsv" --edge-dir "$EDGE" \
    "${MODELS[@]}" --json "$OUT/files.json" | tee "$OUT/files.txt"
}

heldout() {
  say "ml-latest-small, held-out users"
  "$BIN/lazyrec-eval" export --out "$OUT/ml-small.tsv"
  "$BIN/lazyrec-eval" file "$OUT/ml-small.tsv" --split held-out-users --min-items 5 --edge-dir "$EDGE" \
    "${MODELS[@]}" --json "$OUT/heldout.json" | tee "$OUT/heldout.txt"
}

case "${1:-all}" in
  default) prepare; default ;;
  course) prepare; course ;;
  files) prepare; files ;;
  heldout) prepare; heldout ;;
  all) prepare; default; course; files; heldout ;;
  *) echo "usage: ci/eval.sh [default|course|files|heldout|all]" >&2; exit 2 ;;
esac
