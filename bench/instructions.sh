#!/usr/bin/env bash
# Userspace instructions per proxied request, counted by callgrind: the
# README's "instructions/req" steps. CPU time on this shared 2-core box moves
# by ±10 % between runs; instruction counts of the same binary agree within
# ~0.2 %, so small changes are compared with this.
#
#   bench/instructions.sh                  # HTTP/1.1, 20,000 requests
#   PROTO=h2c N=20000 bench/instructions.sh
#   WAYGATE_BIN=/path/to/other/waygate bench/instructions.sh   # compare builds
#
# waygate runs under valgrind (2 workers, one service over two nginx
# upstreams with health checks, outlier detection and a breaker, like
# peer-bench's waygate); h2load sends 2,000 warm-up requests, then N more
# while callgrind counts, shaped like peer-bench's load: HTTP/1.1 over 16
# connections with one request in flight each, h2c over 8 connections with 8
# streams each (CONNS and STREAMS override).
# Kernel work is not counted. Needs: valgrind, h2load, nginx, curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${WAYGATE_BIN:-$here/../target/release/waygate}
N=${N:-20000}
PROTO=${PROTO:-h1}
run=$(mktemp -d /tmp/waygate-ir.XXXXXX)
. "$here/lib.sh"

start_nginx "$run" 'server { listen 127.0.0.1:19101; listen 127.0.0.1:19102; location / { return 200 "ok\n"; } }'

write_gateway_toml "$run/gateway.toml"
RUST_LOG=warn valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$run/callgrind.out" \
  "$bin" run --config "$run/gateway.toml" >"$run/valgrind.log" 2>&1 &
vg=$!
pids+=("$vg")
for _ in $(seq 150); do curl -fs -o /dev/null http://127.0.0.1:18180/ && break; sleep 0.2; done
h1=()
if [ "$PROTO" = h1 ]; then
  h1=(--h1) conns=${CONNS:-16} streams=${STREAMS:-1}
else
  conns=${CONNS:-8} streams=${STREAMS:-8}
fi
url=http://127.0.0.1:18180/
timeout 120 h2load "${h1[@]}" -n 2000 -c "$conns" -m "$streams" "$url" >/dev/null
callgrind_control -i on "$vg" >/dev/null 2>&1
timeout 300 h2load "${h1[@]}" -n "$N" -c "$conns" -m "$streams" "$url" | grep -E '^requests:'
callgrind_control -i off "$vg" >/dev/null 2>&1
kill -INT "$vg"
wait "$vg" 2>/dev/null || true
total=$(callgrind_annotate "$run/callgrind.out" 2>/dev/null | awk '/PROGRAM TOTALS/ && !t { gsub(/,/, "", $1); t = $1 } END { print t }')
echo "$PROTO: $((total / N)) instructions per request ($(basename "$bin"), $N requests; profile: $run/callgrind.out)"
