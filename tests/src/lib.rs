//! End-to-end test harness: starts the real `frps` and `frpc` binaries on 127.0.0.1 with
//! OS-assigned ports, talks to them with real sockets, reads their logs.
//!
//! # Layout
//! - [`bin`]: where the built binaries are (`scripts/test.sh` builds them first).
//! - [`Proc`]: a child process whose output goes to a log file; killed on drop.
//! - [`Env`]: a temporary directory holding configs and logs for one test.
//! - [`echo_server`], [`roundtrip`]: a local service and a user of it.

pub mod admin_api;
pub mod lossy;
pub mod netns;
pub mod oidc;
pub mod soak;
pub mod stun;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes moved so far over the established TCP connections whose local port is `port`
/// (e.g. frps' bindPort on 127.0.0.1): `bytes_received` + `bytes_acked` of each socket's
/// `tcp_info`, read with `ss`. The kernel's count, whatever system calls moved the bytes;
/// a connection that closes between two samples drops out, so use it across long-lived
/// connections (frpc's tcpMux sessions, which carry every work connection).
pub fn tcp_bytes_on_port(port: u16) -> u64 {
    ss_tcp_bytes(None, port)
}

/// [`tcp_bytes_on_port`] in the network namespace of process `netns_of` (through
/// `nsenter`), or in ours.
fn ss_tcp_bytes(netns_of: Option<u32>, port: u16) -> u64 {
    let filter = format!(":{port}");
    let ss = ["ss", "-tinH", "state", "established", "sport", "=", &filter];
    let out = match netns_of {
        Some(pid) => Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(ss)
            .output(),
        None => Command::new(ss[0]).args(&ss[1..]).output(),
    }
    .unwrap_or_else(|e| panic!("run ss (iproute2) / nsenter (util-linux): {e}"));
    assert!(out.status.success(), "ss failed: {out:?}");
    tcp_info_bytes(&String::from_utf8_lossy(&out.stdout))
}

/// Sum of `bytes_received:N` and `bytes_acked:N` in `ss -i` output.
fn tcp_info_bytes(ss: &str) -> u64 {
    ss.split_whitespace()
        .filter_map(|t| {
            t.strip_prefix("bytes_received:")
                .or_else(|| t.strip_prefix("bytes_acked:"))
        })
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// Path of a built binary of this workspace (`frps` or `frpc`), next to the test executable.
pub fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("FRP_BIN_DIR") {
        return Path::new(&dir).join(name);
    }
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (scripts/test.sh does: cargo build --workspace --bins)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768+) so that no
/// outgoing connection of a concurrent test can take it between now and its use. Ports are
/// handed out in sequence from a per-process start, and checked with a bind.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() % 1000 * 20 + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = (10_000 + NEXT.fetch_add(1, Ordering::SeqCst) % 22_000) as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
}

/// Waits (up to `timeout`) until nothing listens on 127.0.0.1:port any more; returns whether
/// that happened. frps closes a proxy's listener as its aborted task is dropped, a moment
/// after it logs the clean-up.
pub fn wait_port_closed(port: u16, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_listening(port) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Whether something listens on 127.0.0.1:port.
pub fn is_listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(300))
        .is_ok()
}

/// A running child process with its output in a log file.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str], dir: &Path) -> Proc {
        Self::spawn_with_env(name, program, args, dir, &[])
    }

    /// Like [`Proc::spawn`] with extra environment variables. The children never inherit
    /// `http_proxy`/`HTTP_PROXY` (frpc's default `transport.proxyURL`) from the test runner.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[&str],
        dir: &Path,
        envs: &[(&str, &str)],
    ) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(program)
            .args(args)
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY")
            .envs(envs.iter().copied())
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
        Proc {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` `count` times; panics with the log on timeout.
    pub fn wait_log_n(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.log_text();
            if text.matches(needle).count() >= count {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{}: {needle:?} ×{count} not logged within {timeout:?}; log:\n{text}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        self.wait_log_n(needle, 1, timeout)
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Bytes moved so far over this process's established TCP connections on local port
    /// `port` (frps: its bindPort, which carries frpc's tcpMux sessions and so every work
    /// connection frps relays), counted by the kernel in the process's network namespace:
    /// see [`tcp_bytes_on_port`]. Shows whether traffic passed through frps, whatever system
    /// calls or io_uring operations moved it (`/proc/PID/io` counts only read/write-family
    /// calls, not `send`/`recv`, nor io_uring).
    pub fn tcp_bytes_on_port(&self, port: u16) -> u64 {
        let theirs = std::fs::read_link(format!("/proc/{}/ns/net", self.pid()));
        let ours = std::fs::read_link("/proc/self/ns/net");
        match (theirs, ours) {
            (Ok(t), Ok(o)) if t != o => ss_tcp_bytes(Some(self.pid()), port),
            _ => ss_tcp_bytes(None, port),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Sends a signal (e.g. 15 for SIGTERM) without waiting.
    pub fn signal(&self, sig: i32) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status();
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
        self.kill();
    }
}

/// A temporary directory for one test's configs and logs.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Default for Env {
    fn default() -> Self {
        Self::new()
    }
}

impl Env {
    pub fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Starts frps with `bindPort = port` plus `extra` TOML lines.
    pub fn frps(&self, name: &str, port: u16, extra: &str) -> Proc {
        self.frps_with_env(name, port, extra, &[])
    }

    /// [`Env::frps`] with extra environment variables (test-only hooks).
    pub fn frps_with_env(&self, name: &str, port: u16, extra: &str, envs: &[(&str, &str)]) -> Proc {
        let extra = format!("{extra}{}", engine_table());
        let cfg = format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nproxyBindAddr = \"127.0.0.1\"\n{extra}\n"
        );
        let path = self.write(&format!("{name}.toml"), &cfg);
        let p = Proc::spawn_with_env(
            name,
            &bin("frps"),
            &["-c", path.to_str().unwrap()],
            self.path(),
            envs,
        );
        p.wait_log("start frps success", Duration::from_secs(10));
        p
    }

    /// Starts frpc with the given full TOML config.
    pub fn frpc(&self, name: &str, cfg: &str) -> Proc {
        self.frpc_with_env(name, cfg, &[])
    }

    /// [`Env::frpc`] with extra environment variables (e.g. `SSL_CERT_FILE`).
    pub fn frpc_with_env(&self, name: &str, cfg: &str, envs: &[(&str, &str)]) -> Proc {
        let cfg = format!("{cfg}{}", engine_table());
        let path = self.write(&format!("{name}.toml"), &cfg);
        Proc::spawn_with_env(
            name,
            &bin("frpc"),
            &["-c", path.to_str().unwrap()],
            self.path(),
            envs,
        )
    }
}

/// The directory of real Go frp binaries (`frps` and `frpc`, as in frp's release tarballs)
/// named by env `FRP_GO_BIN_DIR`, or `None` when unset. The interop suite (`interop_go.rs`)
/// is opt-in on it. Panics when it is set but lacks a binary: that is a mistake to report,
/// not a reason to skip.
pub fn go_bin_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("FRP_GO_BIN_DIR").filter(|d| !d.is_empty())?);
    for name in ["frps", "frpc"] {
        assert!(
            dir.join(name).is_file(),
            "FRP_GO_BIN_DIR={}: no {name} there",
            dir.display()
        );
    }
    Some(dir)
}

/// [`go_bin_dir`] for a test: `None` (after printing one skip line naming `test`) when
/// `FRP_GO_BIN_DIR` is unset, so the test can return and pass.
pub fn go_bin_dir_or_skip(test: &str) -> Option<PathBuf> {
    let dir = go_bin_dir();
    if dir.is_none() {
        // Straight to the process's stderr: `eprintln!` would be captured by the test
        // harness and shown only for failures.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipping {test}: set FRP_GO_BIN_DIR to a directory holding real frp's frps and frpc to run it"
        );
    }
    dir
}

impl Env {
    /// Starts a real (Go) frps from `go_dir` with `bindPort = port` plus `extra` TOML lines;
    /// waits for its "frps started successfully".
    pub fn go_frps(&self, go_dir: &Path, name: &str, port: u16, extra: &str) -> Proc {
        let cfg = format!(
            "bindAddr = \"127.0.0.1\"\nbindPort = {port}\nproxyBindAddr = \"127.0.0.1\"\n{extra}\n"
        );
        let path = self.write(&format!("{name}.toml"), &cfg);
        let p = Proc::spawn(
            name,
            &go_dir.join("frps"),
            &["-c", path.to_str().unwrap()],
            self.path(),
        );
        p.wait_log("frps started successfully", Duration::from_secs(10));
        p
    }

    /// Starts a real (Go) frpc from `go_dir` with the given full TOML config. Its log lines
    /// to wait for: "login to server success", "[name] start proxy success",
    /// "start visitor success".
    pub fn go_frpc(&self, go_dir: &Path, name: &str, cfg: &str) -> Proc {
        let path = self.write(&format!("{name}.toml"), cfg);
        Proc::spawn(
            name,
            &go_dir.join("frpc"),
            &["-c", path.to_str().unwrap()],
            self.path(),
        )
    }
}

/// Sends `data` to 127.0.0.1:port and reads exactly as many bytes back, without half-closing:
/// frp's join (and a websocket) ends both directions on the first EOF, so an echo through
/// a real frp hop may lose its tail after a half-close.
pub async fn echo_exact(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    echo_exact_on(TcpStream::connect(("127.0.0.1", port)).await?, data).await
}

/// [`echo_exact`] on a connection already open (e.g. after a CONNECT or an upgrade).
pub async fn echo_exact_on(s: TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = s.into_split();
    let owned = data.to_vec();
    let writer = tokio::spawn(async move { w.write_all(&owned).await.map(|()| w) });
    let mut got = vec![0u8; data.len()];
    r.read_exact(&mut got).await?;
    writer.await.expect("writer task")?;
    Ok(got)
}

/// The `[dataplane]` table selecting the relay engine named by `E2E_ENGINE` (io_uring, epoll,
/// tokio), so the whole suite can run once per engine; empty when unset (auto).
pub fn engine_table() -> String {
    match std::env::var("E2E_ENGINE") {
        Ok(e) if !e.is_empty() => format!("\n[dataplane]\nengine = \"{e}\"\n"),
        _ => String::new(),
    }
}

/// A TCP service on 127.0.0.1 that runs `serve` on each accepted connection, each in a task
/// of its own; returns its port. Runs until the runtime ends.
pub async fn tcp_service<F, Fut>(serve: F) -> u16
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    port
}

/// A TCP echo service on 127.0.0.1; returns its port. Runs until the runtime ends.
pub async fn echo_server() -> u16 {
    tcp_service(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Sends `data` to 127.0.0.1:port, half-closes, and returns everything received.
pub async fn roundtrip(port: u16, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let (mut r, mut w) = s.split();
    let send = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut got = Vec::with_capacity(data.len());
    let recv = r.read_to_end(&mut got);
    let (a, b) = tokio::join!(send, recv);
    a?;
    b?;
    Ok(got)
}

/// Reads from `s` until what it read holds the end of an HTTP head (`\r\n\r\n`); returns
/// those bytes (with whatever followed the head in the same reads), or `None` when EOF or an
/// error comes first.
pub async fn read_head<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(head)
}

/// Echo round trip that retries until the tunnel is up (or `timeout`).
pub async fn roundtrip_eventually(port: u16, data: &[u8], timeout: Duration) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), roundtrip(port, data)).await {
            Ok(Ok(got)) if got == data => return got,
            other => {
                if Instant::now() > deadline {
                    panic!(
                        "no working tunnel on port {port} within {timeout:?}: last result {:?}",
                        other.map(|r| r.map(|v| v.len()))
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deterministic pseudo-random bytes.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A frpc config for frps on 127.0.0.1:`server_port` with `token`, `extra` top-level lines,
/// and one proxy `name` of type `kind` to 127.0.0.1:`local_port`; the proxy's other keys are
/// appended by the caller.
pub fn frpc_proxy_config(
    server_port: u16,
    token: &str,
    extra: &str,
    name: &str,
    kind: &str,
    local_port: u16,
) -> String {
    format!(
        r#"serverAddr = "127.0.0.1"
serverPort = {server_port}
auth.token = "{token}"
{extra}

[[proxies]]
name = "{name}"
type = "{kind}"
localIP = "127.0.0.1"
localPort = {local_port}
"#
    )
}

/// A frpc config for one tcp proxy to `local_port`, exposed on `remote_port`.
pub fn frpc_tcp_config(
    server_port: u16,
    token: &str,
    tcp_mux: bool,
    tls: bool,
    enc: bool,
    local_port: u16,
    remote_port: u16,
) -> String {
    let head = frpc_proxy_config(
        server_port,
        token,
        &format!(
            "transport.tcpMux = {tcp_mux}\ntransport.tls.enable = {tls}\nlog.level = \"debug\""
        ),
        "echo",
        "tcp",
        local_port,
    );
    format!(
        "{head}remotePort = {remote_port}\ntransport.useEncryption = {enc}\n\
         transport.useCompression = {enc}\n"
    )
}

/// A UDP echo service on 127.0.0.1 (each datagram goes back to its sender); returns its port.
/// Runs until the runtime ends.
pub async fn udp_echo_server() -> u16 {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = s.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    port
}

/// Sends `probe` from `sock` to 127.0.0.1:port every 200 ms until a datagram comes back (the
/// udp tunnel is up) or `timeout`; returns the reply.
pub async fn udp_probe(
    sock: &tokio::net::UdpSocket,
    port: u16,
    probe: &[u8],
    timeout: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536];
    loop {
        sock.send_to(probe, ("127.0.0.1", port)).await.unwrap();
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await
        {
            return buf[..n].to_vec();
        }
        assert!(
            Instant::now() < deadline,
            "no udp reply through port {port} within {timeout:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_bytes_on_port_counts_both_directions_of_live_connections() {
        if Command::new("ss").arg("-V").output().is_err() {
            eprintln!("skipping: no `ss` command (install iproute2)");
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(tcp_bytes_on_port(port), 0);
        let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (mut s, _) = l.accept().unwrap();
        use std::io::Write;
        c.write_all(&[1; 3000]).unwrap();
        let mut buf = [0; 3000];
        s.read_exact(&mut buf).unwrap();
        s.write_all(&[2; 500]).unwrap();
        c.read_exact(&mut buf[..500]).unwrap();
        // The acknowledgement of the last 500 bytes may still be in flight; bytes_acked
        // also counts the SYN (one sequence number).
        let counted = |p| (3500..=3502).contains(&tcp_bytes_on_port(p));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !counted(port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(counted(port), "{}", tcp_bytes_on_port(port));
        // The client's end is counted under its own local port, once.
        let cport = c.local_addr().unwrap().port();
        assert!(counted(cport), "{}", tcp_bytes_on_port(cport));
        drop((c, s));
        assert_eq!(
            tcp_info_bytes("bytes_sent:5 bytes_acked:4 bytes_received:3"),
            7
        );
    }
}
