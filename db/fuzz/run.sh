#!/usr/bin/env bash
# Fuzz the course-log parser with libFuzzer: `db/fuzz/run.sh [seconds]` (default 60).
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). The corpus starts
# from the real course lines when ../shared/data is present, plus a few built-in seeds.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
mkdir -p corpus/parse_line
i=0
for f in ../../../shared/data/course/events/kafka_lines_valid.txt ../../../shared/data/course/events/kafka_lines_anomalous.txt; do
  [ -f "$f" ] || continue
  while IFS= read -r line; do
    i=$((i + 1)); printf '%s' "$line" > "corpus/parse_line/seed-$i"
  done < "$f"
done
printf '%s' '2026-01-15T10:00:00,77,GET /create_account' > corpus/parse_line/seed-create
printf '%s' '2022-02-09T01:45:32.945123,284507,recommendation request x:8082, status 0, result: java.util.concurrent.TimeoutException: after 800 ms, 815 ms' > corpus/parse_line/seed-error
exec cargo +nightly fuzz run parse_line corpus/parse_line -- -max_total_time="$secs"
