#!/usr/bin/env bash
# Load run: the quickstart's cached route against an uncached axum route serving the same bytes
# (examples/baseline.rs), under wrk, alternating so both see the same machine state; then the
# caching proxy in HTTP mode (examples/proxy.rs, the origin's Cache-Control deciding) in front
# of a baseline that says max-age, against the bare baseline.
# Usage: scripts/load.sh [rounds] [seconds] [--cache-headers]   (needs wrk: apt-get install wrk)
# --cache-headers: the baseline also sends the headers a hit adds (etag, age, cache-status).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-8}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --example quickstart --example baseline --example proxy >/dev/null 2>&1

# Each server gets one core and one tokio worker, wrk the other core: less scheduling noise than
# four busy threads on two cores.
export TOKIO_WORKER_THREADS=1
taskset -c 1 ./target/release/examples/quickstart --listen 127.0.0.1:3100 >/dev/null &
cached_pid=$!
taskset -c 1 ./target/release/examples/baseline --listen 127.0.0.1:3101 ${3:-} >/dev/null &
bare_pid=$!
taskset -c 1 ./target/release/examples/baseline --listen 127.0.0.1:3103 --max-age 3600 >/dev/null &
origin_pid=$!
taskset -c 1 ./target/release/examples/proxy --listen 127.0.0.1:3102 --upstream http://127.0.0.1:3103 >/dev/null &
proxy_pid=$!
trap 'kill $cached_pid $bare_pid $origin_pid $proxy_pid 2>/dev/null' EXIT
for port in 3100 3101 3102 3103; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.1; done
done
# The cached route must now be a hit with the same body as the baseline.
curl -sfi http://127.0.0.1:3100/users/1 | grep -qi '^cache-status: tower-stash; hit' || { echo "not a hit" >&2; exit 1; }
curl -sfi http://127.0.0.1:3102/users/1 | grep -qi '^cache-status: tower-stash; hit' || { echo "the proxy: not a hit" >&2; exit 1; }
cmp <(curl -sf http://127.0.0.1:3100/users/1) <(curl -sf http://127.0.0.1:3101/users/1)

run() { taskset -c 0 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$1/users/1" | awk '/Requests\/sec/ {print $2}'; }
# Runs `name` on `port` against the baseline, alternating which goes first, round by round;
# the median of the rounds' ratios resists the machine's swings (other tenants) better than
# the ratio of the totals.
compare() {
  local name=$1 port=$2 total_x=0 total_b=0 ratios=() r b x ratio median
  for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then b=$(run 3101); x=$(run "$port"); else x=$(run "$port"); b=$(run 3101); fi
    ratio=$(echo "scale=3; $x / $b" | bc)
    ratios+=("$ratio")
    echo "round $r: baseline ${b} req/s, $name ${x} req/s, ratio $ratio"
    total_b=$(echo "$total_b + $b" | bc); total_x=$(echo "$total_x + $x" | bc)
  done
  median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
  echo "overall: $name/baseline = $(echo "scale=3; $total_x / $total_b" | bc) (totals), $median (median of rounds)"
}
compare cached 3100
# The proxy (HTTP mode hits) against the bare baseline, the same way.
compare "proxy (HTTP mode)" 3102
