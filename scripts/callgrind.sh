#!/usr/bin/env bash
# Deterministic cost per request: user-space instructions (valgrind callgrind) of the quickstart's
# cached route against the uncached baseline, over 2000 keep-alive requests (a run of 2200 minus
# a run of 200, so start-up and the first miss cancel out). Needs valgrind and python3.
# Usage: scripts/callgrind.sh [quickstart flags, e.g. --no-single-flight]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example quickstart --example baseline >/dev/null 2>&1
client=$(mktemp)
trap 'rm -f "$client"' EXIT
cat >"$client" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", "/users/1"); r = c.getresponse(); r.read()
    assert r.status == 200
PY
per_request() { # name port binary
  local name=$1 port=$2 bin=$3 out
  declare -A total
  for n in 200 2200; do
    out=$(mktemp)
    TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" --listen "127.0.0.1:$port" "${@:4}" >/dev/null 2>&1 &
    local pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.2; done
    python3 "$client" "$port" "$n"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    total[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$out")
    rm -f "$out"
  done
  echo "$name: $(( (total[2200] - total[200]) / 2000 )) instructions per request"
}
per_request baseline 3200 ./target/release/examples/baseline
per_request cached 3201 ./target/release/examples/quickstart "$@"
