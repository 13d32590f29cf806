//! TCP listeners as Go's `net.Listen` makes them, for every port frps and frpc listen on: one
//! place for the socket options, the backlog (the kernel's `somaxconn`, as Go asks for) and
//! errors in Go's words (`listen tcp 127.0.0.1:7000: bind: address already in use`), which
//! frp's users grep for; and [`Acceptor`], the accept loop's handling of failing accepts.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

/// The backlog asked for when `somaxconn` cannot be read. Go falls back to its frozen
/// `syscall.SOMAXCONN` (128); this asks for Linux's default `somaxconn` since 5.4, which the
/// kernel lowers to the real limit if that is smaller.
const FALLBACK_BACKLOG: i32 = 4096;

/// The `listen(2)` backlog: the kernel's `net.core.somaxconn`, as Go's
/// `maxListenerBacklog` reads it (std and tokio ask for 128 and 1024, and under a burst of
/// connections the rest time out in SYN retries while Go's listener takes them).
pub fn backlog() -> i32 {
    static BACKLOG: OnceLock<i32> = OnceLock::new();
    *BACKLOG.get_or_init(|| {
        parse_somaxconn(
            std::fs::read_to_string("/proc/sys/net/core/somaxconn")
                .ok()
                .as_deref(),
        )
    })
}

/// The first field of `/proc/sys/net/core/somaxconn`; [`FALLBACK_BACKLOG`] when it is
/// missing, not a number or 0 (as Go does).
fn parse_somaxconn(text: Option<&str>) -> i32 {
    match text
        .and_then(|t| t.split_whitespace().next())
        .and_then(|f| f.parse::<u64>().ok())
    {
        Some(n) if n > 0 => i32::try_from(n).unwrap_or(i32::MAX),
        _ => FALLBACK_BACKLOG,
    }
}

/// Go's text for an OS error: the C library's message with a lowercase first letter and
/// without Rust's ` (os error N)` (`address already in use`, `too many open files`).
pub fn os_error_text(e: &io::Error) -> String {
    let Some(code) = e.raw_os_error() else {
        return e.to_string();
    };
    let text = io::Error::from_raw_os_error(code).to_string();
    let text = text
        .strip_suffix(&format!(" (os error {code})"))
        .unwrap_or(&text);
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// An error of one step of opening a listener on `addr`, worded as Go's `*net.OpError`
/// (`listen tcp ADDR: SYSCALL: TEXT`); its kind is the OS error's.
fn listen_error(addr: SocketAddr, syscall: &str, e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!("listen tcp {addr}: {syscall}: {}", os_error_text(&e)),
    )
}

/// Listens on one address: SO_REUSEADDR (as Go and Rust's std set it on listeners),
/// close-on-exec, non-blocking. Errors read as Go's.
pub fn bind_addr(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| listen_error(addr, "socket", e))?;
    sock.set_reuse_address(true)
        .map_err(|e| listen_error(addr, "setsockopt", e))?;
    sock.bind(&addr.into())
        .map_err(|e| listen_error(addr, "bind", e))?;
    sock.listen(backlog())
        .map_err(|e| listen_error(addr, "listen", e))?;
    sock.set_nonblocking(true)
        .map_err(|e| listen_error(addr, "setsockopt", e))?;
    Ok(sock.into())
}

/// Binds the first of `addrs` that binds (as std and tokio do for a name with several
/// addresses); the last error otherwise.
fn bind_first(
    what: &str,
    addrs: impl Iterator<Item = SocketAddr>,
) -> io::Result<std::net::TcpListener> {
    let mut last = None;
    for a in addrs {
        match bind_addr(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("listen tcp {what}: no address to listen on"),
        )
    }))
}

/// [`bind_addr`] for `host:port` (resolved; the first address that binds), blocking.
pub fn bind_std(addr: &str) -> io::Result<std::net::TcpListener> {
    use std::net::ToSocketAddrs;
    let addrs = addr
        .to_socket_addrs()
        .map_err(|e| io::Error::new(e.kind(), format!("listen tcp {addr}: {e}")))?;
    bind_first(addr, addrs)
}

/// [`bind_addr`] for `host:port` (resolved; the first address that binds), as a tokio
/// listener.
pub async fn bind(addr: &str) -> io::Result<tokio::net::TcpListener> {
    let addrs = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("listen tcp {addr}: {e}")))?;
    tokio::net::TcpListener::from_std(bind_first(addr, addrs)?)
}

/// frp's accept loops sleep 5 ms after a failed accept, doubling up to 1 s.
const FIRST_DELAY: Duration = Duration::from_millis(5);
const MAX_DELAY: Duration = Duration::from_secs(1);

/// An accept loop's state for failing accepts (EMFILE when the process is out of file
/// descriptors, ENFILE, ENOBUFS…): frp's handling — sleep 5 ms, doubling up to 1 s, and try
/// again — and frp's words (`met temporary error: accept tcp 127.0.0.1:7000: accept4: too
/// many open files, sleep for 5ms ...`), at most one line a second: users can make accepts
/// fail, and each success resets the delay, so a line per failure would flood the log. A
/// line after quiet ones says how many were left out.
pub struct Acceptor {
    /// Put in front of each line, e.g. `[run id] [proxy name] `.
    prefix: String,
    delay: Duration,
    /// One line a second.
    budget: crate::log::LineBudget,
}

impl Acceptor {
    pub fn new(prefix: impl Into<String>) -> Self {
        Acceptor {
            prefix: prefix.into(),
            delay: Duration::ZERO,
            budget: crate::log::LineBudget::new(1),
        }
    }

    /// The next connection; failing accepts are reported and retried.
    pub async fn accept(
        &mut self,
        l: &tokio::net::TcpListener,
    ) -> (tokio::net::TcpStream, SocketAddr) {
        loop {
            match l.accept().await {
                Ok(c) => {
                    self.delay = Duration::ZERO;
                    return c;
                }
                Err(e) => {
                    self.delay = (self.delay * 2).clamp(FIRST_DELAY, MAX_DELAY);
                    let local = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let error = format!("accept tcp {local}: accept4: {}", os_error_text(&e));
                    if let Some(line) = self.report(Instant::now(), &error) {
                        tracing::info!("{line}");
                    }
                    tokio::time::sleep(self.delay).await;
                }
            }
        }
    }

    /// The line to log for a failed accept at `now`, if one is due.
    fn report(&mut self, now: Instant, error: &str) -> Option<String> {
        let suppressed = self.budget.take_at(now)?;
        let mut line = format!(
            "{}met temporary error: {error}, sleep for {:?} ...",
            self.prefix, self.delay
        );
        if suppressed > 0 {
            line.push_str(&format!(" ({suppressed} similar lines suppressed)"));
        }
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_read_as_go_writes_them() {
        let e = io::Error::from_raw_os_error(libc_errno::EADDRINUSE);
        assert_eq!(os_error_text(&e), "address already in use");
        let e = io::Error::from_raw_os_error(libc_errno::EMFILE);
        assert_eq!(os_error_text(&e), "too many open files");
        let e = io::Error::other("plain");
        assert_eq!(os_error_text(&e), "plain");
    }

    /// Linux errno values (the crate does not depend on libc).
    mod libc_errno {
        pub const EMFILE: i32 = 24;
        pub const EADDRINUSE: i32 = 98;
    }

    #[test]
    fn backlog_is_somaxconn_as_go_reads_it() {
        assert_eq!(parse_somaxconn(Some("4096\n")), 4096);
        assert_eq!(parse_somaxconn(Some("65535")), 65535);
        assert_eq!(parse_somaxconn(Some("200000\n")), 200000);
        assert_eq!(parse_somaxconn(Some("99999999999")), i32::MAX);
        assert_eq!(parse_somaxconn(Some("0\n")), FALLBACK_BACKLOG);
        assert_eq!(parse_somaxconn(Some("x")), FALLBACK_BACKLOG);
        assert_eq!(parse_somaxconn(None), FALLBACK_BACKLOG);
        if let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/somaxconn") {
            assert_eq!(backlog().to_string(), text.trim());
        }
    }

    /// A burst of failures: one line, then none within the second, then one that counts
    /// the ones left out; each line in frp's words.
    #[test]
    fn accept_errors_are_reported_once_a_second_with_a_count() {
        let mut a = Acceptor::new("[p] ");
        a.delay = FIRST_DELAY;
        let t0 = Instant::now();
        let e = "accept tcp 127.0.0.1:7000: accept4: too many open files";
        assert_eq!(
            a.report(t0, e).as_deref(),
            Some(
                "[p] met temporary error: accept tcp 127.0.0.1:7000: accept4: too many open files, sleep for 5ms ..."
            )
        );
        for i in 1..=100 {
            assert_eq!(a.report(t0 + Duration::from_millis(i * 9), e), None);
        }
        a.delay = MAX_DELAY;
        let line = a.report(t0 + Duration::from_secs(1), e).unwrap();
        assert!(
            line.ends_with("too many open files, sleep for 1s ... (100 similar lines suppressed)"),
            "{line}"
        );
        assert_eq!(a.report(t0 + Duration::from_millis(1500), e), None);
    }

    /// More connections than std's (128) and tokio's (1024) backlog complete their handshake
    /// while nobody accepts: the kernel queues them up to the backlog asked for.
    #[test]
    fn the_backlog_holds_more_than_1024_pending_connections() {
        // As many as this process may open (one descriptor each), up to 1100.
        let fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| {
                let line = t.lines().find(|l| l.starts_with("Max open files"))?;
                line.split_whitespace().nth(3)?.parse::<usize>().ok()
            })
            .unwrap_or(1024);
        let want = 1100.min(fds.saturating_sub(200));
        if want <= 128 || backlog() < want as i32 + 10 {
            return; // too few descriptors or a low somaxconn here: nothing to show
        }
        let l = bind_std("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut conns = Vec::new();
        for i in 0..want {
            // A full accept queue drops the SYN: connect would wait (and retry) for seconds.
            let c = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {i} of {want}: {e}"));
            conns.push(c);
        }
        drop(l);
    }

    #[tokio::test]
    async fn a_busy_port_is_refused_in_gos_words_once() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let e = bind(&addr.to_string()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        assert_eq!(
            e.to_string(),
            format!("listen tcp {addr}: bind: address already in use")
        );
        let l = bind("127.0.0.1:0").await.unwrap();
        assert!(l.local_addr().unwrap().port() != 0);
    }
}
