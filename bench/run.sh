#!/usr/bin/env bash
# Issue 8's measurement, in one command: builds the release binary, runs
# ../shared/bench/peer-bench.sh with waygate beside HAProxy and nginx
# (HTTP/1.1 and h2c, wrk -c64, 2 workers, round robin over two nginx
# upstreams, access logs off, health checks + outlier detection + breaker on),
# measures memory per idle keep-alive connection (bench/idle-conns.py, 10,000
# connections) and writes bench/RESULTS.md: date, machine, the table, the
# ratios against the goals. Every load run is bounded (peer-bench's own
# limits; the idle-connection probe has per-step timeouts).
#
#   bench/run.sh                 # 2 rounds (REPEAT=N for more)
#   PEERS=haproxy,nginx bench/run.sh
#   RESULTS_FROM=/tmp/peer-bench/DIR bench/run.sh   # reuse a peer-bench run
# Needs: wrk, h2load, nginx, haproxy, python3 (all on the bench machine).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
shared=${SHARED:-$root/../shared}
REPEAT=${REPEAT:-2}
PEERS=${PEERS:-haproxy,nginx}
IDLE_CONNS=${IDLE_CONNS:-10000}
out=${OUT:-$here/RESULTS.md}

(cd "$root" && cargo build --release --quiet)
bin=$root/target/release/waygate

if [ -n "${RESULTS_FROM:-}" ]; then
  dir=$RESULTS_FROM   # rewrite RESULTS.md from an earlier peer-bench run
else
  log=$(mktemp /tmp/waygate-bench.XXXXXX)
  "$shared/bench/peer-bench.sh" --h2 --repeat "$REPEAT" \
    --name waygate --port 8080 --h2c --start "exec \"\$BENCH_DIR/waygate-peer.sh\" $bin" \
    --peers "$PEERS,waygate" 2>&1 | tee "$log"
  dir=$(sed -n 's/.*results: \(.*\)\/results.csv.*/\1/p' "$log" | tail -1)
fi
[ -n "$dir" ] && [ -f "$dir/results.csv" ] || { echo "no results from peer-bench (see ${log:-$dir})" >&2; exit 1; }

# Memory per idle keep-alive connection: waygate, then HAProxy, same probe.
idle_run=$(mktemp -d /tmp/waygate-idle.XXXXXX)
. "$here/lib.sh"
start_nginx "$idle_run" 'server { listen 127.0.0.1:19101; location / { return 200 "ok\n"; } }'
cat >"$idle_run/gateway.toml" <<TOML
[gateway]
listen = "127.0.0.1:18180"
admin_listen = "127.0.0.1:18181"
worker_threads = 2
[[services]]
name = "bench"
endpoints = ["127.0.0.1:19101"]
[[routes]]
path_prefix = "/"
service = "bench"
TOML
cat >"$idle_run/haproxy.cfg" <<CFG
global
  nbthread 2
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend f
  bind 127.0.0.1:18280
  default_backend b
backend b
  server u1 127.0.0.1:19101
CFG
wait_port() { for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$1/" && return 0; sleep 0.1; done; return 1; }
idle() {  # $1 = port, $2 = pid, $3 = connections → "per connection: X KiB" line
  python3 "$here/idle-conns.py" --port "$1" --pid "$2" --conns "$3" --batch 64 | tail -1
}
RUST_LOG=warn "$bin" run --config "$idle_run/gateway.toml" >"$idle_run/waygate.log" 2>&1 & wpid=$!; pids+=($wpid)
haproxy -f "$idle_run/haproxy.cfg" -db >"$idle_run/haproxy.log" 2>&1 & hpid=$!; pids+=($hpid)
wait_port 19101 && wait_port 18180 && wait_port 18280
idle_waygate=$(idle 18180 "$wpid" "$IDLE_CONNS")
# HAProxy needs two descriptors per connection it admits (maxconn 9000 fits
# this box's 20,000-descriptor limit): it is probed with 8,000.
idle_haproxy="$(idle 18280 "$hpid" 8000) (8,000 connections)"
echo "idle keep-alive connections, waygate: $idle_waygate"
echo "idle keep-alive connections, haproxy: $idle_haproxy"
cleanup; pids=()   # the idle probe's gateway, HAProxy and nginx, before the next ports are bound

# User and system time per request, the three proxies side by side.
split_h1=$(mktemp /tmp/waygate-split-h1.XXXXXX) split_h2=$(mktemp /tmp/waygate-split-h2.XXXXXX)
export SPLIT_DUR=${SPLIT_DUR:-8}
if [ "${SPLIT_ROUNDS:-3}" -gt 0 ]; then
  # A failed split leaves its table out; the peer-bench run is still written up.
  ROUNDS=${SPLIT_ROUNDS:-3} DUR=$SPLIT_DUR WAYGATE_BIN=$bin "$here/cpu-split.sh" | tee "$split_h1" ||
    echo "cpu-split (HTTP/1.1) failed: its table is left out" >&2
  ROUNDS=${SPLIT_ROUNDS:-3} DUR=$SPLIT_DUR WAYGATE_BIN=$bin PROTO=h2c "$here/cpu-split.sh" | tee "$split_h2" ||
    echo "cpu-split (h2c) failed: its table is left out" >&2
fi

python3 - "$dir/results.csv" "$out" "$REPEAT" "$idle_waygate" "$idle_haproxy" "$dir" "$split_h1" "$split_h2" <<'PY'
import csv, datetime, os, platform, re, statistics, subprocess, sys
path, out, repeat, idle_w, idle_h, rundir, split_h1, split_h2 = sys.argv[1:9]
rows = list(csv.DictReader(open(path)))
def f(r, k): return float(r[k])
by = {}
for r in rows:
    by.setdefault((r["proto"], r["name"]), []).append(r)
def mean(proto, name, key):
    v = [f(r, key) for r in by.get((proto, name), [])]
    return statistics.mean(v) if v else None
def per_round(proto, name, key):
    return [f(r, key) for r in sorted(by.get((proto, name), []), key=lambda r: int(r["round"]))]
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = []
w = lines.append
w("# waygate beside HAProxy and nginx (issue 8)")
w("")
w(f"Written by `bench/run.sh` on {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
  f"machine: {cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}; {repeat} consecutive rounds "
  f"of `peer-bench.sh` (raw: `{rundir}`).")
w("")
w("Method: wrk -t2 -c64 (HTTP/1.1 keep-alive) and h2load -t2 -c8 -m8 (h2c), 10 s after a 3 s warm-up, "
  "every proxy with 2 workers, round robin over two nginx upstreams, access logs off; waygate with "
  "active health checks, outlier detection and a circuit breaker on. CPU µs/request = the proxy's "
  "utime+stime / requests. The box is shared by load generator, upstream and proxy (2 cores), so "
  "compare ratios within a run, not absolute figures across runs.")
w("")
for proto, title in (("h1", "HTTP/1.1"), ("h2", "h2c")):
    names = sorted({n for (p, n) in by if p == proto}, key=lambda n: (n != "waygate", n))
    if not names:
        continue
    w(f"## {title}")
    w("")
    w("| proxy | round | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB |")
    w("|---|---|---|---|---|---|---|")
    for n in names:
        for r in sorted(by[(proto, n)], key=lambda r: int(r["round"])):
            w(f"| {n} | {r['round']} | {float(r['rps']):.0f} | {float(r['p50_ms']):.2f} | {float(r['p99_ms']):.2f} | "
              f"{float(r['cpu_us_per_req']):.2f} | {float(r['peak_rss_mib']):.1f} |")
    w("")
def ratio(proto, key, other):
    a, b = per_round(proto, "waygate", key), per_round(proto, other, key)
    return [x / y for x, y in zip(a, b)] if a and b else []
def fmt(v): return ", ".join(f"{x:.2f}" for x in v) if v else "n/a"
w("## Goals (per round)")
w("")
w("| goal | per round | met |")
w("|---|---|---|")
def row(name, vals, ok):
    w(f"| {name} | {fmt(vals)} | {'yes' if vals and all(ok(v) for v in vals) else 'no'} |")
row("HTTP/1.1 CPU/req ÷ HAProxy ≤ 0.9", ratio("h1", "cpu_us_per_req", "haproxy"), lambda v: v <= 0.9)
row("HTTP/1.1 req/s ÷ HAProxy ≥ 1.0", ratio("h1", "rps", "haproxy"), lambda v: v >= 1.0)
row("h2c CPU/req ÷ HAProxy ≤ 1.0", ratio("h2", "cpu_us_per_req", "haproxy"), lambda v: v <= 1.0)
row("HTTP/1.1 p99 ÷ nginx ≤ 1.0", ratio("h1", "p99_ms", "nginx"), lambda v: v <= 1.0)
rss = [max(f(r, "peak_rss_mib") for r in by.get((p, "waygate"), [])) for p in ("h1", "h2") if by.get((p, "waygate"))]
row("peak RSS ≤ 32 MiB", rss, lambda v: v <= 32)
m = re.search(r"per connection: ([0-9.]+) KiB", idle_w)
row("idle keep-alive connection ≤ 20 KiB", [float(m.group(1))] if m else [], lambda v: v <= 20)
w("")
w(f"Idle keep-alive connections ({os.environ.get('IDLE_CONNS', '10000')}, one request each, then held; "
  "`bench/idle-conns.py`, RSS growth per connection):")
w("")
w(f"- waygate: {idle_w}")
w(f"- HAProxy: {idle_h}")
w("")
splits = [(t, [l for l in open(p).read().splitlines() if l.startswith("|")]) for t, p in (("HTTP/1.1", split_h1), ("h2c", split_h2))]
if any(table for _, table in splits):
    w("## Where the CPU goes: user and system time (`bench/cpu-split.sh`)")
    w("")
    w("The same proxies and upstreams, started once, loaded in alternating rounds (wrk -t2 -c64, h2load -t2 -c8 -m8; "
      f"{os.environ['SPLIT_DUR']} s after 2 s of warm-up); user and system time of each proxy's processes from /proc, per request. "
      "System time is the kernel's TCP path over loopback (for a sender it includes the receiver's side), "
      "which no userspace change moves; only the user column is a proxy's own code.")
    w("")
    for title, table in splits:
        if table:
            w(f"{title}:")
            w("")
            for l in table:
                w(l)
            w("")
open(out, "w").write("\n".join(lines) + "\n")
print(f"wrote {out}")
PY
rm -f "$split_h1" "$split_h2"
