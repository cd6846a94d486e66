#!/usr/bin/env bash
# Where a proxy's CPU per request goes: user and system time, and context
# switches, per proxied request, for waygate, HAProxy and nginx under the
# same load, in alternating rounds. peer-bench's "CPU µs/req" is their sum;
# this splits it, to tell what a proxy's own code costs (user) from what
# the kernel's TCP path costs it (system), which no userspace change moves.
#
#   bench/cpu-split.sh                 # HTTP/1.1 (wrk -t2 -c64), 3 rounds of 8 s
#   PROTO=h2c bench/cpu-split.sh       # h2c (h2load -t2 -c8 -m8, as peer-bench); nginx is left out
#   ROUNDS=5 DUR=10 bench/cpu-split.sh
#   WAYGATE_B=/tmp/other/waygate bench/cpu-split.sh   # a second build beside
#                                  # the first, as "waygate-b" (A/B of a change)
#
# Every proxy: 2 workers, round robin over the same two nginx upstream ports
# (one nginx worker), keep-alive both ways, no access log; waygate with
# health checks, outlier detection and a breaker, as in waygate-peer.sh.
# Times come from /proc (utime/stime of the proxy's process and of its child
# processes), context switches from each thread's status. Every load
# run is bounded (wrk -d / h2load -D, inside timeout). Needs: wrk, h2load,
# nginx, haproxy, curl.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${WAYGATE_BIN:-$here/../target/release/waygate}
ROUNDS=${ROUNDS:-3}
DUR=${DUR:-8}
PROTO=${PROTO:-h1}
run=$(mktemp -d /tmp/waygate-split.XXXXXX)
. "$here/lib.sh"

body='ok from upstream: 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz0123\n'
start_nginx "$run" "server { listen 127.0.0.1:19101; listen 127.0.0.1:19102; location / { default_type text/plain; return 200 \"$body\"; } }"

write_gateway_toml "$run/gateway.toml"
cat >"$run/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
frontend f
  bind 127.0.0.1:18280
  default_backend b
backend b
  balance roundrobin
  server u1 127.0.0.1:19101
  server u2 127.0.0.1:19102
CFG
mkdir -p "$run/nginx-proxy"
cat >"$run/nginx-proxy/nginx.conf" <<NGINX
daemon off; worker_processes 2; pid $run/nginx-proxy/nginx.pid; error_log $run/nginx-proxy/err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  upstream b { server 127.0.0.1:19101; server 127.0.0.1:19102; keepalive 256; keepalive_requests 100000000; }
  server { listen 127.0.0.1:18380; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
NGINX

RUST_LOG=warn "$bin" run --config "$run/gateway.toml" >"$run/waygate.log" 2>&1 &
declare -A pid port
pid[waygate]=$! port[waygate]=18180
pids+=("${pid[waygate]}")
haproxy -f "$run/haproxy.cfg" -db >"$run/haproxy.log" 2>&1 &
pid[haproxy]=$! port[haproxy]=18280
pids+=("${pid[haproxy]}")
peers=(haproxy waygate)
if [ "$PROTO" = h1 ]; then
  nginx -c "$run/nginx-proxy/nginx.conf" -p "$run/nginx-proxy" &
  pid[nginx]=$! port[nginx]=18380
  pids+=("${pid[nginx]}")
  peers=(haproxy nginx waygate)
fi
if [ -n "${WAYGATE_B:-}" ]; then
  write_gateway_toml "$run/gateway-b.toml" 18190
  RUST_LOG=warn "$WAYGATE_B" run --config "$run/gateway-b.toml" >"$run/waygate-b.log" 2>&1 &
  pid[waygate-b]=$! port[waygate-b]=18190
  pids+=("${pid[waygate-b]}")
  peers+=(waygate-b)
fi
up() { for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }
for p in "${peers[@]}"; do
  up "${port[$p]}" || { echo "cpu-split: $p did not answer on port ${port[$p]}" >&2; exit 1; }
done

# load PORT SECONDS -> the number of requests completed
load() {
  if [ "$PROTO" = h1 ]; then
    timeout $(($2 + 30)) wrk -t2 -c64 -d"$2"s "http://127.0.0.1:$1/" | awk '/requests in/ { print $1 }'
  else
    timeout $(($2 + 30)) h2load -t2 -c8 -m8 -D "$2" "http://127.0.0.1:$1/" 2>/dev/null | awk '/^requests:/ { print $8 }'
  fi
}
# sample PID -> "utime stime voluntary nonvoluntary": times from the stat of
# the process and of each child process (a process's times include its
# threads, also those that have exited), switches summed over threads.
sample() {
  local u=0 s=0 v=0 n=0 p t f cs
  for p in "$1" $(pgrep -P "$1" || true); do
    read -r -a f <"/proc/$p/stat" || continue
    u=$((u + f[13])) s=$((s + f[14]))
    for t in /proc/"$p"/task/*; do
      cs=$(awk '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v + 0, n + 0 }' "$t/status" 2>/dev/null || echo "0 0")
      v=$((v + ${cs% *})) n=$((n + ${cs#* }))
    done
  done
  echo "$u $s $v $n"
}
hz=$(getconf CLK_TCK)
echo "proxy round requests user_us sys_us total_us vcs nvcs" >"$run/split.txt"
for r in $(seq "$ROUNDS"); do
  # Alternate the order, so no proxy always runs first after a pause.
  order=("${peers[@]}")
  if [ $((r % 2)) = 0 ]; then order=($(printf '%s\n' "${peers[@]}" | tac)); fi
  for p in "${order[@]}"; do
    load "${port[$p]}" 2 >/dev/null
    read -r u0 s0 v0 n0 < <(sample "${pid[$p]}")
    req=$(load "${port[$p]}" "$DUR" || true)
    read -r u1 s1 v1 n1 < <(sample "${pid[$p]}")
    if ! [ "${req:-0}" -gt 0 ] 2>/dev/null; then
      echo "cpu-split: no requests completed against $p in round $r; round left out" >&2
      continue
    fi
    awk -v p="$p" -v r="$r" -v q="$req" -v hz="$hz" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) -v n=$((n1 - n0)) \
      'BEGIN { k = 1e6 / hz / q; printf "%s %d %d %.2f %.2f %.2f %.3f %.3f\n", p, r, q, u * k, s * k, (u + s) * k, v / q, n / q }' \
      | tee -a "$run/split.txt"
  done
done
echo
echo "$PROTO, per proxied request, mean of $ROUNDS alternating rounds of ${DUR}s (raw: $run/split.txt):"
echo
awk 'NR > 1 { n[$1]++; u[$1] += $4; s[$1] += $5; t[$1] += $6; v[$1] += $7; c[$1] += $8 }
  END {
    print "| proxy | user µs | system µs | total µs | total ÷ HAProxy | system ÷ HAProxy total | voluntary cs | involuntary cs |"
    print "|---|---|---|---|---|---|---|---|"
    h = n["haproxy"] ? t["haproxy"] / n["haproxy"] : 0
    split("waygate waygate-b haproxy nginx", order, " ")
    for (i = 1; i <= 4; i++) {
      p = order[i]
      if (!(p in n)) continue
      if (h) printf "| %s | %.2f | %.2f | %.2f | %.2f | %.2f | %.3f | %.3f |\n", p, u[p] / n[p], s[p] / n[p], t[p] / n[p], t[p] / n[p] / h, s[p] / n[p] / h, v[p] / n[p], c[p] / n[p]
      else printf "| %s | %.2f | %.2f | %.2f | n/a | n/a | %.3f | %.3f |\n", p, u[p] / n[p], s[p] / n[p], t[p] / n[p], v[p] / n[p], c[p] / n[p]
    }
  }' "$run/split.txt"
