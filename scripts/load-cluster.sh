#!/usr/bin/env bash
# Load run: Redis hits (L1 off: quickstart --no-l1) against a Redis Cluster (3 masters, 3
# replicas) and against one Redis, same machine, same run, alternating. Each server runs on one
# core, wrk on the other; 100 users, so the keys spread over the cluster's masters.
# Usage: scripts/load-cluster.sh [rounds] [seconds]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-6}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release --features redis --example quickstart >/dev/null 2>&1

dir=$(mktemp -d)
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT
# A free port at most 55535: a cluster node also listens on its port + 10000.
free_port() {
  python3 -c '
import random, socket
while True:
    p = random.randint(20000, 55000)
    with socket.socket() as s, socket.socket() as b:
        try:
            s.bind(("127.0.0.1", p)); b.bind(("127.0.0.1", p + 10000))
        except OSError:
            continue
    print(p); break'
}
redis() { # port [extra args]
  local port=$1; shift
  mkdir -p "$dir/$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir/$port" \
    --daemonize no --logfile "$dir/$port/log" "$@" &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && return; sleep 0.1; done
  echo "redis-server on $port did not start" >&2; exit 1
}
single=$(free_port); redis "$single"
nodes=()
for _ in 1 2 3 4 5 6; do
  p=$(free_port); redis "$p" --cluster-enabled yes --cluster-node-timeout 1000 --repl-diskless-sync-delay 0
  nodes+=("127.0.0.1:$p")
done
redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >/dev/null
for _ in $(seq 100); do
  ok=1
  for n in "${nodes[@]}"; do redis-cli -p "${n#*:}" cluster info | grep -q cluster_state:ok || ok=0; done
  [ $ok = 1 ] && break; sleep 0.2
done
seeds=$(IFS=,; echo "${nodes[*]}")

export TOKIO_WORKER_THREADS=1
start() { taskset -c 1 "$@" >/dev/null & pids+=($!); }
REDIS_URL="redis+cluster://$seeds" start ./target/release/examples/quickstart --listen 127.0.0.1:3106 --no-l1
REDIS_URL="redis://127.0.0.1:$single" start ./target/release/examples/quickstart --listen 127.0.0.1:3107 --no-l1
for port in 3106 3107; do
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null && break; sleep 0.1; done
  for u in $(seq 100); do curl -sf "http://127.0.0.1:$port/users/$u" >/dev/null; done
  curl -sfi "http://127.0.0.1:$port/users/1" | grep -qi '^cache-status: tower-stash; hit' || { echo "$port: not a hit" >&2; exit 1; }
done

cat > "$dir/users.lua" <<'LUA'
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, "/users/" .. (counter % 100 + 1))
end
LUA
run() { taskset -c 0 wrk -t1 -c64 -d"${secs}s" -s "$dir/users.lua" "http://127.0.0.1:$1" | awk '/Requests\/sec/ {print $2}'; }
ratio() { echo "scale=3; $1 / $2" | bc; }
sc=0; ss=0
for r in $(seq "$rounds"); do
  c=$(run 3106); s=$(run 3107)
  echo "round $r: cluster ${c}, one redis ${s} req/s ($(ratio "$c" "$s")x)"
  sc=$(echo "$sc + $c" | bc); ss=$(echo "$ss + $s" | bc)
done
hits() { curl -s "http://127.0.0.1:$1/stats"; }
echo "cluster stats: $(hits 3106)"
echo "one redis stats: $(hits 3107)"
echo "overall: cluster/one redis = $(ratio "$sc" "$ss")x"
