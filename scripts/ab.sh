#!/usr/bin/env bash
# Before/after in one sitting: runs each build in turn (a fresh server and SQLite
# file for every run) and prints one summary line per run.
#
#   scripts/ab.sh ingest 3 DIR_BEFORE DIR_AFTER      # --ingest-only, 3 rounds
#   scripts/ab.sh fan1k 2 DIR_BEFORE DIR_AFTER       # 1,000 clients × 20 events/s
#   scripts/ab.sh fan10k 2 DIR_BEFORE DIR_AFTER      # 10,000 clients × 20 events/s
#
# Each DIR holds a release `maicivy-analytics`; the load tool is `$BENCH`
# (default target/release/maicivy-bench), the same for every build.
set -u
mode=$1; rounds=$2; shift 2
bench=${BENCH:-target/release/maicivy-bench}
case $mode in
  ingest) args=(--ingest-only --http-concurrency 256 --duration 10s) ;;
  fan1k) args=(--clients 1000 --rate 20 --duration 10s) ;;
  fan10k) args=(--clients 10000 --rate 20 --duration 10s --http-concurrency 16) ;;
  *) echo "mode: ingest, fan1k or fan10k" >&2; exit 2 ;;
esac
ulimit -n "$(ulimit -Hn)"
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq 1 "$rounds"); do
  for dir in "$@"; do
    db=$(mktemp -u /tmp/ab-XXXXXX.db)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$dir/maicivy-analytics" --listen "127.0.0.1:$port" --database-url "sqlite://$db" >/dev/null 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
    line=$("$bench" --url "ws://127.0.0.1:$port/ws/analytics" --server-pid "$pid" "${args[@]}" 2>/dev/null | tail -n 1)
    kill "$pid"; wait "$pid" 2>/dev/null
    rm -f "$db" "$db-wal" "$db-shm"
    python3 - "$dir" "$line" <<'PY'
import json, sys
d, line = sys.argv[1], sys.argv[2]
try:
    r = json.loads(line)
except ValueError:
    print(d, "FAILED"); sys.exit()
if r.get("mode") == "ingest":
    print(d, "events/s", round(r["events_per_s"]), "cpu_us/event", round(r["server_cpu_us_per_event"], 1),
          "ack p50/p99 ms", r["ack_latency_ms"]["p50"], r["ack_latency_ms"]["p99"], "failed", r["events_failed"])
else:
    print(d, "deliveries/s", round(r["deliveries_per_s"]), "ratio", r["delivery_ratio"],
          "p50/p99 ms", r["latency_ms"]["p50"], r["latency_ms"]["p99"],
          "cpu_us/delivery", round(r["server_cpu_us_per_delivery"], 2),
          "rss/client", round(r["server_rss_per_client_bytes"]), "connect p50 ms", r["connect_latency_ms"]["p50"])
PY
  done
done
echo "# $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)"
