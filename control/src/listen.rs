//! TCP listeners as Go's `net.Listen` makes them, for every port frps and frpc listen on: one
//! place for the socket options and for errors in Go's words (`listen tcp 127.0.0.1:7000:
//! bind: address already in use`), which frp's users grep for.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// The `listen(2)` backlog.
fn backlog() -> i32 {
    1024
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
