#!/usr/bin/env bash
# Cross-instance stampede: four quickstart instances on one Redis (a memory tier in front of
# it, single flight on), 250 concurrent requests on each at once for one cold key, each round
# a new key. Prints, per round, the database queries (1 per key when the instances coalesce)
# and each instance's p99; then each instance's percentiles over all rounds.
# Starts its own redis-server on a free loopback port (never touches 127.0.0.1:6379).
# Usage: scripts/stampede-instances.sh [concurrency per instance] [rounds] [instances]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-250}
rounds=${2:-10}
instances=${3:-4}
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }
cargo build --release --all-features --example quickstart --example stampede >/dev/null 2>&1
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
urls=()
for _ in $(seq "$instances"); do
  port=$(free_port)
  REDIS_URL="redis://127.0.0.1:$redis_port" ./target/release/examples/quickstart --listen "127.0.0.1:$port" >/dev/null &
  pids+=($!)
  urls+=("http://127.0.0.1:$port")
done
for url in "${urls[@]}"; do
  for _ in $(seq 100); do curl -sf "$url/stats" >/dev/null && break; sleep 0.1; done
done
list=$(IFS=,; echo "${urls[*]}")
# One Host for all (as behind a load balancer): the cache keys the host.
./target/release/examples/stampede --url "$list" --host app.example --concurrency "$concurrency" --rounds "$rounds" --first-id 5000
# Lease releases announced to waiting instances (PUBLISH inside the release script), and how
# often a waiter read the entry (GET) in all.
redis-cli -p "$redis_port" info commandstats | grep -E '^cmdstat_(publish|get|evalsha|eval):' | tr -d '\r'
