#!/usr/bin/env python3
"""Interleaved A/B benchmark on 127.0.0.1: several frp-uring builds (and rathole, and direct
loopback) measured in alternation, many short rounds, so that a noisy machine disturbs every
contender alike. Reports medians of redis -c 1 p50 and average latency, of iperf3 CPU-seconds per GB, of
redis -k 0 new connections/s with the tunnel's CPU µs per connection, and of redis -c 64
requests/s, each also as the median of the per-round ratios to rathole.

    scripts/bench-ab.py --bin base=target/bench/bin-base --bin new=target/release \\
        --modes off,on,tls --rounds 8

Needs what scripts/bench.sh installs (iperf3, redis-server, redis-benchmark, rathole under
target/bench/tools/bin). Nothing leaves 127.0.0.1; every process started here is killed on exit.
"""
import argparse
import atexit
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(args, log):
    p = subprocess.Popen(args, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    PROCS.append(p)
    return p


@atexit.register
def cleanup():
    for p in PROCS:
        p.kill()
    for p in PROCS:
        p.wait()


def wait_port(port, secs=10):
    end = time.time() + secs
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total


def frp_tunnel(name, bindir, mux, tls, work, redis_port, iperf_port):
    bind, r_pub, i_pub = free_port(), free_port(), free_port()
    d = os.path.join(work, name.replace(" ", "_"))
    os.makedirs(d)
    token = "ab-token"
    with open(f"{d}/frps.toml", "w") as f:
        f.write(f'bindAddr = "127.0.0.1"\nbindPort = {bind}\nproxyBindAddr = "127.0.0.1"\n'
                f'auth.token = "{token}"\ntransport.tcpMux = {mux}\nlog.level = "warn"\n')
    with open(f"{d}/frpc.toml", "w") as f:
        f.write(f'serverAddr = "127.0.0.1"\nserverPort = {bind}\nauth.token = "{token}"\n'
                f'transport.tcpMux = {mux}\ntransport.tls.enable = {tls}\nlog.level = "warn"\n')
        for pname, local, remote in [("redis", redis_port, r_pub), ("iperf", iperf_port, i_pub)]:
            f.write(f'\n[[proxies]]\nname = "{pname}"\ntype = "tcp"\nlocalIP = "127.0.0.1"\n'
                    f'localPort = {local}\nremotePort = {remote}\n')
    s = start([f"{bindir}/frps", "-c", f"{d}/frps.toml"], f"{d}/frps.log")
    wait_port(bind)
    c = start([f"{bindir}/frpc", "-c", f"{d}/frpc.toml"], f"{d}/frpc.log")
    return r_pub, i_pub, [s.pid, c.pid]


def rathole_tunnel(work, redis_port, iperf_port):
    rathole = f"{ROOT}/target/bench/tools/bin/rathole"
    bind, r_pub, i_pub = free_port(), free_port(), free_port()
    d = os.path.join(work, "rathole")
    os.makedirs(d)
    with open(f"{d}/server.toml", "w") as f:
        f.write(f'[server]\nbind_addr = "127.0.0.1:{bind}"\n')
        for svc, port in [("redis", r_pub), ("iperf", i_pub)]:
            f.write(f'\n[server.services.{svc}]\ntoken = "t"\nbind_addr = "127.0.0.1:{port}"\n')
    with open(f"{d}/client.toml", "w") as f:
        f.write(f'[client]\nremote_addr = "127.0.0.1:{bind}"\n')
        for svc, port in [("redis", redis_port), ("iperf", iperf_port)]:
            f.write(f'\n[client.services.{svc}]\ntoken = "t"\nlocal_addr = "127.0.0.1:{port}"\n')
    env = dict(os.environ, RUST_LOG="warn")
    s = subprocess.Popen([rathole, "-s", f"{d}/server.toml"], env=env,
                         stdout=open(f"{d}/s.log", "w"), stderr=subprocess.STDOUT)
    PROCS.append(s)
    wait_port(bind)
    c = subprocess.Popen([rathole, "-c", f"{d}/client.toml"], env=env,
                         stdout=open(f"{d}/c.log", "w"), stderr=subprocess.STDOUT)
    PROCS.append(c)
    return r_pub, i_pub, [s.pid, c.pid]


def wait_tunnel(port):
    for _ in range(150):
        r = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True,
                           timeout=5)
        if r.stdout.strip() == "PONG":
            return True
        time.sleep(0.1)
    return False


def redis_p50(port, n):
    r = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set,get",
                        "-n", str(n), "-c", "1", "-r", "1000", "--precision", "3", "--csv"],
                       capture_output=True, text=True, timeout=60)
    out = {}
    for line in r.stdout.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if cols[0] in ("GET", "SET"):
            # p50 comes in 8 µs steps at these values (the histogram's lowest unit); the
            # average is exact.
            out[cols[0]] = float(cols[4]) * 1000
            out[cols[0] + " avg"] = float(cols[2]) * 1000
    return out


def conn_rate(port, pids, n):
    """redis -k 0 (a new connection per GET): connections/s and the tunnel's CPU µs per one."""
    c0 = cpu_ticks(pids) if pids else 0
    r = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
                        "-n", str(n), "-c", "16", "-k", "0", "--csv"],
                       capture_output=True, text=True, timeout=120)
    out = {}
    for line in r.stdout.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if cols[0] == "GET":
            out["conn/s"] = float(cols[1])
    if pids:
        out["µs/conn"] = (cpu_ticks(pids) - c0) / CLK_TCK / n * 1e6
    return out


def rps64(port, n):
    r = subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "get",
                        "-n", str(n), "-c", "64", "--csv"],
                       capture_output=True, text=True, timeout=120)
    for line in r.stdout.splitlines():
        cols = [c.strip('"') for c in line.split(",")]
        if cols[0] == "GET":
            return {"c64 req/s": float(cols[1])}
    return {}


def iperf_cpu(port, pids, secs):
    c0 = cpu_ticks(pids) if pids else 0
    r = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(secs), "-J",
                        "--connect-timeout", "5000"], capture_output=True, text=True,
                       timeout=secs + 30)
    import json
    j = json.loads(r.stdout)
    got = j["end"]["sum_received"]["bytes"]
    if not pids:
        return None
    return (cpu_ticks(pids) - c0) / CLK_TCK / (got / 1e9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True, help="NAME=DIR with frps, frpc")
    ap.add_argument("--modes", default="off,on,tls")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--lat-n", type=int, default=3000)
    ap.add_argument("--iperf-secs", type=int, default=2)
    ap.add_argument("--conn-n", type=int, default=5000)
    ap.add_argument("--rps-n", type=int, default=50000)
    ap.add_argument("--skip", default="", help="any of lat, cpu, conn, rps")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="frp-ab.")
    redis_port, iperf_port = free_port(), free_port()
    start(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
           "--appendonly", "no", "--protected-mode", "no"], f"{work}/redis.log")
    start(["iperf3", "-s", "-B", "127.0.0.1", "-p", str(iperf_port)], f"{work}/iperf.log")
    wait_port(redis_port)
    wait_port(iperf_port)
    targets = {"direct": (redis_port, iperf_port, [])}
    modes = {"off": ("false", "false"), "on": ("true", "false"), "tls": ("true", "true")}
    for spec in a.bin:
        name, d = spec.split("=", 1)
        d = os.path.abspath(d)
        for m in a.modes.split(","):
            mux, tls = modes[m]
            targets[f"{name} mux {m}"] = frp_tunnel(f"{name} {m}", d, mux, tls, work, redis_port,
                                                    iperf_port)
    targets["rathole"] = rathole_tunnel(work, redis_port, iperf_port)
    for t, (rp, _, _) in targets.items():
        if not wait_tunnel(rp):
            sys.exit(f"{t}: tunnel did not come up (logs in {work})")
    keys = ("GET", "SET", "GET avg", "SET avg", "cpu", "conn/s", "µs/conn", "c64 req/s")
    res = {t: {k: [] for k in keys} for t in targets}
    for rnd in range(a.rounds):
        order = list(targets)
        random.shuffle(order)
        for t in order:
            rp, ip, pids = targets[t]
            if "lat" not in a.skip:
                for k, v in redis_p50(rp, a.lat_n).items():
                    res[t][k].append(v)
            if "cpu" not in a.skip and pids:
                res[t]["cpu"].append(iperf_cpu(ip, pids, a.iperf_secs))
            if "conn" not in a.skip:
                for k, v in conn_rate(rp, pids, a.conn_n).items():
                    res[t][k].append(v)
            if "rps" not in a.skip:
                for k, v in rps64(rp, a.rps_n).items():
                    res[t][k].append(v)
        print(f"round {rnd + 1}/{a.rounds} done", file=sys.stderr)

    def ratio_median(t, k):
        pairs = [x / y for x, y in zip(res[t][k], res["rathole"][k]) if y]
        return statistics.median(pairs) if pairs else float("nan")

    print(f"\n{a.rounds} interleaved rounds; medians (and median of per-round ratios to rathole)\n")
    print("| target | GET p50 µs | SET p50 µs | GET avg µs | SET avg µs | CPU-s/GB iperf3 1× "
          "| -k 0 conn/s | tunnel CPU µs/conn | -c 64 GET req/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in targets:
        cells = []
        for k in keys:
            v = res[t][k]
            if not v:
                cells.append("—")
            elif t in ("rathole", "direct"):
                cells.append(f"{statistics.median(v):.3g}")
            else:
                cells.append(f"{statistics.median(v):.3g} ({ratio_median(t, k):.2f}×)")
        print(f"| {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
