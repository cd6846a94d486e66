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
