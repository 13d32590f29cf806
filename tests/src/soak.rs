//! Emulated frpc clients for memory soak measurements: thousands of them in one process, each
//! logging in to frps the way frpc does (by default tcpMux over TLS, with the control crate's
//! own dialer and login), optionally registering one tcp proxy whose local service is an echo
//! inside the emulated client, then leaving.
//!
//! Used by `tests/tests/soak.rs` (bounds asserted) and the `soak` binary (figures printed, also
//! against another frps such as Go's): `scripts/soak.sh` runs either.

use std::sync::Arc;
use std::time::{Duration, Instant};

use control::config::{ConfigFormat, client_config_from_str};
use control::crypto::CryptoKey;
use control::handshake::{self, Role};
use control::msg::{Login, Message, NewProxy, NewWorkConn};
use control::msgconn::MsgConn;
use control::transport::{Conn, Connector, DialConfig};
use control::wire_v2::{BootstrapInfo, WireVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// What every emulated client shares: where frps is and how to reach it.
pub struct Setup {
    dial: DialConfig,
    key: CryptoKey,
    token: String,
    wire: WireVersion,
}

impl Setup {
    /// Clients of the frps at `127.0.0.1:port` with `auth.token = token`, dialing as frpc's
    /// default (tcpMux, TLS with the 0x17 first byte); `extra` adds client TOML lines (e.g.
    /// `transport.tls.enable = false`).
    pub fn new(port: u16, token: &str, extra: &str) -> Setup {
        let text = format!(
            "serverAddr = \"127.0.0.1\"\nserverPort = {port}\nauth.token = \"{token}\"\n{extra}\n"
        );
        let cfg = client_config_from_str(&text, ConfigFormat::Toml, true).expect("client config");
        Setup {
            dial: DialConfig::from_client_config(&cfg).expect("dial config"),
            key: CryptoKey::derive(token.as_bytes()),
            token: token.to_string(),
            wire: WireVersion::from_config(&cfg.transport.wire_protocol).unwrap_or_default(),
        }
    }
}

/// A logged-in emulated client. Dropping it leaves (the session is closed).
pub struct Client {
    connector: Connector,
    task: tokio::task::JoinHandle<()>,
    /// The proxy's `remote_port`, when one was registered.
    pub remote_port: Option<u16>,
}

impl Client {
    /// Leaves frps: the tcpMux session (or control connection) is closed.
    pub fn leave(self) {}
}

impl Drop for Client {
    fn drop(&mut self) {
        self.connector.close();
        self.task.abort();
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Logs one client in (pool count 1, like frpc's default) and, with `remote_port`, registers
/// the tcp proxy `name` on it, waiting for frps' answer. Work connections frps asks for are
/// opened on the session; their user's bytes are echoed.
pub async fn login(
    setup: &Arc<Setup>,
    name: &str,
    remote_port: Option<u16>,
) -> Result<Client, String> {
    let (connector, conn) = setup.dial.connect().await.map_err(|e| e.to_string())?;
    let fail = |connector: &Connector, e: String| {
        connector.close();
        Err(e)
    };
    let mut mc = MsgConn::client(conn, setup.wire);
    let timestamp = unix_now();
    let login = Login {
        version: control::FRP_VERSION.into(),
        hostname: "soak".into(),
        os: "linux".into(),
        arch: "amd64".into(),
        privilege_key: control::auth::privilege_key(&setup.token, timestamp),
        timestamp,
        pool_count: 1,
        ..Default::default()
    };
    let boot = BootstrapInfo {
        transport: "tcp".into(),
        tls: setup.dial.tls.is_some(),
        tcp_mux: setup.dial.tcp_mux,
    };
    let (resp, crypto) = match handshake::client_login(&mut mc, login, boot).await {
        Ok((r, _)) if !r.error.is_empty() => return fail(&connector, r.error),
        Ok(ok) => ok,
        Err(e) => return fail(&connector, e.to_string()),
    };
    if let Err(e) = handshake::enable_control_encryption(
        &mut mc,
        crypto.as_ref(),
        &setup.token,
        &setup.key,
        Role::Client,
    ) {
        return fail(&connector, e.to_string());
    }
    let run_id = resp.run_id;
    if let Some(port) = remote_port {
        let np = NewProxy {
            proxy_name: name.to_string(),
            proxy_type: "tcp".into(),
            remote_port: port as i64,
            ..Default::default()
        };
        if let Err(e) = mc.write_msg(&np.into()).await {
            return fail(&connector, e.to_string());
        }
        // ReqWorkConn may come first (the pool); answer it, then wait for NewProxyResp.
        loop {
            match mc.read_msg_timeout(Duration::from_secs(30)).await {
                Ok(Message::ReqWorkConn(_)) => spawn_work_conn(setup, &connector, &run_id),
                Ok(Message::NewProxyResp(r)) if r.error.is_empty() => break,
                Ok(Message::NewProxyResp(r)) => return fail(&connector, r.error),
                Ok(_) => {}
                Err(e) => return fail(&connector, e.to_string()),
            }
        }
    }
    let task = {
        let setup = setup.clone();
        let connector = connector.clone();
        tokio::spawn(async move {
            while let Ok(m) = mc.read_msg().await {
                if let Message::ReqWorkConn(_) = m {
                    spawn_work_conn(&setup, &connector, &run_id);
                }
            }
        })
    };
    Ok(Client {
        connector,
        task,
        remote_port,
    })
}

/// One work connection: NewWorkConn, StartWorkConn, then an echo of the user's bytes.
fn spawn_work_conn(setup: &Arc<Setup>, connector: &Connector, run_id: &str) {
    let connector = connector.clone();
    let wire = setup.wire;
    let run_id = run_id.to_string();
    tokio::spawn(async move {
        let Ok(conn) = connector.open().await else {
            return;
        };
        let mut mc = MsgConn::client(conn, wire);
        let nwc = NewWorkConn {
            run_id,
            ..Default::default()
        };
        if mc.write_msg(&nwc.into()).await.is_err() {
            return;
        }
        let Ok(Message::StartWorkConn(_)) = mc.read_msg().await else {
            return;
        };
        let (io, rest): (Conn, Vec<u8>) = mc.into_parts();
        let (mut r, mut w) = tokio::io::split(io);
        if w.write_all(&rest).await.is_err() {
            return;
        }
        let mut buf = vec![0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if w.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = w.shutdown().await;
    });
}

/// Logs `n` clients in, at most `parallel` handshakes at a time. With `ports`, client `i`
/// registers the tcp proxy `{prefix}-{i}` on `ports[i]` (a client coming back registers the
/// same name, as frpc does). Fails on the first client that cannot log in.
pub async fn login_many(
    setup: &Arc<Setup>,
    n: usize,
    parallel: usize,
    ports: Option<&[u16]>,
    prefix: &str,
) -> Result<Vec<Client>, String> {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let setup = setup.clone();
        let sem = sem.clone();
        let port = ports.map(|p| p[i]);
        let name = format!("{prefix}-{i}");
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let mut last = String::new();
            let mut port = port;
            // A busy listen backlog can refuse a few dials; frpc would retry too. A port that
            // another process took meanwhile is swapped for a free one.
            for _ in 0..5 {
                match login(&setup, &name, port).await {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        if port.is_some() && e.contains("port") {
                            port = Some(crate::free_port());
                        }
                        last = e;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(format!("client {i}: {last}"))
        });
    }
    let mut clients = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        clients.push(r.map_err(|e| e.to_string())??);
    }
    Ok(clients)
}

/// `total` short-lived connections to the `ports` (round-robin), `parallel` at a time: each
/// sends `payload` bytes, reads them back through the tunnel, closes. Returns the failures.
pub async fn tunnel_burst(ports: &[u16], total: usize, parallel: usize, payload: usize) -> usize {
    let sem = Arc::new(Semaphore::new(parallel.max(1)));
    let data: Arc<Vec<u8>> = Arc::new((0..payload).map(|i| (i * 7 + 3) as u8).collect());
    let mut set = JoinSet::new();
    for i in 0..total {
        let port = ports[i % ports.len()];
        let sem = sem.clone();
        let data = data.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let attempt = async {
                let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
                s.write_all(&data).await?;
                let mut got = vec![0u8; data.len()];
                s.read_exact(&mut got).await?;
                std::io::Result::Ok(got == *data)
            };
            matches!(
                tokio::time::timeout(Duration::from_secs(20), attempt).await,
                Ok(Ok(true))
            )
        });
    }
    let mut failed = 0;
    while let Some(r) = set.join_next().await {
        if !matches!(r, Ok(true)) {
            failed += 1;
        }
    }
    failed
}

/// A process's resident set (VmRSS) in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// How many file descriptors a process has open.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Waits (up to `limit`) until `pid` has at most `fds` descriptors open. Returns the count
/// seen last.
pub async fn wait_fds(pid: u32, fds: usize, limit: Duration) -> usize {
    let start = Instant::now();
    loop {
        let n = fd_count(pid);
        if n <= fds || start.elapsed() > limit {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    dataplane::sys::raise_nofile_limit().unwrap_or(0)
}

/// Figures of one reconnect round.
#[derive(Debug, Clone)]
pub struct Round {
    /// frps RSS with every client logged in, KiB.
    pub connected_kib: u64,
    /// frps RSS after every client left and its fds were released, KiB.
    pub after_kib: u64,
    /// frps fds with every client logged in, and after they left.
    pub connected_fds: usize,
    pub after_fds: usize,
    pub login_secs: f64,
}

/// The soak's settings.
#[derive(Debug, Clone)]
pub struct Plan {
    pub clients: usize,
    pub rounds: usize,
    /// Each client registers one tcp proxy on a port from this list (empty: none).
    pub ports: Vec<u16>,
    pub parallel: usize,
    /// Held with everyone connected before leaving.
    pub hold: Duration,
    /// After everyone left (fds back), before the RSS is read.
    pub settle: Duration,
}

/// N clients × R rounds against the frps process `pid` (listening on `setup`'s port); prints
/// one line per round. `baseline_fds` is frps' count before the first round.
pub async fn reconnect_rounds(
    setup: &Arc<Setup>,
    pid: u32,
    plan: &Plan,
    baseline_fds: usize,
) -> Result<Vec<Round>, String> {
    let mut rounds = Vec::new();
    let base = rss_kib(pid);
    println!(
        "baseline: frps RSS {:.1} MiB, {} fds",
        base as f64 / 1024.0,
        baseline_fds
    );
    for r in 0..plan.rounds {
        let t = Instant::now();
        let ports = (!plan.ports.is_empty()).then_some(&plan.ports[..]);
        let clients = login_many(setup, plan.clients, plan.parallel, ports, "soak").await?;
        let login_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(plan.hold).await;
        let connected_kib = rss_kib(pid);
        let connected_fds = fd_count(pid);
        drop(clients);
        let after_fds = wait_fds(pid, baseline_fds, Duration::from_secs(60)).await;
        tokio::time::sleep(plan.settle).await;
        let after_kib = rss_kib(pid);
        println!(
            "round {}: {} clients logged in in {:.1} s; connected: RSS {:.1} MiB, {} fds, {:.1} KiB/client over baseline; after leaving: RSS {:.1} MiB, {} fds",
            r + 1,
            plan.clients,
            login_secs,
            connected_kib as f64 / 1024.0,
            connected_fds,
            (connected_kib.saturating_sub(base)) as f64 / plan.clients as f64,
            after_kib as f64 / 1024.0,
            after_fds
        );
        rounds.push(Round {
            connected_kib,
            after_kib,
            connected_fds,
            after_fds,
            login_secs,
        });
    }
    Ok(rounds)
}
