#!/usr/bin/env bash
# Load run of the Redis tier, side by side under wrk (each server on one core, wrk on the other):
#   1. a Redis hit with L1 off (quickstart --no-l1) against the guide's hand-written cache-aside
#      handler (examples/cache_aside.rs), both on the same Redis;
#   2. a hot key with L1 on (quickstart, tiered on Redis) against the in-memory quickstart.
# Usage: scripts/load-redis.sh [rounds] [seconds]   (REDIS_URL, default redis://127.0.0.1:6379)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-6}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --features redis --example quickstart --example cache_aside >/dev/null 2>&1

export TOKIO_WORKER_THREADS=1
pids=()
start() { taskset -c 1 "$@" >/dev/null & pids+=($!); }
trap 'kill "${pids[@]}" 2>/dev/null' EXIT
start ./target/release/examples/cache_aside --listen 127.0.0.1:3102
start ./target/release/examples/quickstart --listen 127.0.0.1:3103 --no-l1
start ./target/release/examples/quickstart --listen 127.0.0.1:3104
REDIS_URL= start ./target/release/examples/quickstart --listen 127.0.0.1:3105
for port in 3102 3103 3104 3105; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/users/1" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/users/1" >/dev/null
done
for port in 3103 3104 3105; do
  curl -sfi "http://127.0.0.1:$port/users/1" | grep -qi '^cache-status: tower-stash; hit' || { echo "$port: not a hit" >&2; exit 1; }
done

run() { taskset -c 0 wrk -t1 -c64 -d"${secs}s" "http://127.0.0.1:$1/users/1" | awk '/Requests\/sec/ {print $2}'; }
ratio() { echo "scale=3; $1 / $2" | bc; }
sa=0; sn=0; st=0; sm=0
for r in $(seq "$rounds"); do
  a=$(run 3102); n=$(run 3103); t=$(run 3104); m=$(run 3105)
  echo "round $r: cache-aside ${a}, redis-only ${n} ($(ratio "$n" "$a")x), tiered ${t}, memory ${m} ($(ratio "$t" "$m")) req/s"
  sa=$(echo "$sa + $a" | bc); sn=$(echo "$sn + $n" | bc); st=$(echo "$st + $t" | bc); sm=$(echo "$sm + $m" | bc)
done
echo "overall: redis-only/cache-aside = $(ratio "$sn" "$sa")x; tiered/memory = $(ratio "$st" "$sm")"
