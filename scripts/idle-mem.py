#!/usr/bin/env python3
"""RSS per idle tunneled connection, per process (frps, frpc): the "hold" test of
scripts/bench.sh on its own, split by process and read twice.

    scripts/idle-mem.py [--bin target/release] [--conns 4000] [--mux false] [--tls false]
                        [--engine auto]

Starts frps and frpc (one tcp proxy to a local service run here), opens CONNS connections
through the tunnel (128 at a time), waits for the one byte the service sends on each, and
holds them all idle. Prints VmRSS (and RssAnon) of frps and frpc before and after, as
(after - before) / CONNS: once 1 s after the last connection came up (what bench.sh reads)
and again after --settle seconds (6: frp-uring's heap trimmer, which looks every 2 s, has
had two looks by then; it trims only when 8 MiB or more stayed free).

Also prints the growth of the kernel's slab memory (system-wide, /proc/meminfo; noisy when
other work runs): socket objects live there, in no process's RSS.

Needs an open-file limit of about 2 x CONNS + 100 in this process (raised to the hard limit
here) and the same in frps and frpc (they inherit it). Nothing leaves 127.0.0.1.
"""

import argparse
import asyncio
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "Threads"):
                out[k] = int(v.split()[0])
    return out


def kernel_slab():
    """System-wide kernel slab memory (KiB): socket objects live there, outside any RSS."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Slab:"):
                return int(line.split()[1])
    return 0


def smaps(pid):
    """{mapping: rss KiB}, a mapping named by its address range and path."""
    out, cur = {}, None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                parts = line.split()
                cur = f"{parts[0]} {parts[5] if len(parts) > 5 else ''}"
            elif first == "Rss:":
                out[cur] = int(line.split()[1])
    return out


def wait_port(port, secs):
    """Waits until something listens on 127.0.0.1:port (ss; no connection is made, which
    would open a tunneled connection or a refused login)."""
    end = time.time() + secs
    while time.time() < end:
        out = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True)
        if out.stdout.strip():
            return True
        time.sleep(0.05)
    return False


async def hold(public, local, n, report):
    held = []

    async def serve(r, w):
        w.write(b"x")
        await w.drain()
        held.append(w)

    server = await asyncio.start_server(serve, "127.0.0.1", local, backlog=4096)
    await asyncio.sleep(0.5)
    await report("idle")
    sem = asyncio.Semaphore(128)
    conns = []

    async def one():
        async with sem:
            r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", public), 30)
            await asyncio.wait_for(r.readexactly(1), 30)
            conns.append(w)

    t0 = time.time()
    results = await asyncio.gather(*[one() for _ in range(n)], return_exceptions=True)
    errors = [e for e in results if isinstance(e, BaseException)]
    print(f"opened {len(conns)}/{n} in {time.time() - t0:.1f} s"
          + (f", {len(errors)} errors, first: {errors[0]!r}" if errors else ""))
    await report("held", len(conns))
    for w in conns + held:
        w.close()
    server.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release")
    ap.add_argument("--conns", type=int, default=4000)
    ap.add_argument("--mux", default="false")
    ap.add_argument("--tls", default="false",
                    help="frpc's transport.tls.enable (true: every work connection is a TLS "
                    "connection, relayed on tokio rather than on the dataplane cores)")
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--threads", type=int, default=0,
                    help="[dataplane] threads (0: one per CPU) and, when set, TOKIO_WORKER_THREADS")
    ap.add_argument("--settle", type=float, default=6.0)
    ap.add_argument("--keep", action="store_true", help="wait for Enter before closing")
    ap.add_argument("--malloc-stats", action="store_true",
                    help="glibc malloc_stats() of both processes (gdb attaches) at the end, "
                    "printed into their logs, which are then shown")
    ap.add_argument("--smaps", action="store_true",
                    help="also print the mappings whose RSS grew most (per process)")
    ap.add_argument("--wrap", default="", metavar="CMD",
                    help="run both under CMD (e.g. 'heaptrack -o /tmp/hp'; {name} is replaced by "
                    "frps/frpc); RSS figures are then those of the wrapper; SIGINT at the end")
    a = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 2 * a.conns + 200:
        sys.exit(f"open-file hard limit {hard} too low for {a.conns} connections")

    work = tempfile.mkdtemp(prefix="idle-mem.")
    bind, public, local = free_port(), free_port(), free_port()
    token = f"idle-mem-{os.getpid()}"
    dp = f'[dataplane]\nengine = "{a.engine}"\nthreads = {a.threads}\n'
    env = dict(os.environ)
    if a.threads:
        env["TOKIO_WORKER_THREADS"] = str(a.threads)
    with open(f"{work}/frps.toml", "w") as f:
        f.write(f'bindAddr = "127.0.0.1"\nbindPort = {bind}\nproxyBindAddr = "127.0.0.1"\n'
                f'auth.token = "{token}"\ntransport.tcpMux = {a.mux}\nlog.level = "warn"\n\n{dp}')
    with open(f"{work}/frpc.toml", "w") as f:
        f.write(f'serverAddr = "127.0.0.1"\nserverPort = {bind}\nauth.token = "{token}"\n'
                f'transport.tcpMux = {a.mux}\ntransport.tls.enable = {a.tls}\nlog.level = "warn"\n\n'
                f'{dp}\n[[proxies]]\nname = "hold"\ntype = "tcp"\nlocalIP = "127.0.0.1"\n'
                f'localPort = {local}\nremotePort = {public}\n')
    procs = {}
    try:
        for name in ("frps", "frpc"):
            log = open(f"{work}/{name}.log", "w")
            wrap = a.wrap.replace("{name}", name).split()
            procs[name] = subprocess.Popen(
                wrap + [os.path.join(a.bin, name), "-c", f"{work}/{name}.toml"],
                stdout=log, stderr=log, env=env, start_new_session=bool(wrap))
            if name == "frps" and not wait_port(bind, 5):
                sys.exit("frps did not start")
        if not wait_port(public, 10):
            sys.exit("the tunnel did not come up")
        time.sleep(0.5)
        base = {}

        async def report(what, n=0):
            snap = {k: status(p.pid) for k, p in procs.items()}
            if a.smaps:
                for k, p in procs.items():
                    snap[k]["smaps"] = smaps(p.pid)
            if what == "idle":
                base.update(snap)
                base["kernel"] = kernel_slab()
                print("idle: " + ", ".join(
                    f"{k} {v['VmRSS']} KiB ({v['Threads']} threads)" for k, v in snap.items()))
                return
            if n == 0:
                return
            for label, delay in (("after 1 s", 1.0), (f"after {a.settle:g} s", a.settle - 1.0)):
                await asyncio.sleep(delay)
                snap = {k: status(p.pid) for k, p in procs.items()}
                kernel = (kernel_slab() - base["kernel"]) / n
                parts, total = [], 0.0
                for k, v in snap.items():
                    per = (v["VmRSS"] - base[k]["VmRSS"]) / n
                    anon = (v["RssAnon"] - base[k]["RssAnon"]) / n
                    total += per
                    parts.append(f"{k} {per:.2f} (anon {anon:.2f})")
                print(f"{label}: RSS per idle conn, KiB: total {total:.2f}; " + ", ".join(parts)
                      + "; threads " + ", ".join(f"{k} {v['Threads']}" for k, v in snap.items())
                      + f"; kernel slab (system-wide, 6 sockets per conn incl. this holder's 2) "
                      f"{kernel:.2f}")
            if a.smaps:
                for k, p in procs.items():
                    now, before = smaps(p.pid), base[k]["smaps"]
                    grew = sorted(((v - before.get(m, 0), m) for m, v in now.items()), reverse=True)
                    print(f"{k}: mappings that grew (KiB): "
                          + "; ".join(f"{d} {m}" for d, m in grew[:8] if d > 0))
                    # By kind: thread stacks (tokio's and std's threads get 2 MiB), glibc
                    # arena heaps (64 MiB-aligned, non-main arenas), the rest.
                    kinds = {}
                    for d, m in grew:
                        lo, hi = (int(x, 16) for x in m.split()[0].split("-"))
                        kind = ("stack" if hi - lo == 2 * 1024 * 1024 else
                                "arena" if lo % (64 << 20) == 0 else
                                "[heap]" if m.endswith("[heap]") else "other")
                        kinds[kind] = kinds.get(kind, 0) + d
                    print(f"{k}: growth by kind (KiB): {kinds}")
            if a.malloc_stats:
                for k, p in procs.items():
                    subprocess.run(["gdb", "-p", str(p.pid), "-batch", "-ex",
                                    "call (void) malloc_stats()"], capture_output=True)
                    time.sleep(0.2)
                    print(f"== {k} malloc_stats:")
                    with open(f"{work}/{k}.log") as f:
                        print(f.read().strip())
            if a.keep:
                pids = ", ".join(f"{k} {p.pid}" for k, p in procs.items())
                await asyncio.get_running_loop().run_in_executor(
                    None, input, f"holding ({pids}); Enter to close ")

        asyncio.run(hold(public, local, a.conns, report))
    finally:
        for p in procs.values():
            if a.wrap:
                os.killpg(p.pid, signal.SIGINT)
            else:
                p.kill()
        for p in procs.values():
            p.wait()


if __name__ == "__main__":
    main()
