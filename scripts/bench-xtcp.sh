#!/usr/bin/env bash
# The xtcp rows of scripts/bench.sh (also runnable alone): iperf3 through a peer-to-peer xtcp
# tunnel over QUIC and over KCP, next to stcp through frps, in a namespace topology this script
# builds and removes itself:
#
#   site A host 10.201.1.2 ── [NAT A, MASQUERADE] 10.201.0.2 ─┐
#                                                            br0 10.201.0.1 (frps, STUN)  "public"
#   site B host 10.201.2.2 ── [NAT B, MASQUERADE] 10.201.0.3 ─┘   (drops TTL < 10: the internet)
#
# frpc A serves an iperf3 server (127.0.0.1 in site A) as an xtcp and an stcp proxy; frpc B has
# three visitors (xtcp over quic, xtcp over kcp, stcp); iperf3 runs in site B. CPU-s per GB counts
# frps + both frpc. frps' own traffic counters (its dashboard) show what went through it.
#
#   scripts/bench-xtcp.sh FRPS FRPC STUN_SERVER [OUT_MD] [LABEL]
#
# LABEL (default "frp-uring") heads the table, e.g. "real frp v0.70.0" for frp's binaries.
#
# Needs root (network namespaces, iptables); prints one line and exits 0 when it cannot build
# the topology. Knobs: BENCH_SECS (iperf3 seconds, 5). Nothing leaves the namespaces it creates.
set -uo pipefail
FRPS=$1 FRPC=$2 STUN=$3 OUT_MD=${4:-} LABEL=${5:-frp-uring}
SECS=${BENCH_SECS:-5}
log() { printf '[bench-xtcp %s] %s\n' "$(date +%T)" "$*" >&2; }
skip() {
  log "xtcp rows skipped: $*"
  [[ -n $OUT_MD ]] && printf '\nxtcp rows skipped: %s\n' "$*" >>"$OUT_MD"
  exit 0
}
((EUID == 0)) || skip "needs root (network namespaces)"
for t in ip iptables nft iperf3 python3; do
  command -v "$t" >/dev/null || skip "$t not installed"
done

P=fbx$$
PUB=$P-pub
WORK=$(mktemp -d /tmp/frp-bench-xtcp.XXXXXX)
NSS=()
cleanup() {
  local ns
  for ns in "${NSS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill 2>/dev/null
  done
  sleep 0.2
  for ns in "${NSS[@]}"; do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$ns" 2>/dev/null
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

addns() { ip netns add "$1" && NSS+=("$1") && ip -n "$1" link set lo up; }
in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }
build() {
  addns "$PUB" || return 1
  ip -n "$PUB" link add br0 type bridge &&
    ip -n "$PUB" addr add 10.201.0.1/24 dev br0 &&
    ip -n "$PUB" link set br0 up || return 1
  # The internet between the sites: frp's low-TTL punch packets (TTL 7, 4) expire on the way.
  in_ns "$PUB" nft "add table bridge core" &&
    in_ns "$PUB" nft "add chain bridge core forward { type filter hook forward priority 0; }" &&
    in_ns "$PUB" nft "add rule bridge core forward ip ttl < 10 drop" || return 1
  local s
  for s in 1 2; do
    local nat=$P-nat$s host=$P-host$s
    addns "$nat" && addns "$host" || return 1
    ip link add wan netns "$nat" type veth peer name "site$s" netns "$PUB" &&
      ip -n "$PUB" link set "site$s" master br0 && ip -n "$PUB" link set "site$s" up &&
      ip -n "$nat" addr add "10.201.0.$((s + 1))/24" dev wan && ip -n "$nat" link set wan up &&
      ip link add lan netns "$nat" type veth peer name eth0 netns "$host" &&
      ip -n "$nat" addr add "10.201.$s.1/24" dev lan && ip -n "$nat" link set lan up &&
      ip -n "$host" addr add "10.201.$s.2/24" dev eth0 && ip -n "$host" link set eth0 up &&
      ip -n "$host" route add default via "10.201.$s.1" &&
      in_ns "$nat" sysctl -qw net.ipv4.ip_forward=1 &&
      in_ns "$nat" iptables -t nat -A POSTROUTING -o wan -j MASQUERADE || return 1
  done
}
build 2>"$WORK/build.err" || skip "cannot build the namespace topology: $(head -c 200 "$WORK/build.err" | tr '\n' ' ')"

# STUN server in the public namespace: prints its address on its first line.
in_ns "$PUB" "$STUN" 10.201.0.1 >"$WORK/stun.out" 2>&1 &
for _ in $(seq 50); do [[ -s $WORK/stun.out ]] && break; sleep 0.1; done
STUN_ADDR=$(head -1 "$WORK/stun.out")
[[ $STUN_ADDR == 10.201.0.1:* ]] || skip "STUN server did not start: $(head -c 200 "$WORK/stun.out")"

cat >"$WORK/frps.toml" <<EOF
bindAddr = "10.201.0.1"
bindPort = 7000
auth.token = "bench"
webServer.addr = "10.201.0.1"
webServer.port = 7500
EOF
common="serverAddr = \"10.201.0.1\"
serverPort = 7000
auth.token = \"bench\"
natHoleStunServer = \"$STUN_ADDR\"
log.level = \"info\""
cat >"$WORK/frpc-a.toml" <<EOF
$common
[[proxies]]
name = "p2p"
type = "xtcp"
secretKey = "bench"
localIP = "127.0.0.1"
localPort = 5201
[[proxies]]
name = "relay"
type = "stcp"
secretKey = "bench"
localIP = "127.0.0.1"
localPort = 5201
EOF
cat >"$WORK/frpc-b.toml" <<EOF
$common
[[visitors]]
name = "p2p-quic"
type = "xtcp"
serverName = "p2p"
secretKey = "bench"
bindAddr = "127.0.0.1"
bindPort = 6001
protocol = "quic"
keepTunnelOpen = true
[[visitors]]
name = "p2p-kcp"
type = "xtcp"
serverName = "p2p"
secretKey = "bench"
bindAddr = "127.0.0.1"
bindPort = 6002
protocol = "kcp"
keepTunnelOpen = true
[[visitors]]
name = "relay"
type = "stcp"
serverName = "relay"
secretKey = "bench"
bindAddr = "127.0.0.1"
bindPort = 6003
EOF

ip netns exec "$PUB" "$FRPS" -c "$WORK/frps.toml" >"$WORK/frps.log" 2>&1 &
FRPS_PID=$!
sleep 0.5
ip netns exec "$P-host1" "$FRPC" -c "$WORK/frpc-a.toml" >"$WORK/frpc-a.log" 2>&1 &
FRPC_A=$!
in_ns "$P-host1" iperf3 -s -B 127.0.0.1 -p 5201 >"$WORK/iperf-server.log" 2>&1 &
sleep 1
ip netns exec "$P-host2" "$FRPC" -c "$WORK/frpc-b.toml" >"$WORK/frpc-b.log" 2>&1 &
FRPC_B=$!
sleep 3 # keepTunnelOpen: the visitors punch at start

CLK_TCK=$(getconf CLK_TCK)
ticks() { awk '{t += $14 + $15} END {print t}' "/proc/$FRPS_PID/stat" "/proc/$FRPC_A/stat" "/proc/$FRPC_B/stat"; }
frps_bytes() { # total traffic in+out of frps' proxies, from its dashboard API
  in_ns "$PUB" python3 -c '
import json, urllib.request
t = 0
for ty in ("xtcp", "stcp"):
    d = json.load(urllib.request.urlopen("http://10.201.0.1:7500/api/proxy/" + ty, timeout=3))
    for p in d.get("proxies") or []:
        t += (p.get("todayTrafficIn") or 0) + (p.get("todayTrafficOut") or 0)
print(t)' 2>/dev/null || echo ""
}

ROWS=()
run() { # label port
  local label=$1 port=$2 try json="$WORK/iperf-$2.json" c0 c1 b0 b1 out
  for try in 1 2 3; do
    b0=$(frps_bytes)
    c0=$(ticks)
    if in_ns "$P-host2" timeout $((SECS + 20)) iperf3 -c 127.0.0.1 -p "$port" -t "$SECS" -J \
      --connect-timeout 5000 >"$json" 2>"$WORK/iperf-client.err"; then
      c1=$(ticks)
      b1=$(frps_bytes)
      out=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))["end"]["sum_received"]
gb = d["bytes"] / 1e9
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4]) / gb
via = "" if not sys.argv[5] or not sys.argv[6] else f"{(int(sys.argv[6]) - int(sys.argv[5])) / 1e6:,.1f}"
gbps, mb = d["bits_per_second"] / 1e9, d["bytes"] / 1e6
print(f"{gbps:.2f}\t{cpu:.2f}\t{mb:,.0f}\t{via}")' \
        "$json" "$c0" "$c1" "$CLK_TCK" "$b0" "$b1") && {
        ROWS+=("$label	$out")
        log "$label: $out"
        return 0
      }
    fi
    log "$label: iperf3 try $try failed: $(head -c 300 "$json" "$WORK/iperf-client.err" | tr '\n' ' ')"
    sleep 2
  done
  ROWS+=("$label	fail			")
}
run "xtcp (QUIC, peer to peer)" 6001
run "xtcp (KCP, peer to peer)" 6002
run "stcp (through frps)" 6003

table="| $LABEL: iperf3 1 stream, two NATed sites | Gbit/s ↑ | CPU-s per GB ↓ (frps+2 frpc) | MB moved | MB through frps (its counters) |
|---|---|---|---|---|"
for r in "${ROWS[@]}"; do
  IFS=$'\t' read -r a b c d e <<<"$r"
  table+=$'\n'"| $a | $b | $c | $d | ${e:-—} |"
done
printf '%s\n' "$table"
[[ -n $OUT_MD ]] && printf '\n%s\n' "$table" >>"$OUT_MD"
exit 0
