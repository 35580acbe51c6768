#!/usr/bin/env bash
# The public test suite for HTTP caches (npm package http-cache-tests, the suite behind
# cache-tests.fyi) against examples/proxy.rs: its origin server on one loopback port, the proxy
# in front on another. Prints the required and optional counts; the full results go to
# target/cache-tests/results.json.
# Fails when fewer than MIN_REQUIRED required or MIN_OPTIONAL optional tests pass (defaults:
# the counts last reached, 143 and 75, minus two required and one optional): three
# timing-bound required tests, `other-age-update-expires`, `other-age-update-max-age` (an `Age`
# over 32 after the suite's pause) and `headers-store-Proxy-Authenticate`, each failed alone in
# one of eight runs on 2026-12-03 (the proxy from before that day's changes: 2 runs, none).
# Seven required Age tests of 0.4.5
# expect the reading RFC 9111 section 5.1 replaced (an invalid or listed `Age` makes the
# response stale; the RFC, and the suite's newer tests on GitHub, use the first member and
# ignore an invalid value): they are listed apart and not counted against the floor.
# Usage: scripts/cache-tests.sh   (needs node and npm; builds the proxy in debug mode)
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.4.5
dir=target/cache-tests
suite=$dir/node_modules/http-cache-tests
if [ ! -f "$suite/package.json" ] || ! grep -q "\"version\": \"$version\"" "$suite/package.json"; then
  mkdir -p "$dir"
  for attempt in 1 2 3; do
    npm install --prefix "$dir" --no-audit --no-fund --silent "http-cache-tests@$version" && break
    [ "$attempt" = 3 ] && { echo "npm install http-cache-tests failed" >&2; exit 1; }
    sleep 5
  done
fi
cargo build --quiet --all-features --example proxy

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
origin=$(free_port)
proxy=$(free_port)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
(cd "$suite" && npm_config_port=$origin npm_config_protocol=http npm_config_pidfile="$PWD/../../server.pid" \
  exec node --no-warnings server/server.mjs) >"$dir/origin.log" 2>&1 &
pids+=($!)
# The suite's origin tells requests apart by their `Req-Num` header: forwarded on cacheable
# requests too (the proxy forwards only keyed and listed headers on those).
./target/debug/examples/proxy --listen "127.0.0.1:$proxy" --upstream "http://127.0.0.1:$origin" \
  --allow-headers req-num >"$dir/proxy.log" 2>&1 &
pids+=($!)
for port in $origin $proxy; do
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.1
  done
done
(cd "$suite" && npm_config_base="http://127.0.0.1:$proxy" npm_config_id= npm_package_config_id= \
  timeout 600 node --no-warnings cli.mjs) >"$dir/results.json"
cat >"$dir/count.mjs" <<'JS'
import fs from 'fs'
const suite = process.argv[2]
const results = JSON.parse(fs.readFileSync(process.argv[3], 'utf8'))
const { default: tests } = await import(`${suite}/tests/index.mjs`)
// Required in 0.4.5, reversed by RFC 9111 section 5.1 and the suite's newer tests.
const superseded = new Set(['age-parse-nonnumeric', 'age-parse-negative', 'age-parse-float',
  'age-parse-prefix-twoline', 'age-parse-dup-0', 'age-parse-dup-0-twoline', 'age-parse-dup-old'])
const counts = { required: [0, 0], optional: [0, 0], check: [0, 0], superseded: [0, 0] }
const failed = []
for (const s of tests) {
  for (const t of s.tests) {
    if (t.browser_only) continue
    let kind = t.kind === 'optimal' ? 'optional' : (t.kind === 'check' ? 'check' : 'required')
    const pass = results[t.id] === true
    if (kind === 'required' && superseded.has(t.id)) {
      counts.superseded[1]++
      if (pass) counts.superseded[0]++
    }
    counts[kind][1]++
    if (pass) counts[kind][0]++
    else if (kind === 'required') failed.push(t.id)
  }
}
console.log(`http-cache-tests: required ${counts.required[0]} of ${counts.required[1]} passed, ` +
  `optional ${counts.optional[0]} of ${counts.optional[1]}, checks ${counts.check[0]} of ${counts.check[1]}`)
console.log(`required tests failed: ${failed.join(' ')}`)
const counted = [counts.required[0] - counts.superseded[0], counts.required[1] - counts.superseded[1]]
console.log(`superseded (RFC 9111 5.1 Age; not counted for the floor): ${counts.superseded[0]} of ` +
  `${counts.superseded[1]} passed; required counted for the floor: ${counted[0]} of ${counted[1]}`)
const [minRequired, minOptional] = [Number(process.argv[4]), Number(process.argv[5])]
if (counted[0] < minRequired || counts.optional[0] < minOptional) {
  console.log(`below the floor: at least ${minRequired} required and ${minOptional} optional must pass`)
  process.exit(1)
}
JS
node "$dir/count.mjs" "$(cd "$suite" && pwd)" "$dir/results.json" "${MIN_REQUIRED:-141}" "${MIN_OPTIONAL:-74}"
