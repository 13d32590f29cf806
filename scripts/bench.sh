#!/usr/bin/env bash
# End-to-end benchmark on 127.0.0.1 with real clients: iperf3, redis-benchmark and a holder of
# idle connections, run through each tunnel setup, printed as ONE table (also written to
# target/bench/results.md).
#
#   scripts/bench.sh                  # engines: auto
#   scripts/bench.sh auto epoll io_uring
#   BENCH_ENGINES="auto epoll" scripts/bench.sh
#
# Columns: direct loopback (no tunnel); frp-uring with tcpMux off, tcpMux on, tcpMux on + TLS,
# once per engine (passed through as `[dataplane] engine = "..."` in frps.toml and frpc.toml);
# rathole (plain TCP transport) as the reference. Each frp-uring figure is followed by its ratio
# to rathole's, or to direct loopback's when rathole cannot be built.
#
# Knobs (environment): BENCH_SECS (iperf3 seconds, 5), BENCH_CONNS (idle connections held, 4000),
# BENCH_LAT_N (requests per redis -c 1 test, 20000; latencies with `--precision 3`: by default
# the p50 comes in 16 µs steps around 50 µs, with it in 8 µs steps, the histogram's lowest unit;
# scripts/bench-ab.py also reports the exact average), BENCH_RPS_N (per -c 64 test, 100000),
# BENCH_CONN_N (requests with -k 0, 5000), BENCH_ROUNDS (1: run every column that many times, in
# the same order, and tabulate each cell's median — for ratios that hold on a noisy machine),
# BENCH_PERF=1 (after the first tcpMux-on column's measurements, one more 1-stream iperf3 run
# under `perf record -g` of frps+frpc, not counted in the table; top symbols go to
# target/bench/perf-top.txt),
# BENCH_SKIP_INSTALL=1 (use what is on PATH), BENCH_BIN=DIR (frps/frpc from DIR, no build: to
# compare two builds, each against its own same-run baselines), BENCH_MODES (frp-uring columns, any of
# "off on tls offtls enc", default "off on tls"; offtls is tcpMux off with TLS, frp's default
# transport without tcpMux; enc is tcpMux and TLS off with every proxy's useEncryption and
# useCompression on), BENCH_TESTS (any of "hold iperf1 iperf8 lat rps conn xtcp", default
# all; for focused runs while iterating — the direct and rathole baselines run the same subset).
# xtcp: a second table from scripts/bench-xtcp.sh (needs root; network namespaces it builds
# and removes): iperf3 1× through an xtcp tunnel between two NATed sites over QUIC and over
# KCP, next to stcp through frps in the same topology and run (and the same for real frp with
# BENCH_FRP).
# BENCH_TRANSPORTS (the other transports to measure with frp's defaults, tcpMux on + TLS:
# "websocket quic kcp"; "" for none; engine: the first one). Transport columns measure iperf3
# (throughput, CPU-s/GB) and redis -c 1 latency only.
#
# BENCH_PLUGINS="socks5" (off by default: about 35 s more per column): in each tcp frp-uring
# column of the first engine, frpc also runs a tcp proxy with the `socks5` client plugin, and
# BENCH_PLUGIN_ROUNDS (3) interleaved pairs of 1-stream iperf3 runs go through the plain tcp proxy
# and through the socks5 plugin (iperf3 under proxychains4, which LD_PRELOADs connect() so
# iperf3's own control and data sockets speak SOCKS5, no extra copy), on the same frps+frpc:
# Gbit/s and CPU-s/GB of both, and socks5 ÷ plain per round (rows "socks5 plugin …" and a
# per-round table). Needs proxychains4 (Debian package, not installed here: skipped with a
# note when missing).
#
# BENCH_FRP=DIR (default $FRP_GO_BIN_DIR; off when neither is set): real frp's frps and frpc from
# DIR (shared/tools/frp-peers builds v0.70.0) get the same three columns as frp-uring (mux off,
# mux on, mux+TLS; no transports, no plugins), and each frp-uring figure is also given as a ratio
# to real frp's figure in the same mode: frp's default (mux+TLS) against ours.
#
# BENCH_PLUGINS="newuserconn" (off by default: about 10 s more per column): in each tcp frp-uring
# column of the first engine, a second frps+frpc pair with the same settings whose frps has a
# server plugin on NewUserConn (`[[httpPlugins]]`, served by a small local keep-alive HTTP server
# that answers {"unchange": true}); BENCH_PLUGIN_ROUNDS interleaved pairs of `redis-benchmark -k 0`
# (a new connection per GET) through the redis proxy of each pair: conn/s with and without the
# plugin, and the ratio (target >= 0.7). The plugin server's connection and request counts are
# logged (keep-alive: far fewer connections than requests).
#
# Nothing leaves 127.0.0.1. Every process started here is killed on exit.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
OUTDIR=$ROOT/target/bench
TOOLS=$OUTDIR/tools
mkdir -p "$OUTDIR" "$TOOLS"

read -r -a ENGINES <<<"${*:-${BENCH_ENGINES:-auto}}"
SECS=${BENCH_SECS:-5}
CONNS=${BENCH_CONNS:-4000}
LAT_N=${BENCH_LAT_N:-20000}
RPS_N=${BENCH_RPS_N:-100000}
CONN_N=${BENCH_CONN_N:-5000}
ROUNDS=${BENCH_ROUNDS:-1}
TOKEN=bench-token-$$
read -r -a MODES <<<"${BENCH_MODES:-off on tls}"
TESTS=" ${BENCH_TESTS:-hold iperf1 iperf8 lat rps conn xtcp} "
want() { [[ $TESTS == *" $1 "* ]]; }
want_mode() { [[ " ${MODES[*]} " == *" $1 "* ]]; }
read -r -a PLUGINS <<<"${BENCH_PLUGINS:-}"
PLUGIN_ROUNDS=${BENCH_PLUGIN_ROUNDS:-3}
GO_DIR=${BENCH_FRP:-${FRP_GO_BIN_DIR:-}}

WORK=$(mktemp -d /tmp/frp-bench.XXXXXX)
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  # Keep the configs and logs of the last run for post-mortems.
  rm -rf "$OUTDIR/last-run" && cp -r "$WORK" "$OUTDIR/last-run" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
# Starts a command in the background, records its pid in PIDS and in the named variable.
start() {
  local var=$1 logf=$2
  shift 2
  "$@" >"$logf" 2>&1 &
  PIDS+=($!)
  printf -v "$var" '%s' "$!"
}
stop() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null; done
  stop_wait "$@"
}
# Waits for processes that end by themselves and forgets them.
stop_wait() {
  local pid
  for pid in "$@"; do wait "$pid" 2>/dev/null; done
  local keep=() p
  for p in "${PIDS[@]}"; do
    [[ " $* " == *" $p "* ]] || keep+=("$p")
  done
  PIDS=("${keep[@]}")
}

# ------------------------------------------------------------------------------ set-up
need_apt=()
command -v iperf3 >/dev/null || need_apt+=(iperf3)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v redis-benchmark >/dev/null || need_apt+=(redis-tools)
command -v python3 >/dev/null || need_apt+=(python3)
if ((${#need_apt[@]})) && [[ -z ${BENCH_SKIP_INSTALL:-} ]]; then
  log "installing ${need_apt[*]} (apt)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"; } \
    >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; log "apt-get failed"; exit 1; }
fi
for tool in iperf3 redis-server redis-benchmark redis-cli python3 ss; do
  command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done

# proxychains4 for BENCH_PLUGINS=socks5: used when present, never installed by this script.
SOCKS5=0
SOCKS5_WHY=""
if [[ " ${PLUGINS[*]} " == *" socks5 "* ]]; then
  if command -v proxychains4 >/dev/null; then
    SOCKS5=1
  else
    SOCKS5_WHY="proxychains4 not installed (apt-get install proxychains4)"
    log "no socks5 plugin rows: $SOCKS5_WHY"
  fi
fi

USERCONN=0
[[ " ${PLUGINS[*]} " == *" newuserconn "* ]] && USERCONN=1

# rathole: cached under target/bench/tools. `--locked` first, as upstream pins it; rathole
# 0.5.0's lock file pins `time` 0.3.29, which no longer builds with current rustc, so retry
# with a fresh resolve and only the features used here (plain TCP).
RATHOLE=$TOOLS/bin/rathole
RATHOLE_WHY=""
if [[ ! -x $RATHOLE ]] && command -v rathole >/dev/null; then RATHOLE=$(command -v rathole); fi
if [[ ! -x $RATHOLE && -z ${BENCH_SKIP_INSTALL:-} ]]; then
  log "building rathole (cargo install, once; cached in $TOOLS)"
  if ! (cd /tmp && cargo install rathole --locked --root "$TOOLS") >"$WORK/rathole.log" 2>&1; then
    log "cargo install rathole --locked failed: $(grep -m1 '^error' "$WORK/rathole.log")"
    log "retrying without --locked, features server,client"
    (cd /tmp && cargo install rathole --root "$TOOLS" --no-default-features \
      --features server,client) >"$WORK/rathole.log" 2>&1 ||
      RATHOLE_WHY="cargo install rathole failed: $(grep -m1 '^error' "$WORK/rathole.log")"
  fi
fi
if [[ ! -x $RATHOLE ]]; then
  RATHOLE_WHY=${RATHOLE_WHY:-"rathole not installed (BENCH_SKIP_INSTALL)"}
  log "no rathole column: $RATHOLE_WHY"
fi

if [[ -n ${BENCH_BIN:-} ]]; then
  log "using the binaries in $BENCH_BIN (BENCH_BIN), not building"
else
  # BENCH_PERF=1 measures the `profiling` profile (the release build with symbols and debug
  # info: the shipped release binaries are stripped, so perf could name no symbol in them).
  BUILT=release
  [[ ${BENCH_PERF:-0} == 1 ]] && BUILT=profiling
  log "building frp-uring ($BUILT profile)"
  cargo build --profile "$BUILT" --bins >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log"; exit 1; }
fi
FRPS=${BENCH_BIN:-$ROOT/target/${BUILT:-release}}/frps
FRPC=${BENCH_BIN:-$ROOT/target/${BUILT:-release}}/frpc

# Room for CONNS idle connections: each one is up to 3 sockets in each tunnel process.
want_fds=$((CONNS * 3 + 1024))
ulimit -Hn "$want_fds" 2>/dev/null || true
ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if (($(ulimit -n) < want_fds)); then
  CONNS=$((($(ulimit -n) - 1024) / 3))
  log "open-file limit $(ulimit -n): holding only $CONNS connections"
fi

CLK_TCK=$(getconf CLK_TCK)
free_port() {
  python3 - <<'EOF'
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
EOF
}
wait_listen() { # port, seconds
  local i
  for ((i = 0; i < $2 * 20; i++)); do
    [[ -n $(ss -Hltn "sport = :$1") ]] && return 0
    sleep 0.05
  done
  return 1
}

# Backend services, shared by every column.
IPERF_PORT=$(free_port)
REDIS_PORT=$(free_port)
start REDIS_PID "$WORK/redis.log" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
  --save '' --appendonly no --protected-mode no --maxclients 20000 --daemonize no
wait_listen "$REDIS_PORT" 5 || { log "redis-server did not start"; cat "$WORK/redis.log"; exit 1; }
redis-cli -p "$REDIS_PORT" set key:__rand_int__ x >/dev/null

cat >"$WORK/hold.py" <<'EOF'
# Serves LOCAL (the service behind the tunnel: one byte per accepted connection), opens N
# connections to PUBLIC (the tunnel's port), waits for each byte, then writes READY and holds
# everything until RELEASE exists.
import asyncio, os, sys
public, local, n, ready, release = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
async def main():
    held = []
    async def serve(r, w):
        w.write(b"x"); await w.drain(); held.append(w)
    server = await asyncio.start_server(serve, "127.0.0.1", local, backlog=4096)
    with open(ready + ".listening", "w"): pass
    while not os.path.exists(ready + ".go"):
        await asyncio.sleep(0.05)
    sem = asyncio.Semaphore(128)
    conns = []
    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", public), 30)
            await asyncio.wait_for(r.readexactly(1), 30)
            conns.append(w)
    results = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    errors = [e for e in results if isinstance(e, BaseException)]
    with open(ready, "w") as f:
        f.write(f"{len(conns)} {len(errors)} {errors[0]!r}\n" if errors else f"{len(conns)} 0\n")
    while not os.path.exists(release):
        await asyncio.sleep(0.05)
    for w in conns + held:
        w.close()
    server.close()
asyncio.run(main())
EOF

# A frps server plugin for BENCH_PLUGINS=newuserconn: HTTP/1.1 with keep-alive, every request
# answered {"unchange": true}; the connection and request counts are written to COUNTS on demand
# (when COUNTS.dump exists).
cat >"$WORK/plugin.py" <<'EOF'
import asyncio, os, sys
port, counts = int(sys.argv[1]), sys.argv[2]
conns = reqs = 0
BODY = b'{"reject":false,"unchange":true}'
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
async def serve(r, w):
    global conns, reqs
    conns += 1
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            n = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":", 1)[1])
            await r.readexactly(n)
            reqs += 1
            w.write(RESP)
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        w.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    while True:
        await asyncio.sleep(0.1)
        if os.path.exists(counts + ".dump"):
            os.unlink(counts + ".dump")
            with open(counts, "w") as f:
                f.write(f"{conns} {reqs}\n")
asyncio.run(main())
EOF

# ------------------------------------------------------------------------------ measurements
RESULTS=$WORK/results.tsv
: >"$RESULTS"
COLUMNS_ORDER=()
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RESULTS"; } # row col value

cpu_ticks() {
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null) || return 1
    total=$((total + t))
  done
  echo "$total"
}
rss_kib() {
  local total=0 pid r
  for pid in "$@"; do
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
    total=$((total + r))
  done
  echo "$total"
}

# One iperf3 run through PUBLIC with P streams, the client under the command prefix in the array
# IPERF_WRAP (empty: none); the iperf3 server is the shared one on 127.0.0.1:IPERF_PORT. Sets
# IPERF_GBPS, IPERF_BYTES, IPERF_CPU (CPU-s per GB of the tunnel pids, "" without pids) and
# IPERF_PEERS (the ports the client's data streams were connected to, from getpeername).
IPERF_WRAP=()
iperf_once() { # label public streams tunnel-pids...
  local label=$1 public=$2 streams=$3
  shift 3
  local pids=("$@") srv c0 c1 json="$WORK/iperf-$streams.json"
  IPERF_GBPS="" IPERF_BYTES="" IPERF_CPU="" IPERF_PEERS=""
  start srv "$WORK/iperf-server.log" iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_PORT"
  wait_listen "$IPERF_PORT" 5 || { stop "$srv"; return 1; }
  c0=$(cpu_ticks "${pids[@]}")
  timeout $((SECS + 20)) "${IPERF_WRAP[@]}" iperf3 -c 127.0.0.1 -p "$public" -t "$SECS" \
    -P "$streams" -J --connect-timeout 5000 >"$json" 2>"$WORK/iperf-client.err"
  local rc=$?
  c1=$(cpu_ticks "${pids[@]}")
  stop "$srv"
  ((rc == 0)) || { log "$label: iperf3 -P $streams failed: $(head -c 300 "$json" "$WORK/iperf-client.err" | tr '\n' ' ')"; return 1; }
  local out
  out=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))
if "error" in j:
    sys.exit("iperf3: " + j["error"])
d = j["end"]["sum_received"]
peers = sorted({c["remote_port"] for c in j["start"]["connected"]})
print(d["bits_per_second"] / 1e9, d["bytes"], ",".join(map(str, peers)))' "$json" 2>&1) ||
    { log "$label: iperf3 -P $streams failed: $out"; return 1; }
  read -r IPERF_GBPS IPERF_BYTES IPERF_PEERS <<<"$out"
  if ((${#pids[@]})) && [[ -n $c0 && -n $c1 ]]; then
    IPERF_CPU=$(python3 -c "print(($c1 - $c0) / $CLK_TCK / ($IPERF_BYTES / 1e9))")
  fi
}

# iperf3 through PUBLIC with P streams; records Gbit/s and CPU-s/GB of the tunnel pids.
run_iperf() {
  local col=$1 public=$2 streams=$3
  shift 3
  if ! iperf_once "$col" "$public" "$streams" "$@"; then
    record "iperf3 ${streams}× stream, Gbit/s ↑" "$col" fail
    return 1
  fi
  record "iperf3 ${streams}× stream, Gbit/s ↑" "$col" "$IPERF_GBPS"
  [[ -n $IPERF_CPU ]] && record "CPU-s per GB, iperf3 ${streams}× ↓" "$col" "$IPERF_CPU"
  return 0
}

# An extra 1-stream iperf3 run under `perf record --call-graph dwarf` of the tunnel pids (not in
# the table: perf itself costs CPU). Top symbols per process go to target/bench/perf-top.txt;
# `perf report -i target/bench/perf.data` has the call graphs.
profile_iperf() {
  local col=$1 public=$2
  shift 2
  command -v perf >/dev/null || { log "perf not installed (apt-get install linux-perf)"; return 1; }
  local pid_list srv prec pid procs=()
  pid_list=$(IFS=,; echo "$*")
  for pid in "$@"; do
    procs+=("$(cat "/proc/$pid/comm")=$(cd "/proc/$pid/task" && printf '%s\n' * | paste -sd,)")
  done
  start srv "$WORK/iperf-server.log" iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_PORT"
  wait_listen "$IPERF_PORT" 5 || { stop "$srv"; return 1; }
  start prec "$WORK/perf.log" perf record -F 499 --call-graph dwarf,16384 -p "$pid_list" \
    -o "$OUTDIR/perf.data" -- sleep "$SECS"
  timeout $((SECS + 20)) iperf3 -c 127.0.0.1 -p "$public" -t "$SECS" --connect-timeout 5000 \
    >"$WORK/iperf-perf.txt" 2>&1
  stop_wait "$prec"
  stop "$srv"
  {
    echo "perf: $col, iperf3 1 stream, $(grep receiver "$WORK/iperf-perf.txt" | tr -s ' ')"
    perf report -i "$OUTDIR/perf.data" --no-children -g none --sort pid,dso,symbol --stdio \
      2>/dev/null | python3 -c '
import collections, re, sys
procs = {}
for arg in sys.argv[1:]:
    name, tids = arg.split("=")
    procs.update({t: name for t in tids.split(",")})
tot, per = collections.Counter(), collections.defaultdict(collections.Counter)
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\d+):\S+\s+(\S+)\s+\[.\]\s+(.*?)[\s-]*$", line)
    if m:
        name = procs.get(m[2], "other")
        tot[name] += float(m[1])
        per[name][f"{m[4]}  ({m[3]})"] += float(m[1])
for name in sorted(per):
    print(f"== {name}: {tot[name]:.1f}% of all samples")
    for sym, pct in per[name].most_common(15):
        print(f"  {pct:5.1f}%  {sym}")' "${procs[@]}"
  } >"$OUTDIR/perf-top.txt"
  log "perf profile of $col: $OUTDIR/perf.data; top symbols: $OUTDIR/perf-top.txt"
}

# redis-benchmark through PUBLIC: -c 1 latency, -c 64 throughput, -k 0 connection rate. A test
# that fails or stalls (30 s) is marked "fail" and the next one still runs.
redis_bench() { # col what args...
  local col=$1 what=$2
  shift 2
  timeout 30 redis-benchmark -h 127.0.0.1 "$@" --csv 2>"$WORK/redis-bench.err" && return 0
  log "$col: redis-benchmark $what failed (rc $?): $(tail -c 200 "$WORK/redis-bench.err")"
  return 1
}
run_redis() {
  local col=$1 public=$2 csv test rps p50 p99
  if ! want lat; then :
  elif csv=$(redis_bench "$col" "-c 1" -p "$public" -t set,get -n "${LAT_N_COL:-$LAT_N}" -c 1 \
    -r 1000 --precision 3); then
    while IFS=, read -r test rps _ _ p50 _ p99 _; do
      test=${test//\"/}
      [[ $test == SET || $test == GET ]] || continue
      record "redis -c 1 $test p50, µs ↓" "$col" "$(python3 -c "print(${p50//\"/} * 1000)")"
      record "redis -c 1 $test p99, µs ↓" "$col" "$(python3 -c "print(${p99//\"/} * 1000)")"
    done <<<"$csv"
  else
    record "redis -c 1 GET p50, µs ↓" "$col" fail
  fi
  [[ ${RUN_REDIS_LIGHT:-0} == 1 ]] && return 0
  if ! want rps; then :
  elif csv=$(redis_bench "$col" "-c 64" -p "$public" -t set,get -n "$RPS_N" -c 64 -r 1000); then
    while IFS=, read -r test rps _; do
      test=${test//\"/}
      [[ $test == SET || $test == GET ]] || continue
      record "redis -c 64 $test, req/s ↑" "$col" "${rps//\"/}"
    done <<<"$csv"
  else
    record "redis -c 64 GET, req/s ↑" "$col" fail
  fi
  if ! want conn; then :
  elif csv=$(redis_bench "$col" "-k 0" -p "$public" -t get -n "$CONN_N" -c 16 -k 0); then
    while IFS=, read -r test rps _; do
      [[ ${test//\"/} == GET ]] && record "redis -k 0 (new conn per GET), conn/s ↑" "$col" "${rps//\"/}"
    done <<<"$csv"
  else
    record "redis -k 0 (new conn per GET), conn/s ↑" "$col" fail
  fi
  return 0
}

# CONNS idle connections through PUBLIC to the holder's LOCAL: RSS of the tunnel pids per conn.
run_hold() {
  local col=$1 public=$2 local_port=$3
  shift 3
  local pids=("$@") holder r0 r1 ready="$WORK/hold.ready" i
  rm -f "$ready"* "$WORK/hold.release"
  start holder "$WORK/hold.log" python3 "$WORK/hold.py" "$public" "$local_port" "$CONNS" \
    "$ready" "$WORK/hold.release"
  for ((i = 0; i < 100; i++)); do [[ -e $ready.listening ]] && break; sleep 0.05; done
  sleep 0.5
  r0=$(rss_kib "${pids[@]}")
  record "RSS idle tunnel, MiB ↓" "$col" "$(python3 -c "print($r0 / 1024)")"
  : >"$ready.go"
  for ((i = 0; i < 1200; i++)); do [[ -s $ready ]] && break; sleep 0.05; done
  sleep 1
  r1=$(rss_kib "${pids[@]}")
  : >"$WORK/hold.release"
  local opened
  read -r opened _ <"$ready" 2>/dev/null || opened=0
  log "$col: held $opened/$CONNS connections ($(cat "$ready" 2>/dev/null))"
  stop "$holder"
  local per="fail"
  ((opened > 0)) && per=$(python3 -c "print(($r1 - $r0) / $opened)")
  ((opened == CONNS)) || per="$per ($opened/$CONNS held)"
  record "RSS per idle conn (${CONNS} held), KiB ↓" "$col" "$per"
  sleep 0.5
}

# BENCH_PLUGINS=socks5: PLUGIN_ROUNDS pairs of 1-stream iperf3 runs on this column's frps+frpc,
# plain tcp proxy (IPERF_PUBLIC) and socks5 plugin proxy (SOCKS_PUBLIC, iperf3 -c the iperf3
# server's own 127.0.0.1:IPERF_PORT under proxychains4), in alternating order (plain first in odd
# rounds) so drift on a noisy machine hits both alike. One row per run goes to ROUNDS_TSV. Each
# socks5 run checks that iperf3's data stream was connected to SOCKS_PUBLIC (getpeername in the
# JSON), and the first one that iperf3's control and data sockets are both connected to
# SOCKS_PUBLIC and none goes to IPERF_PORT directly (ss, in the middle of the run).
ROUNDS_TSV=$WORK/socks5-rounds.tsv
: >"$ROUNDS_TSV"
socks5_rounds() { # col tunnel-pids...
  local col=$1
  shift
  local conf=$WORK/proxychains-$SOCKS_PUBLIC.conf r kind order chk via direct checked=0
  # strict_chain through the one SOCKS5 server, no proxy_dns (iperf3 is given an address), no
  # localnet exceptions: every connect() of iperf3 goes through frps' socks5 proxy port.
  printf '%s\n' strict_chain quiet_mode "tcp_read_time_out 15000" "tcp_connect_time_out 8000" \
    "" "[ProxyList]" "socks5 127.0.0.1 $SOCKS_PUBLIC" >"$conf"
  for ((r = 1; r <= PLUGIN_ROUNDS; r++)); do
    order=(plain socks5)
    ((r % 2 == 0)) && order=(socks5 plain)
    for kind in "${order[@]}"; do
      if [[ $kind == plain ]]; then
        IPERF_WRAP=()
        iperf_once "$col plain" "$IPERF_PUBLIC" 1 "$@" || { record_round "$col" "$r" plain fail; continue; }
        record_round "$col" "$r" plain "$IPERF_GBPS" "$IPERF_CPU"
        continue
      fi
      IPERF_WRAP=(proxychains4 -q -f "$conf")
      if ((!checked)); then
        start chk "$WORK/socks5-ss.txt" sh -c "sleep $(((SECS + 1) / 2)); ss -Htnp state established \
          '( dport = :$SOCKS_PUBLIC or dport = :$IPERF_PORT )'"
      fi
      iperf_once "$col socks5" "$IPERF_PORT" 1 "$@"
      local ok=$?
      IPERF_WRAP=()
      if ((!checked)); then
        stop_wait "$chk"
        checked=1
        via=$(grep -c ":$SOCKS_PUBLIC .*\"iperf3\"" "$WORK/socks5-ss.txt")
        direct=$(grep -c ":$IPERF_PORT .*\"iperf3\"" "$WORK/socks5-ss.txt")
        if ((via == 2 && direct == 0)); then
          log "$col: socks5: iperf3's control and data connections both go through the socks5 proxy"
        else
          log "$col: socks5: iperf3 sockets via socks5 $via, direct $direct (want 2 and 0): $(tr '\n' ' ' <"$WORK/socks5-ss.txt")"
          SOCKS5_WHY="$col: iperf3 sockets via the socks5 proxy $via, direct $direct (want 2 and 0)"
        fi
      fi
      if ((ok != 0)); then
        record_round "$col" "$r" socks5 fail
      elif [[ $IPERF_PEERS != "$SOCKS_PUBLIC" ]]; then
        log "$col: socks5: iperf3's data stream connected to port $IPERF_PEERS, not the socks5 proxy's $SOCKS_PUBLIC"
        record_round "$col" "$r" socks5 "not-proxied"
      else
        record_round "$col" "$r" socks5 "$IPERF_GBPS" "$IPERF_CPU"
      fi
    done
  done
}
record_round() { # col round kind Gbit/s [CPU-s/GB]; rounds numbered across BENCH_ROUNDS
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$(((${ROUND:-1} - 1) * PLUGIN_ROUNDS + $2))" "$3" "$4" "${5:-}" \
    >>"$ROUNDS_TSV"
}

# Waits until PUBLIC reaches redis end to end.
wait_tunnel() {
  local i
  for ((i = 0; i < 150; i++)); do
    [[ $(timeout 2 redis-cli -p "$1" ping 2>/dev/null) == PONG ]] && return 0
    sleep 0.1
  done
  return 1
}

measure_column() { # col perf tunnel-pids...   (perf: 1 = also profile, light = iperf3 + -c 1)
  local col=$1 perf=$2
  shift 2
  COLUMNS_ORDER+=("$col")
  if [[ $perf == light ]]; then
    want iperf1 && run_iperf "$col" "$IPERF_PUBLIC" 1 "$@"
    want iperf8 && run_iperf "$col" "$IPERF_PUBLIC" 8 "$@"
    RUN_REDIS_LIGHT=1 run_redis "$col" "$REDIS_PUBLIC"
    return 0
  fi
  want hold && run_hold "$col" "$HOLD_PUBLIC" "$HOLD_LOCAL" "$@"
  want iperf1 && run_iperf "$col" "$IPERF_PUBLIC" 1 "$@"
  want iperf8 && run_iperf "$col" "$IPERF_PUBLIC" 8 "$@"
  run_redis "$col" "$REDIS_PUBLIC"
  [[ $perf == 1 ]] && profile_iperf "$col" "$IPERF_PUBLIC" "$@"
  return 0
}

new_ports() {
  BIND_PORT=$(free_port)
  IPERF_PUBLIC=$(free_port)
  REDIS_PUBLIC=$(free_port)
  HOLD_PUBLIC=$(free_port)
  HOLD_LOCAL=$(free_port)
  SOCKS_PUBLIC=$(free_port)
}

# ---- direct loopback: the clients talk to the services themselves.
direct_column() {
  log "column: direct loopback"
  COLUMNS_ORDER+=("direct")
  HOLD_LOCAL=$(free_port)
  want iperf1 && run_iperf direct "$IPERF_PORT" 1
  want iperf8 && run_iperf direct "$IPERF_PORT" 8
  run_redis direct "$REDIS_PORT"
}

# ---- frp-uring
frp_column() { # name mux tls engine perf [protocol]
  local col=$1 mux=$2 tls=$3 engine=$4 perf=$5 proto=${6:-tcp} frps frpc socks5=0 userconn=0
  local bin_s=$FRPS bin_c=$FRPC dataplane="[dataplane]"$'\n'"engine = \"$engine\""
  [[ $SOCKS5 == 1 && $proto == tcp && $engine == "${ENGINES[0]}" && -z ${GO:-} ]] && socks5=1
  [[ $USERCONN == 1 && $proto == tcp && $engine == "${ENGINES[0]}" && -z ${GO:-} ]] && userconn=1
  # Real frp (GO=1): its binaries, and no [dataplane] table (frp's strict config refuses it).
  [[ -n ${GO:-} ]] && bin_s=$GO_DIR/frps bin_c=$GO_DIR/frpc dataplane=""
  new_ports
  # QUIC and KCP: frpc's serverPort is frps' UDP quicBindPort / kcpBindPort.
  local server_port=$BIND_PORT udp_line=""
  case $proto in
    quic | kcp)
      server_port=$(free_port)
      udp_line="${proto}BindPort = $server_port"
      ;;
  esac
  local dir=$WORK/$col
  dir=${dir// /_}
  mkdir -p "$dir"
  cat >"$dir/frps.toml" <<EOF
bindAddr = "127.0.0.1"
bindPort = $BIND_PORT
proxyBindAddr = "127.0.0.1"
$udp_line
auth.token = "$TOKEN"
transport.tcpMux = $mux
log.level = "warn"

$dataplane
EOF
  cat >"$dir/frpc.toml" <<EOF
serverAddr = "127.0.0.1"
serverPort = $server_port
auth.token = "$TOKEN"
transport.protocol = "$proto"
transport.tcpMux = $mux
transport.tls.enable = $tls
log.level = "warn"

$dataplane

[[proxies]]
name = "iperf"
type = "tcp"
localIP = "127.0.0.1"
localPort = $IPERF_PORT
remotePort = $IPERF_PUBLIC

[[proxies]]
name = "redis"
type = "tcp"
localIP = "127.0.0.1"
localPort = $REDIS_PORT
remotePort = $REDIS_PUBLIC

[[proxies]]
name = "hold"
type = "tcp"
localIP = "127.0.0.1"
localPort = $HOLD_LOCAL
remotePort = $HOLD_PUBLIC
EOF
  ((socks5)) && cat >>"$dir/frpc.toml" <<EOF

[[proxies]]
name = "socks5"
type = "tcp"
remotePort = $SOCKS_PUBLIC

[proxies.plugin]
type = "socks5"
EOF
  # ENC=1: each proxy encrypts and compresses its work connections (frp's per-proxy transport).
  [[ -n ${ENC:-} ]] && sed -i '/^remotePort = /a transport.useEncryption = true\ntransport.useCompression = true' \
    "$dir/frpc.toml"
  log "column: $col (protocol=$proto tcpMux=$mux tls=$tls enc=${ENC:-0} engine=$engine)"
  start frps "$dir/frps.log" "$bin_s" -c "$dir/frps.toml"
  wait_listen "$BIND_PORT" 5 || { log "$col: frps did not start: $(tail -3 "$dir/frps.log")"; }
  start frpc "$dir/frpc.log" "$bin_c" -c "$dir/frpc.toml"
  if wait_tunnel "$REDIS_PUBLIC"; then
    measure_column "$col" "$perf" "$frps" "$frpc"
    if ((socks5)); then
      if wait_listen "$SOCKS_PUBLIC" 5; then
        log "$col: $PLUGIN_ROUNDS rounds of iperf3 1×, plain tcp proxy vs socks5 plugin"
        socks5_rounds "$col" "$frps" "$frpc"
      else
        log "$col: the socks5 plugin proxy did not come up; frpc: $(tail -3 "$dir/frpc.log")"
        record_round "$col" 1 socks5 fail
      fi
    fi
    ((userconn)) && userconn_rounds "$col" "$dir"
  else
    log "$col: tunnel did not come up; frps: $(tail -3 "$dir/frps.log"); frpc: $(tail -3 "$dir/frpc.log")"
    COLUMNS_ORDER+=("$col")
  fi
  stop "$frpc" "$frps"
}

# BENCH_PLUGINS=newuserconn: a second frps+frpc pair made from this column's configs, its frps
# with a NewUserConn server plugin; PLUGIN_ROUNDS interleaved `redis-benchmark -k 0` runs through
# the redis proxy of the column's pair (no plugin) and of this one. Records the medians and the
# median (min–max) of the per-round ratios.
userconn_rounds() { # col dir
  local col=$1 dir=$2 pdir=$2/userconn plug_port bind2 redis2 pfrps pfrpc psrv r kind order csv rps
  mkdir -p "$pdir"
  plug_port=$(free_port) bind2=$(free_port) redis2=$(free_port)
  start psrv "$pdir/plugin.log" python3 "$WORK/plugin.py" "$plug_port" "$pdir/counts"
  wait_listen "$plug_port" 5 || { log "$col: plugin server did not start"; stop "$psrv"; return 1; }
  sed "s/^bindPort = .*/bindPort = $bind2/" "$dir/frps.toml" >"$pdir/frps.toml"
  cat >>"$pdir/frps.toml" <<EOF

[[httpPlugins]]
name = "userconn"
addr = "127.0.0.1:$plug_port"
path = "/handler"
ops = ["NewUserConn"]
EOF
  # The same proxies; redis on its own public port, the others on any free one.
  sed -e "s/^serverPort = .*/serverPort = $bind2/" -e "s/^remotePort = $REDIS_PUBLIC\$/remotePort = $redis2/" \
    -e "/^remotePort = $redis2\$/!s/^remotePort = .*/remotePort = 0/" "$dir/frpc.toml" >"$pdir/frpc.toml"
  start pfrps "$pdir/frps.log" "$FRPS" -c "$pdir/frps.toml"
  wait_listen "$bind2" 5 || log "$col: plugin frps did not start: $(tail -3 "$pdir/frps.log")"
  start pfrpc "$pdir/frpc.log" "$FRPC" -c "$pdir/frpc.toml"
  if ! wait_tunnel "$redis2"; then
    log "$col: NewUserConn plugin tunnel did not come up: $(tail -3 "$pdir/frps.log" "$pdir/frpc.log" | tr '\n' ' ')"
    stop "$pfrpc" "$pfrps" "$psrv"
    return 1
  fi
  log "$col: $PLUGIN_ROUNDS rounds of redis -k 0, no plugin vs NewUserConn plugin"
  local plain=() plugged=()
  for ((r = 1; r <= PLUGIN_ROUNDS; r++)); do
    order=(plain plugin)
    ((r % 2 == 0)) && order=(plugin plain)
    for kind in "${order[@]}"; do
      local port=$REDIS_PUBLIC
      [[ $kind == plugin ]] && port=$redis2
      rps=""
      if csv=$(redis_bench "$col $kind" "-k 0" -p "$port" -t get -n "$CONN_N" -c 16 -k 0); then
        rps=$(awk -F, '$1 == "\"GET\"" {gsub(/"/, "", $2); print $2}' <<<"$csv")
      fi
      if [[ $kind == plain ]]; then plain+=("${rps:-fail}"); else plugged+=("${rps:-fail}"); fi
    done
  done
  : >"$pdir/counts.dump"
  sleep 0.3
  log "$col: plugin server: $(awk '{print $1 " connections, " $2 " requests"}' "$pdir/counts" 2>/dev/null)"
  log "$col: redis -k 0 conn/s, no plugin: ${plain[*]}; NewUserConn plugin: ${plugged[*]}"
  local out p q ratio
  out=$(python3 -c '
import statistics, sys
n = (len(sys.argv) - 1) // 2
a, b = sys.argv[1:n + 1], sys.argv[n + 1:]
pairs = [(float(x), float(y)) for x, y in zip(a, b) if x != "fail" and y != "fail"]
if not pairs:
    print("fail fail fail")
    sys.exit()
r = [y / x for x, y in pairs]
print(statistics.median(x for x, _ in pairs), statistics.median(y for _, y in pairs),
      f"{statistics.median(r):.2f}_({min(r):.2f}–{max(r):.2f})")' "${plain[@]}" "${plugged[@]}")
  read -r p q ratio <<<"$out"
  record "no server plugin (same rounds): redis -k 0, conn/s ↑" "$col" "$p"
  record "NewUserConn server plugin: redis -k 0, conn/s ↑" "$col" "$q"
  record "NewUserConn plugin ÷ none, conn/s (median of rounds; target ≥ 0.7)" "$col" "${ratio//_/ }"
  stop "$pfrpc" "$pfrps" "$psrv"
}


perf_once=${BENCH_PERF:-0}
ours_columns() {
  for engine in "${ENGINES[@]}"; do
    suffix=""
    ((${#ENGINES[@]} > 1)) && suffix=" [$engine]"
    want_mode off && frp_column "frp-uring mux off$suffix" false false "$engine" 0
    if want_mode on; then
      frp_column "frp-uring mux on$suffix" true false "$engine" "$perf_once"
      perf_once=0
    fi
    want_mode tls && frp_column "frp-uring mux+TLS$suffix" true true "$engine" 0
    want_mode offtls && frp_column "frp-uring mux off+TLS$suffix" false true "$engine" 0
    want_mode enc && ENC=1 frp_column "frp-uring mux off+enc$suffix" false false "$engine" 0
  done
  read -r -a TRANSPORTS <<<"${BENCH_TRANSPORTS-websocket quic kcp}"
  for proto in "${TRANSPORTS[@]}"; do
    # KCP as frp configures it (write delay, 20 ms interval) takes tens of ms per request, as
    # frp's own does: fewer -c 1 requests keep that test inside its 30 s limit.
    LAT_N_COL=$([[ $proto == kcp ]] && echo 200) frp_column "frp-uring $proto" true true \
      "${ENGINES[0]}" light "$proto"
  done
}

# ---- real frp, same three modes
GO_VERSION=""
go_columns() {
  if [[ -n $GO_DIR ]]; then
    if [[ -x $GO_DIR/frps && -x $GO_DIR/frpc ]]; then
      GO_VERSION=$("$GO_DIR/frps" -v 2>/dev/null)
      want_mode off && GO=1 frp_column "frp $GO_VERSION mux off" false false go 0
      want_mode on && GO=1 frp_column "frp $GO_VERSION mux on" true false go 0
      want_mode tls && GO=1 frp_column "frp $GO_VERSION mux+TLS" true true go 0
      want_mode offtls && GO=1 frp_column "frp $GO_VERSION mux off+TLS" false true go 0
      want_mode enc && GO=1 ENC=1 frp_column "frp $GO_VERSION mux off+enc" false false go 0
    else
      log "no real frp columns: $GO_DIR/frps or $GO_DIR/frpc is missing"
    fi
  fi
}

# ---- rathole
rathole_column() {
  if [[ -x $RATHOLE ]]; then
    new_ports
    dir=$WORK/rathole
    mkdir -p "$dir"
    {
      printf '[server]\nbind_addr = "127.0.0.1:%s"\n' "$BIND_PORT"
      for svc in iperf:$IPERF_PUBLIC redis:$REDIS_PUBLIC hold:$HOLD_PUBLIC; do
        printf '\n[server.services.%s]\ntoken = "%s"\nbind_addr = "127.0.0.1:%s"\n' \
          "${svc%%:*}" "$TOKEN" "${svc#*:}"
      done
    } >"$dir/server.toml"
    {
      printf '[client]\nremote_addr = "127.0.0.1:%s"\n' "$BIND_PORT"
      for svc in iperf:$IPERF_PORT redis:$REDIS_PORT hold:$HOLD_LOCAL; do
        printf '\n[client.services.%s]\ntoken = "%s"\nlocal_addr = "127.0.0.1:%s"\n' \
          "${svc%%:*}" "$TOKEN" "${svc#*:}"
      done
    } >"$dir/client.toml"
    log "column: rathole ($("$RATHOLE" --version 2>/dev/null | grep -m1 "Build Version" | tr -s " "))"
    rs="" rc=""
    start rs "$dir/server.log" env RUST_LOG=warn "$RATHOLE" -s "$dir/server.toml"
    wait_listen "$BIND_PORT" 5
    start rc "$dir/client.log" env RUST_LOG=warn "$RATHOLE" -c "$dir/client.toml"
    if wait_tunnel "$REDIS_PUBLIC"; then
      measure_column rathole 0 "$rs" "$rc"
    else
      RATHOLE_WHY="rathole tunnel did not come up: $(tail -3 "$dir/server.log" "$dir/client.log" | tr '\n' ' ')"
      log "$RATHOLE_WHY"
    fi
    stop "$rc" "$rs"
  fi
}

# BENCH_ROUNDS: the whole set of columns again, in the same order; the table shows medians.
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  ((ROUNDS > 1)) && log "round $ROUND of $ROUNDS"
  direct_column
  ours_columns
  go_columns
  rathole_column
done
REF=rathole
grep -q $'\trathole\t' "$RESULTS" || REF=direct

# ------------------------------------------------------------------------------ the table
GO_VERSION=$GO_VERSION ROUNDS_TSV=$ROUNDS_TSV SOCKS5=$SOCKS5 SOCKS5_WHY=$SOCKS5_WHY PLUGIN_ROUNDS=$PLUGIN_ROUNDS SECS=$SECS \
  python3 - "$RESULTS" "$REF" "$OUTDIR/results.md" "$RATHOLE_WHY" "${COLUMNS_ORDER[@]}" <<'EOF'
import os, statistics, sys
results, ref, out_md, why, *cols = sys.argv[1:]
cols = list(dict.fromkeys(cols))  # BENCH_ROUNDS repeats every column
rows, seen = [], {}
for line in open(results, encoding="utf-8"):
    row, col, val = line.rstrip("\n").split("\t")
    if row not in rows:
        rows.append(row)
    seen.setdefault((row, col), []).append(val)

def median_of(vs):
    """The median of a cell's rounds (one round: its value); failed rounds are left out."""
    xs = []
    for v in vs:
        try:
            xs.append(float(v))
        except ValueError:
            pass
    return str(statistics.median(xs)) if xs else vs[-1]

vals = {k: median_of(vs) for k, vs in seen.items()}
rounds_n = max((len(vs) for vs in seen.values()), default=1)

# BENCH_PLUGINS=socks5: runs (col, round, kind, Gbit/s, CPU-s/GB), plain tcp proxy vs socks5.
S_G, S_C = "socks5 plugin: iperf3 1×, Gbit/s ↑", "socks5 plugin: CPU-s per GB, iperf3 1× ↓"
P_G, P_C = "plain tcp proxy: iperf3 1×, Gbit/s ↑", "plain tcp proxy: CPU-s per GB, iperf3 1× ↓"
R_G = "socks5 ÷ plain, Gbit/s (median of rounds; target ≥ 0.9)"
R_C = "socks5 ÷ plain, CPU-s/GB (median of rounds; target ≤ 1.1)"
runs = {}
for line in open(os.environ["ROUNDS_TSV"], encoding="utf-8"):
    col, rnd, kind, gbps, cpu = line.rstrip("\n").split("\t")
    runs.setdefault(col, {}).setdefault(int(rnd), {})[kind] = (gbps, cpu)
round_lines = []
if runs:
    round_lines = [
        "", f"socks5 plugin rounds (iperf3 1×, {os.environ['SECS']} s each; odd rounds plain first):", "",
        "| column | round | plain Gbit/s | socks5 Gbit/s | ratio | plain CPU-s/GB | socks5 CPU-s/GB | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
for col, by_round in runs.items():
    series = {P_G: [], S_G: [], P_C: [], S_C: [], R_G: [], R_C: []}
    for rnd in sorted(by_round):
        (pg, pc), (sg, sc) = (by_round[rnd].get(k, ("fail", "")) for k in ("plain", "socks5"))
        cells = [col, str(rnd), pg, sg, "—", pc or "—", sc or "—", "—"]
        try:
            pg, sg = float(pg), float(sg)
            series[P_G].append(pg); series[S_G].append(sg); series[R_G].append(sg / pg)
            cells[2:5] = [f"{pg:.2f}", f"{sg:.2f}", f"{sg / pg:.3f}"]
            pc, sc = float(pc), float(sc)
            series[P_C].append(pc); series[S_C].append(sc); series[R_C].append(sc / pc)
            cells[5:8] = [f"{pc:.3f}", f"{sc:.3f}", f"{sc / pc:.3f}"]
        except ValueError:
            pass
        round_lines.append("| " + " | ".join(cells) + " |")
    for row, xs in series.items():
        if row not in rows:
            rows.append(row)
        if not xs:
            vals[(row, col)] = "fail"
        elif row in (R_G, R_C):
            vals[(row, col)] = f"{statistics.median(xs):.2f} ({min(xs):.2f}–{max(xs):.2f})"
        else:
            vals[(row, col)] = str(statistics.median(xs))
order = [
    "iperf3 1× stream, Gbit/s ↑", "iperf3 8× stream, Gbit/s ↑",
    "CPU-s per GB, iperf3 1× ↓", "CPU-s per GB, iperf3 8× ↓",
    "redis -c 1 GET p50, µs ↓", "redis -c 1 GET p99, µs ↓",
    "redis -c 1 SET p50, µs ↓", "redis -c 1 SET p99, µs ↓",
    "redis -c 64 GET, req/s ↑", "redis -c 64 SET, req/s ↑",
    "redis -k 0 (new conn per GET), conn/s ↑",
    P_G, S_G, R_G, P_C, S_C, R_C,
]
rows = [r for r in order if r in rows] + sorted(
    (r for r in rows if r not in order), key=lambda r: (not r.startswith("RSS idle"), r))

def num(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None

def fmt(x):
    a = abs(x)
    if a >= 1000: return f"{x:,.0f}"
    if a >= 100: return f"{x:.0f}"
    if a >= 10: return f"{x:.1f}"
    if a >= 1: return f"{x:.2f}"
    return f"{x:.3f}"

go = os.environ.get("GO_VERSION", "")

def go_twin(col):
    """Real frp's column in the same mode as this frp-uring column (engine suffix dropped)."""
    for mode in ("mux off+TLS", "mux off+enc", "mux off", "mux on", "mux+TLS"):
        if col.startswith(f"frp-uring {mode}"):
            return f"frp {go} {mode}"
    return None

head = ["figure"] + cols
lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
for row in rows:
    cells = [row]
    refv = num(vals.get((row, ref)))
    for col in cols:
        raw = vals.get((row, col))
        v = num(raw)
        if raw is None:
            cells.append("—")
        elif v is None:
            cells.append(raw)
        elif col.startswith("frp-uring") and refv:
            cell = f"{fmt(v)} ({v / refv:.2f}×"
            gov = num(vals.get((row, go_twin(col))))
            cells.append(cell + (f", {v / gov:.2f}× frp)" if gov else ")"))
        else:
            cells.append(fmt(v))
    lines.append("| " + " | ".join(cells) + " |")
notes = [
    "",
    f"Ratios: frp-uring ÷ {ref} (same run)"
    + (f"; then ÷ real frp {go} in the same mode (×frp)" if go else "")
    + ". ↑ higher is better, ↓ lower is better.",
    "CPU-s per GB: utime+stime of both tunnel processes over the run ÷ bytes iperf3 received.",
    "RSS: VmRSS of both tunnel processes; per idle conn = (held − idle) ÷ connections held.",
]
if rounds_n > 1:
    notes.append(f"Each cell is the median of {rounds_n} rounds (BENCH_ROUNDS: every column "
                 "again, in the same order); ratios are of the medians.")
if why:
    notes.append(f"No rathole column: {why}")
if runs:
    notes.append(
        f"socks5 plugin rows: {os.environ['PLUGIN_ROUNDS']} interleaved rounds of iperf3 1× through "
        "the plain tcp proxy and through frpc's socks5 plugin (iperf3 under proxychains4) on the "
        "same frps+frpc; medians, and the median (min–max) of the rounds' socks5 ÷ plain ratios.")
if os.environ["SOCKS5_WHY"]:
    notes.append(f"socks5 plugin: {os.environ['SOCKS5_WHY']}")
table = "\n".join(lines + notes + round_lines) + "\n"
print(table)
with open(out_md, "w", encoding="utf-8") as f:
    f.write("# scripts/bench.sh results\n\n" + table)
EOF
log "table written to $OUTDIR/results.md"

if want xtcp; then
  STUN_BIN=${BENCH_BIN:-$ROOT/target/${BUILT:-release}}/stun_server
  [[ -x $STUN_BIN ]] || STUN_BIN=$ROOT/target/${BUILT:-release}/stun_server
  log "xtcp rows: scripts/bench-xtcp.sh (namespace topology)"
  BENCH_SECS=$SECS "$ROOT/scripts/bench-xtcp.sh" "$FRPS" "$FRPC" "$STUN_BIN" "$OUTDIR/results.md"
  if [[ -n $GO_DIR && -x $GO_DIR/frps && -x $GO_DIR/frpc ]]; then
    BENCH_SECS=$SECS "$ROOT/scripts/bench-xtcp.sh" "$GO_DIR/frps" "$GO_DIR/frpc" "$STUN_BIN" \
      "$OUTDIR/results.md" "real frp ${GO_VERSION:-}"
  fi
fi
