#!/usr/bin/env bash
# Brings up a working tunnel on loopback: builds frps and frpc, starts a local web service on
# 127.0.0.1:18080, frps on 127.0.0.1:7000 and frpc from examples/, then fetches the page
# through the tunnel's public port 127.0.0.1:16000. Ctrl-C (or DEMO_SECONDS) stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bins
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

mkdir -p "$work/site"
echo "hello from the local service, through frp-uring" >"$work/site/index.html"
python3 -m http.server 18080 --bind 127.0.0.1 --directory "$work/site" >"$work/web.log" 2>&1 &
pids+=($!)
./target/release/frps -c examples/frps.toml >"$work/frps.log" 2>&1 &
pids+=($!)
sleep 0.5
./target/release/frpc -c examples/frpc.toml >"$work/frpc.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 50); do
  grep -q "start proxy success" "$work/frpc.log" && break
  sleep 0.2
done
echo "--- frps log";  cat "$work/frps.log"
echo "--- frpc log";  cat "$work/frpc.log"
echo "--- GET http://127.0.0.1:16000/ through the tunnel"
curl -fsS --retry 5 --retry-connrefused --retry-delay 1 http://127.0.0.1:16000/
echo "--- tunnel is up: frps 127.0.0.1:7000, public port 127.0.0.1:16000 -> 127.0.0.1:18080"
if [ -n "${DEMO_SECONDS:-}" ]; then sleep "$DEMO_SECONDS"; else
  echo "press Ctrl-C to stop"; wait; fi
