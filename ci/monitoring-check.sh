#!/usr/bin/env bash
# Checks a running `ci/up.sh --monitoring` stack end to end: every Prometheus target is up, no
# alert fires, then the nightly server is stopped (SIGKILL: a crash, not a graceful stop) and
# InstanceDown must reach the local webhook receiver ($RUN/alerts.jsonl) within 90 s.
#   ci/monitoring-check.sh [STATE_DIR]     (default: the simulation state, .state/simulate)
here="$(cd "$(dirname "$0")/.." && pwd)"
export LAZYREC_STATE_DIR="${1:-${LAZYREC_STATE_DIR:-$here/.state/simulate}}"
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
python3 - "$RUN" <<'PY'
import json, os, sys, time, urllib.parse, urllib.request

run = sys.argv[1]
prom = "http://127.0.0.1:9090"

def get(path):
    with urllib.request.urlopen(prom + path, timeout=5) as r:
        return json.load(r)

targets = get("/api/v1/targets")["data"]["activeTargets"]
for t in sorted(targets, key=lambda t: t["scrapeUrl"]):
    print(f"  target {t['labels']['job']:<13} {t['scrapeUrl']:<40} {t['health']}")
down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
if down:
    sys.exit(f"FAILED: targets down: {down}")
firing = get("/api/v1/query?query=" + urllib.parse.quote('ALERTS{alertstate="firing"}'))["data"]["result"]
print(f"  {len(targets)} targets up; alerts firing: {[a['metric']['alertname'] for a in firing]}")
if firing:
    sys.exit("FAILED: alerts fire on a healthy stack")

pid = int(open(os.path.join(run, "nightly.pid")).read())
log = os.path.join(run, "alerts.jsonl")
seen = sum(1 for _ in open(log)) if os.path.exists(log) else 0
os.kill(pid, 9)
killed = time.time()
print(f"  killed the nightly server (pid {pid}); waiting for InstanceDown at the webhook")
while time.time() - killed < 90:
    if os.path.exists(log):
        for line in list(open(log))[seen:]:
            body = json.loads(line)["body"]
            for a in body.get("alerts", []):
                if a["labels"].get("alertname") == "InstanceDown" and a["status"] == "firing" \
                        and a["labels"].get("instance") == "127.0.0.1:8081":
                    print(f"  InstanceDown at the webhook {time.time() - killed:.1f} s after the kill: "
                          f"{json.dumps(a['labels'])} — {a['annotations']['summary']}")
                    sys.exit(0)
    time.sleep(0.5)
sys.exit("FAILED: no InstanceDown for 127.0.0.1:8081 at the webhook within 90 s")
PY
