#!/usr/bin/env bash
# The load balancer's overhead against nginx, in one run, on the running local stack (start it
# with ci/up.sh first): nginx-light (Debian; one worker, keep-alive upstream, buffered access
# log) in front of the same main server, beside our load balancer (which also journals every
# response and ships it to Postgres). The nightly share is set to 0 for the run so both proxies
# reach the same single server, and restored afterwards.
# Usage: ci/bench-lb.sh [users] [rate] [seconds] [rounds] [concurrency]
# EXTRA_PEERS="NAME=URL …": more proxies in front of the same server, measured in the same run
# (e.g. another build of the load balancer).
# BARE_LOG=1: a second bare proxy (peer bare+pg, :8092) that also stores every answer as a row of
# recommendations_history by COPY every 10 ms: the floor of any proxy that logs each response to
# Postgres on these cores (its rows are deleted when it stops).
# HOLD_SHIPPING=1: the response log's rows stay in the journal for the run (a session holds a
# SHARE lock on recommendations_history, so the shipper's COPY waits) and are shipped after it:
# the load balancer's throughput without Postgres storing 10-20k rows/s on the same two cores.
source "$(dirname "$0")/lib.sh"
source "$(dirname "$0")/stack.sh"
USERS="${1:-610}" RATE="${2:-500}" SECS="${3:-10}" ROUNDS="${4:-3}" CONC="${5:-32}"
NGINX_PORT=8090
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  say "installing nginx-light from apt"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
wait_ready 8080 8082
mkdir -p "$RUN/nginx/logs" "$RUN/nginx/tmp"
: > "$RUN/nginx/logs/access.log"
cat > "$RUN/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $RUN/nginx/nginx.pid;
error_log $RUN/nginx/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log $RUN/nginx/logs/access.log combined buffer=64k flush=1s;
  client_body_temp_path $RUN/nginx/tmp/body;
  proxy_temp_path $RUN/nginx/tmp/proxy;
  fastcgi_temp_path $RUN/nginx/tmp/fastcgi;
  uwsgi_temp_path $RUN/nginx/tmp/uwsgi;
  scgi_temp_path $RUN/nginx/tmp/scgi;
  upstream lazyrec { server 127.0.0.1:8080; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://lazyrec;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
"$NGINX" -t -q -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
"$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf"
trap '"$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s quit 2>/dev/null || true; admin PUT /admin/share "{\"share\": $SHARE}" >/dev/null || true' EXIT
# A bare proxy on the same crates (hyper server and client, one thread, nothing else): what
# bounds any proxy built on them.
"$BIN/load-bench" proxy --listen 127.0.0.1:8091 --upstream http://127.0.0.1:8080 2>"$RUN/nginx/logs/bare.log" &
BARE_PID=$!
BARE_PG_PID=""
if [ "${BARE_LOG:-0}" = 1 ]; then
  eval "export $("$BIN/lazyrec-db" up)"
  "$BIN/load-bench" proxy --listen 127.0.0.1:8092 --upstream http://127.0.0.1:8080 --history-url "$DATABASE_URL" \
    2>"$RUN/nginx/logs/bare-pg.log" &
  BARE_PG_PID=$!
  EXTRA_PEERS="${EXTRA_PEERS:+$EXTRA_PEERS }bare+pg=http://127.0.0.1:8092"
fi
HOLD_PID=""
# Ends the session holding the history table (from the server side: killing psql alone would
# leave its backend asleep with the lock).
release_hold() {
  psql -qAt "$DATABASE_URL" -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'bench_lb_hold'" >/dev/null 2>&1 || true
  wait "$HOLD_PID" 2>/dev/null || true
}
cleanup() {
  [ -n "$HOLD_PID" ] && release_hold
  kill $BARE_PID 2>/dev/null || true
  if [ -n "$BARE_PG_PID" ]; then
    kill "$BARE_PG_PID" 2>/dev/null || true
    wait "$BARE_PG_PID" 2>/dev/null || true
    cat "$RUN/nginx/logs/bare-pg.log"
  fi
  "$NGINX" -p "$RUN/nginx" -c "$RUN/nginx/nginx.conf" -s quit 2>/dev/null || true
  admin PUT /admin/share "{\"share\": $SHARE}" >/dev/null || true
}
trap cleanup EXIT
for port in 8091 ${BARE_PG_PID:+8092}; do
  for _ in $(seq 1 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/recommend/1" && break; sleep 0.1; done
done
SHARE="$(lb_state share)"
if [ "${HOLD_SHIPPING:-0}" = 1 ]; then
  eval "export $("$BIN/lazyrec-db" up)"
  printf 'SET application_name = bench_lb_hold;\nBEGIN;\nLOCK TABLE recommendations_history IN SHARE MODE;\nSELECT pg_sleep(100000);\n' \
    | psql -q "$DATABASE_URL" >/dev/null 2>&1 &
  HOLD_PID=$!
  sleep 1
  say "shipping held: the response log's rows wait in the journal for the run"
fi
admin PUT /admin/share '{"share": 0}' >/dev/null
say "direct :8080, via our load balancer :8082, via nginx :$NGINX_PORT ($("$NGINX" -v 2>&1 | sed 's/.*: //'))"
grep -m1 "model name" /proc/cpuinfo | sed 's/.*: /cpu: /'
# CPU time each proxy spends per request (all its threads; /proc/<pid>/stat utime + stime, in
# clock ticks): what one core allows, whatever the thread layout.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
lb_answers() { curl -s "http://127.0.0.1:8082/metrics" | awk '/^lazyrec_lb_requests_total/ {n += $2} END {printf "%d", n}'; }
LB_PID="$(cat "$RUN/loadbalancer.pid")"
NGINX_WORKER="$(pgrep -P "$(cat "$RUN/nginx/nginx.pid")" | head -1)"
lb_cpu0="$(cpu_ticks "$LB_PID")" nginx_cpu0="$(cpu_ticks "$NGINX_WORKER")" lb_n0="$(lb_answers)"
"$BIN/load-bench" compare --direct http://127.0.0.1:8080 --via http://127.0.0.1:8082 \
  --peer nginx=http://127.0.0.1:$NGINX_PORT --peer bare=http://127.0.0.1:8091 ${EXTRA_PEERS:+$(printf -- '--peer %s ' $EXTRA_PEERS)} --users "$USERS" --rate "$RATE" --seconds "$SECS" \
  --rounds "$ROUNDS" --concurrency "$CONC"
lb_cpu1="$(cpu_ticks "$LB_PID")" nginx_cpu1="$(cpu_ticks "$NGINX_WORKER")" lb_n1="$(lb_answers)"
sleep 1.5 # the access log's buffer is flushed every second
nginx_n="$(wc -l < "$RUN/nginx/logs/access.log")"
hz="$(getconf CLK_TCK)"
awk -v t="$((lb_cpu1 - lb_cpu0))" -v n="$((lb_n1 - lb_n0))" -v hz="$hz" \
  'BEGIN {printf "cpu per request: our load balancer %.1f µs (%d requests, %.1f s of cpu)\n", n ? t / hz / n * 1e6 : 0, n, t / hz}'
awk -v t="$((nginx_cpu1 - nginx_cpu0))" -v n="$nginx_n" -v hz="$hz" \
  'BEGIN {printf "cpu per request: nginx worker %.1f µs (%d requests, %.1f s of cpu)\n", n ? t / hz / n * 1e6 : 0, n, t / hz}'
echo "load balancer log: $(lb_state history)"
if [ -n "$HOLD_PID" ]; then
  release_hold
  HOLD_PID=""
  started=$(date +%s.%N)
  for _ in $(seq 1 1200); do
    [ "$(lb_state history | sed 's/.*"pending":\([0-9]*\).*/\1/')" = 0 ] && break
    sleep 0.5
  done
  awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN {printf "shipping released: the journal drained into Postgres in %.1f s\n", e - s}'
  echo "load balancer log: $(lb_state history)"
fi
