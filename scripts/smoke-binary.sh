#!/usr/bin/env bash
# Smoke test of the single executables made by `npm run build:binary` (run by .ci/run after the tests).
# For each of dist/bin/gridgate-linux-{x64,arm64} (arm64 under qemu-aarch64-static): the addon's glibc
# floor, the CLI's exit codes, then a gateway with a temp config: an MQTT QoS 1 publish with
# mosquitto_pub must be acked, stored (/api/v1/store) and forwarded to a local HTTP receiver, /healthz
# must answer, the quiet gateway must trim the C heap (the embedded malloc addon), and SIGTERM must
# stop it with exit code 0. Prints sizes and start-to-ready times.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN_DIR=dist/bin
# The embedded Node's own glibc floor: the addon may not need more than the Node it goes into.
NODE_VERSION=$(node -p 'require("./scripts/sea-node.json").version')
SQLITE_VERSION=$(node -p 'require("better-sqlite3/package.json").version')
TOKEN=smoke-secret
failures=0

for tool in mosquitto_pub qemu-aarch64-static curl objdump aarch64-linux-gnu-objdump; do
  command -v "$tool" >/dev/null || { echo "smoke-binary: $tool is missing" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup () {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

fail () { echo "FAIL [$arch]: $*" >&2; failures=$((failures + 1)); }

max_version () { grep -o "\b$1_[0-9.]*" | sort -V | tail -1; }

# A local HTTP uplink receiver: writes each request body, one a line, to $1 and its port to $2.
cat > "$work/receiver.cjs" <<'EOF'
const http = require('node:http')
const fs = require('node:fs')
const [out, portFile] = process.argv.slice(2)
http.createServer((req, res) => {
  const chunks = []
  req.on('data', c => chunks.push(c))
  req.on('end', () => {
    fs.appendFileSync(out, Buffer.concat(chunks).toString('utf8').replace(/\n/g, ' ') + '\n')
    res.writeHead(200).end()
  })
}).listen(0, '127.0.0.1', function () { fs.writeFileSync(portFile, String(this.address().port)) })
EOF
node "$work/receiver.cjs" "$work/received.txt" "$work/receiver.port" &
disown
pids+=($!)
for _ in $(seq 100); do [ -s "$work/receiver.port" ] && break; sleep 0.1; done
receiver_port=$(cat "$work/receiver.port")

summary=()
for arch in x64 arm64; do
  exe=$BIN_DIR/gridgate-linux-$arch
  [ -x "$exe" ] || { fail "$exe is missing: run npm run build:binary"; continue; }
  if [ "$arch" = arm64 ]; then
    run=(qemu-aarch64-static -L /usr/aarch64-linux-gnu "$exe"); objdump=aarch64-linux-gnu-objdump; label="arm64, emulated by qemu"
  else
    run=("$exe"); objdump=objdump; label="x64, native"
  fi
  size_mib=$(awk -v b="$(stat -c %s "$exe")" 'BEGIN { printf "%.1f", b / 1048576 }')

  # glibc and libstdc++: the addon embedded in this executable must not need newer symbol versions
  # than its Node does, so it loads wherever that Node runs.
  addon=dist/sea/better_sqlite3-linux-$arch.node
  for lib in GLIBC GLIBCXX; do
    node_floor=$($objdump -T "$exe" | max_version "$lib")
    addon_floor=$($objdump -T "$addon" | max_version "$lib")
    echo "[$arch] $lib: Node needs up to $node_floor, the SQLite addon up to $addon_floor"
    if [ "$(printf '%s\n%s\n' "$node_floor" "$addon_floor" | sort -V | tail -1)" != "$node_floor" ]; then
      fail "the addon needs $addon_floor, newer than the embedded Node's $node_floor"
    fi
  done

  # The CLI behaves like the npm package's: --version, usage errors exit 2.
  version=$("${run[@]}" --version)
  [ "$version" = "$(node -p 'require("./package.json").version')" ] || fail "--version printed '$version'"
  set +e; "${run[@]}" no-such-command >/dev/null 2>&1; rc=$?; set -e
  [ "$rc" = 2 ] || fail "an unknown command exited $rc, not 2"
  set +e; "${run[@]}" check-config --config "$work/absent.yaml" >/dev/null 2>&1; rc=$?; set -e
  [ "$rc" = 2 ] || fail "check-config of a missing file exited $rc, not 2"

  dir=$work/$arch
  mkdir -p "$dir/run"
  chmod 700 "$dir/run"
  cat > "$dir/gridgate.yaml" <<EOF
gateway: { id: smoke-$arch, dataDir: ./data, logLevel: info }
mqtt: { host: 127.0.0.1, port: 0 }
admin: { host: 127.0.0.1, port: 0 }
devices:
  - { id: sensor-1, token: "$TOKEN" }
uplinks:
  - { name: cloud, type: http, url: "http://127.0.0.1:$receiver_port/events", batchMaxDelay: 5ms }
EOF
  # Protocols other than MQTT are switched off where this build has them (their default ports are fixed).
  effective=$("${run[@]}" check-config --config "$dir/gridgate.yaml") || fail "check-config refused the smoke config"
  for section in websocket coap; do
    if grep -q "^$section:" <<<"$effective"; then echo "$section: { enabled: false }" >> "$dir/gridgate.yaml"; fi
  done

  start_ns=$(date +%s%N)
  RUNTIME_DIRECTORY=$dir/run "${run[@]}" --config "$dir/gridgate.yaml" > "$dir/log.jsonl" 2> "$dir/stderr.txt" &
  gw=$!
  pids+=($gw)
  ready=
  for _ in $(seq 1200); do
    if grep -q '"msg":"gridgate ready"' "$dir/log.jsonl"; then ready=yes; break; fi
    kill -0 "$gw" 2>/dev/null || break
    sleep 0.05
  done
  ready_ms=$(( ($(date +%s%N) - start_ns) / 1000000 ))
  if [ -z "$ready" ]; then
    fail "not ready within 60 s"; cat "$dir/log.jsonl" "$dir/stderr.txt" >&2; continue
  fi
  line=$(grep '"msg":"gridgate ready"' "$dir/log.jsonl" | head -1)
  mqtt_port=$(node -p 'String(JSON.parse(process.argv[1]).mqtt).split(":").pop()' "$line")
  admin_port=$(node -p 'String(JSON.parse(process.argv[1]).admin).split(":").pop()' "$line")

  health=$(curl -fsS "http://127.0.0.1:$admin_port/healthz") || fail "/healthz did not answer"
  [ "$health" = '{"status":"ok"}' ] || fail "/healthz answered '$health'"
  ls "$dir/run" | grep -q '^gridgate-addon-' || fail "the addon was not extracted into RUNTIME_DIRECTORY"

  payload="{\"smoke\":\"$arch\",\"t\":$start_ns}"
  # QoS 1: mosquitto_pub exits 0 only after the PUBACK, which gridgate sends after the commit.
  mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -u sensor-1 -P "$TOKEN" -i "smoke-$arch" -q 1 \
    -t devices/sensor-1/temp -m "$payload" || fail "the QoS 1 publish was not acked"
  last_seq=$(curl -fsS "http://127.0.0.1:$admin_port/api/v1/store" | node -p 'JSON.parse(require("fs").readFileSync(0, "utf8")).lastSequence')
  [ "$last_seq" -ge 1 ] 2>/dev/null || fail "the store's last sequence is '$last_seq' after the publish"
  forwarded=
  for _ in $(seq 200); do
    if grep -q "\"t\":$start_ns" "$work/received.txt" 2>/dev/null; then forwarded=yes; break; fi
    sleep 0.05
  done
  [ -n "$forwarded" ] || fail "the event was not forwarded to the HTTP receiver"

  # The embedded malloc_trim addon: the quiet gateway hands freed C heap back after two quiet 5-s
  # looks. Asked every 3 s: under qemu a /metrics scrape alone keeps the event loop above 5 % busy.
  trimmed=
  for _ in $(seq 20); do
    sleep 3
    n=$(curl -fsS "http://127.0.0.1:$admin_port/metrics" | awk '$1 == "gridgate_idle_malloc_trim_total" { print $2 }')
    if [ -n "$n" ] && [ "${n%.*}" -ge 1 ] 2>/dev/null; then trimmed=yes; break; fi
  done
  [ -n "$trimmed" ] || { fail "no malloc trim within 60 s (gridgate_idle_malloc_trim_total '$n')"; grep -i malloc "$dir/log.jsonl" >&2 || true; }

  kill -TERM "$gw"
  set +e; wait "$gw"; rc=$?; set -e
  [ "$rc" = 0 ] || { fail "SIGTERM: exit code $rc"; cat "$dir/stderr.txt" >&2; }
  [ -z "$(ls "$dir/run")" ] || fail "the extracted addon was left in RUNTIME_DIRECTORY after exit"

  echo "[$arch] $exe: $size_mib MiB; start to ready: $ready_ms ms ($label); publish acked, stored (sequence $last_seq), forwarded; /healthz ok; C heap trimmed when quiet"
  summary+=("$(printf '%-28s %8s MiB   ready in %6s ms (%s)' "$exe" "$size_mib" "$ready_ms" "$label")")
done

echo
echo "single executables (Node $NODE_VERSION, better-sqlite3 $SQLITE_VERSION):"
for s in "${summary[@]}"; do echo "  $s"; done
if [ "$failures" -gt 0 ]; then
  echo "smoke-binary: $failures check(s) failed" >&2
  exit 1
fi
echo "smoke-binary: all checks passed"
