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
total_c=0; total_b=0; ratios=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then b=$(run 3101); c=$(run 3100); else c=$(run 3100); b=$(run 3101); fi
  ratio=$(echo "scale=3; $c / $b" | bc)
  ratios+=("$ratio")
  echo "round $r: baseline ${b} req/s, cached ${c} req/s, ratio $ratio"
  total_b=$(echo "$total_b + $b" | bc); total_c=$(echo "$total_c + $c" | bc)
done
# The median of the rounds' ratios resists the machine's swings (other tenants) better than
# the ratio of the totals.
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
echo "overall: cached/baseline = $(echo "scale=3; $total_c / $total_b" | bc) (totals), $median (median of rounds)"

# The proxy (HTTP mode hits) against the bare baseline, the same way.
total_p=0; total_b=0; ratios=()
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then b=$(run 3101); p=$(run 3102); else p=$(run 3102); b=$(run 3101); fi
  ratio=$(echo "scale=3; $p / $b" | bc)
  ratios+=("$ratio")
  echo "round $r: baseline ${b} req/s, proxy (HTTP mode) ${p} req/s, ratio $ratio"
  total_b=$(echo "$total_b + $b" | bc); total_p=$(echo "$total_p + $p" | bc)
done
median=$(printf '%s\n' "${ratios[@]}" | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}')
echo "overall: proxy/baseline = $(echo "scale=3; $total_p / $total_b" | bc) (totals), $median (median of rounds)"
