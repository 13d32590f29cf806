//! frps' listeners as Go's: the kernel's somaxconn as backlog (a burst of users is queued, not
//! dropped), and a process out of file descriptors says so in frp's words, at most once a
//! second.

use std::path::Path;
use std::time::{Duration, Instant};

use e2e::*;

const WAIT: Duration = Duration::from_secs(15);
const TOKEN: &str = "listen-token";

/// frps (tcpMux, so that work connections take no descriptors) and an frpc with one tcp
/// proxy to an echo service; returns them and the proxy's port once it is registered.
async fn frps_with_proxy(env: &Env, frps: Proc, bind: u16) -> (Proc, Proc, u16) {
    let echo = echo_server().await;
    let remote = free_port();
    let frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, TOKEN, true, false, false, echo, remote),
    );
    frpc.wait_log("[echo] start proxy success", WAIT);
    (frps, frpc, remote)
}

/// The backlog of the listener on 127.0.0.1:`port`, as `ss` reports it (Send-Q of a
/// listening socket); None without `ss`.
fn listen_backlog(port: u16) -> Option<u32> {
    let out = std::process::Command::new("ss")
        .args(["-Hltn", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port} ")))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// frps' listeners (bindPort, a tcp proxy's port, vhostHTTPPort, the dashboard) ask for the
/// kernel's somaxconn as Go's do, not std's 128 or tokio's 1024. And while frps is stopped
/// (SIGSTOP: nothing accepts), 300 users connect to the tcp proxy's port: each completes its
/// handshake, queued by the kernel (with 128, the SYNs past 129 were dropped and those users
/// timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_use_somaxconn_and_a_burst_of_users_is_queued() {
    let env = Env::new();
    let bind = free_port();
    let (vhost, web) = (free_port(), free_port());
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\nvhostHTTPPort = {vhost}\nwebServer.addr = \"127.0.0.1\"\nwebServer.port = {web}\nwebServer.user = \"u\"\nwebServer.password = \"p\""
        ),
    );
    let (frps, _frpc, remote) = frps_with_proxy(&env, frps, bind).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    if listen_backlog(bind).is_some() {
        for (what, port) in [
            ("bindPort", bind),
            ("tcp proxy", remote),
            ("vhostHTTPPort", vhost),
            ("webServer", web),
        ] {
            assert_eq!(listen_backlog(port), Some(somaxconn), "{what} :{port}");
        }
    } else {
        eprintln!("no ss here: backlog values not checked");
    }
    let users = 300;
    frps.signal(19); // SIGSTOP
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], remote));
    let result = tokio::task::spawn_blocking(move || {
        let mut conns = Vec::new();
        for i in 0..users {
            // A full accept queue drops the SYN; the client would retry for seconds.
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
                Ok(c) => conns.push(c),
                Err(e) => return Err(format!("user {i} of {users}: {e}")),
            }
        }
        Ok(conns)
    })
    .await
    .unwrap();
    frps.signal(18); // SIGCONT
    let conns = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(conns.len(), users);
}

/// Whether `prlimit` (util-linux) is there to start frps with few descriptors.
fn prlimit() -> Option<&'static Path> {
    let p = Path::new("/usr/bin/prlimit");
    p.exists().then_some(p)
}

/// frps with 64 descriptors: users beyond that make every accept fail with EMFILE. frps
/// names the cause in frp's words, and logs it at most once a second (it logged every
/// 50 ms), saying how many it left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_is_logged_in_frps_words_once_a_second() {
    let Some(prlimit) = prlimit() else {
        eprintln!("SKIP: no /usr/bin/prlimit");
        return;
    };
    let env = Env::new();
    let bind = free_port();
    let cfg = format!(
        "bindAddr = \"127.0.0.1\"\nbindPort = {bind}\nproxyBindAddr = \"127.0.0.1\"\nauth.token = \"{TOKEN}\"\n{}",
        engine_table()
    );
    let path = env.write("frps.toml", &cfg);
    let frps_bin = bin("frps");
    let frps = Proc::spawn(
        "frps",
        prlimit,
        &[
            "--nofile=64:64",
            frps_bin.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
        ],
        env.path(),
    );
    frps.wait_log("start frps success", WAIT);
    let (frps, _frpc, remote) = frps_with_proxy(&env, frps, bind).await;

    // More users than frps has descriptors, held open.
    let mut users = Vec::new();
    for _ in 0..120 {
        if let Ok(c) = tokio::net::TcpStream::connect(("127.0.0.1", remote)).await {
            users.push(c);
        }
    }
    let words = format!(
        "met temporary error: accept tcp 127.0.0.1:{remote}: accept4: too many open files, sleep for "
    );
    // Lines that name the cause, whatever their words.
    let count = || {
        frps.log_text()
            .to_ascii_lowercase()
            .matches("too many open files")
            .count()
    };
    let deadline = Instant::now() + WAIT;
    while count() == 0 {
        assert!(
            Instant::now() < deadline,
            "frps never named the cause:\n{}",
            frps.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Over a window of at least 3 s of failing accepts: one line a second at most (and one
    // for the window's start).
    let (start, n0) = (Instant::now(), count());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (secs, n1) = (start.elapsed().as_secs_f64(), count());
    assert!(
        (n1 - n0) as f64 <= secs.ceil() + 1.0,
        "{} lines in {secs:.1} s:\n{}",
        n1 - n0,
        frps.log_text()
    );
    // In frp's words.
    assert!(
        frps.log_text()
            .to_ascii_lowercase()
            .lines()
            .filter(|l| l.contains("too many open files"))
            .all(|l| l.contains(&words)),
        "{}",
        frps.log_text()
    );
    drop(users);
}
