# Sourced by the bench scripts: what they start is stopped when they exit,
# and their nginx upstreams are started one way.

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

# start_nginx DIR 'server { ... } ...': nginx (one worker, no access log,
# unlimited keep-alive) with the given server blocks, its files under DIR.
start_nginx() {
  cat >"$1/nginx.conf" <<NGINX
daemon off; worker_processes 1; pid $1/nginx.pid; error_log $1/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000;
  $2 }
NGINX
  nginx -c "$1/nginx.conf" -p "$1" &
  pids+=($!)
}

# write_gateway_toml FILE [PORT]: waygate on 127.0.0.1:PORT (default 18180;
# admin on PORT+1), 2 workers, one service over the nginx upstreams on 19101
# and 19102 with health checks, outlier detection and a breaker, as
# peer-bench's waygate.
write_gateway_toml() {
  local port=${2:-18180}
  cat >"$1" <<TOML
[gateway]
listen = "127.0.0.1:$port"
admin_listen = "127.0.0.1:$((port + 1))"
worker_threads = 2
[[services]]
name = "bench"
endpoints = ["127.0.0.1:19101", "127.0.0.1:19102"]
[services.health_check]
path = "/"
interval = "1s"
[services.outlier_detection]
consecutive_failures = 5
[services.circuit_breaker]
failure_threshold = 5
[[routes]]
path_prefix = "/"
service = "bench"
TOML
}
