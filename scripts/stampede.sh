#!/usr/bin/env bash
# Stampede run: 1000 concurrent requests for one cold key (a 200 ms simulated database), each
# round a new key, against the quickstart with single flight, without it, and (as the
# machine's reference) the same burst on warm keys, which are all hits.
# The servers run as deployed, with the runtime's default worker threads (one per core); the
# single-flight run is repeated with the server on one core and one worker thread and the load
# client on the other core, where the server alone writes the whole fan-out.
# Each line of the single-flight runs shows a round (with the mean latency of each tenth of the
# burst, in the order it was sent); the last line sums up the rounds.
# Usage: scripts/stampede.sh [concurrency] [rounds]
set -euo pipefail
cd "$(dirname "$0")/.."
concurrency=${1:-1000}
rounds=${2:-10}
cargo build --release --example quickstart --example stampede >/dev/null 2>&1
server=./target/release/examples/quickstart
$server --listen 127.0.0.1:3210 >/dev/null &
with=$!
$server --listen 127.0.0.1:3211 --no-single-flight >/dev/null &
without=$!
TOKIO_WORKER_THREADS=1 taskset -c 1 $server --listen 127.0.0.1:3212 >/dev/null &
one_core=$!
trap 'kill $with $without $one_core 2>/dev/null' EXIT
for port in 3210 3211 3212; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null && break; sleep 0.1; done
done
client=./target/release/examples/stampede
echo "== single flight (cold keys)"
$client --url http://127.0.0.1:3210 --concurrency "$concurrency" --rounds "$rounds" --first-id 1000
echo "== single flight, the server on one core with one worker, the client on the other (cold keys)"
taskset -c 0 $client --url http://127.0.0.1:3212 --concurrency "$concurrency" --rounds "$rounds" --first-id 1000
echo "== the same keys again: all hits (what a burst of $concurrency costs this machine)"
$client --url http://127.0.0.1:3210 --concurrency "$concurrency" --rounds "$rounds" --first-id 1000 | tail -1
echo "== no single flight (cold keys)"
$client --url http://127.0.0.1:3211 --concurrency "$concurrency" --rounds "$rounds" --first-id 2000 | tail -1
