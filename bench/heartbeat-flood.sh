#!/usr/bin/env bash
# Proxy p99 latency with and without a heartbeat flood (issue 3): wrk drives
# keep-alive GETs through waygate to an nginx upstream for DURATION seconds,
# three times: alone; while a second wrk POSTs the flood (~10,000 heartbeats/s
# from 5,000 instances) to an nginx sink that answers 200 without looking
# (the control: what the flood *generator* alone costs the proxy on a shared
# box); and while the same flood goes to waygate's /registry. The gateway's
# share is the third figure against the control. Everything on 127.0.0.1;
# every run bounded.
#   cargo build --release && bench/heartbeat-flood.sh
# Needs: wrk, nginx (apt-get install -y wrk nginx-light).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${WAYGATE_BIN:-$here/../target/release/waygate}
DURATION=${DURATION:-10}
CONNS=${CONNS:-32}
# Each proxy connection waits PACE_MS between requests (32 x 2 ms ~ 16k req/s,
# well under this box's capacity): with an open-ish offered load, p99 shows
# interference from the flood rather than queueing of a saturated CPU.
# PACE_MS=0 measures flat out instead.
export PACE_MS=${PACE_MS:-2}
run=$(mktemp -d /tmp/waygate-hb.XXXXXX)
. "$here/lib.sh"

start_nginx "$run" 'server { listen 127.0.0.1:19001; location / { return 200 "ok from upstream\n"; } }
  server { listen 127.0.0.1:19002; location / { return 200 '"'"'{"status":"ok"}'"'"'; } }'

cat >"$run/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:18080"
admin_listen = "127.0.0.1:18081"
worker_threads = 2
[registry]
heartbeat_ttl = "30s"
[[services]]
name = "app"
endpoints = ["127.0.0.1:19001"]
[[services]]
name = "fleet"
[[routes]]
path_prefix = "/"
service = "app"
TOML
RUST_LOG=warn "$bin" run --config "$run/gateway.toml" >"$run/waygate.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do curl -fs -o /dev/null http://127.0.0.1:18080/ && break; sleep 0.1; done

p99() {  # wrk --latency output → p99 in ms
  awk '$1=="99%" { v=$2; u=v; sub(/[0-9.]+/,"",u); sub(/[a-z]+/,"",v);
        if (u=="us") v/=1000; else if (u=="s") v*=1000; printf "%.3f", v }' "$1"
}
timeout $((DURATION + 15)) wrk -t1 -c"$CONNS" -d3s http://127.0.0.1:18080/ >/dev/null   # warm-up
measure() { (cd "$here" && timeout $((DURATION + 15)) wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -s paced.lua http://127.0.0.1:18080/ >"$1"); }
measure "$run/base.txt"
flood() {  # $1 = target URL, $2 = output
  (cd "$here" && timeout $((DURATION + 20)) wrk -t2 -c"${FLOOD_CONNS:-26}" -d$((DURATION + 6))s -s heartbeat.lua "$1" >"$2") &
  local f=$!
  sleep 4   # let the first 5,000 registrations land; measure the steady flood
  measure "$3"
  wait "$f" || true
}
flood http://127.0.0.1:19002/registry "$run/flood-sink.txt" "$run/control.txt"
flood http://127.0.0.1:18081/registry "$run/flood.txt" "$run/under.txt"
base=$(p99 "$run/base.txt"); control=$(p99 "$run/control.txt"); under=$(p99 "$run/under.txt")
rps() { awk '/Requests\/sec/{print $2}' "$1"; }
echo "proxy p99 alone:                      ${base} ms  ($(rps "$run/base.txt") req/s)"
echo "proxy p99, flood to an nginx sink:    ${control} ms  ($(rps "$run/control.txt") req/s)   $(grep heartbeats: "$run/flood-sink.txt" || true)"
echo "proxy p99, flood to waygate:          ${under} ms  ($(rps "$run/under.txt") req/s)   $(grep heartbeats: "$run/flood.txt" || true)"
echo "instances registered: $(curl -s http://127.0.0.1:18081/registry/fleet | grep -o '"id"' | wc -l)"
awk -v a="$base" -v c="$control" -v b="$under" 'BEGIN {
  printf "p99 ratio, flood to waygate vs alone:        %.2f\n", b / a
  printf "p99 ratio, flood to waygate vs flood to sink: %.2f  (the gateway'"'"'s own share)\n", b / c }'
echo "raw outputs: $run"
