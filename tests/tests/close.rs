//! Close propagation end to end: a full close (or an error) on one side of a tunnel ends the
//! other side promptly, with tcpMux on and off and through the HTTP vhost, while a half-close
//! (shutdown of writing) still lets the reply through.
//!
//! "Promptly" is asserted with a generous deadline (the CI machine is a loaded 2-core box);
//! before the fix the far side was never told at all: a local service kept streaming into a
//! tunnel whose user had left, and a user kept uploading into a closed service.

use std::time::{Duration, Instant};

use e2e::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

const TOKEN: &str = "close-token";
/// How long the far side may take to learn of a close.
const PROMPT: Duration = Duration::from_secs(5);
const CHUNK: usize = 64 * 1024;

/// The tunnel set-ups of the matrix: tcpMux with TLS (frp's default), tcpMux without TLS,
/// no tcpMux.
#[derive(Clone, Copy, Debug)]
enum Mode {
    MuxTls,
    Mux,
    NoMux,
}

impl Mode {
    fn mux(self) -> bool {
        !matches!(self, Mode::NoMux)
    }
    fn tls(self) -> bool {
        matches!(self, Mode::MuxTls)
    }
}

/// How one connection of a local service (or of a user) ended while it was writing.
#[derive(Debug)]
struct WriterEnd {
    /// When the write failed (the close reached this side).
    at: Instant,
    error: std::io::ErrorKind,
    /// Bytes written before the failure (printed, for the record: socket buffers and the
    /// tunnel's windows hold a few MiB).
    written: u64,
}

/// Writes `CHUNK`s to `s` until a write fails; reports when and how.
async fn write_until_error(s: TcpStream) -> WriterEnd {
    write_repeatedly(s, &vec![0x5a; CHUNK]).await
}

/// Writes `data` to `s` again and again until a write fails; reports when and how.
async fn write_repeatedly(mut s: TcpStream, data: &[u8]) -> WriterEnd {
    let mut written = 0;
    loop {
        if let Err(e) = s.write_all(data).await {
            return WriterEnd {
                at: Instant::now(),
                error: e.kind(),
                written,
            };
        }
        written += data.len() as u64;
    }
}

/// A local service on 127.0.0.1 that runs `serve` on each connection and reports what it
/// returns (nothing for `None`); returns its port and the reports.
async fn reporting_service<T, F, Fut>(serve: F) -> (u16, mpsc::UnboundedReceiver<T>)
where
    T: Send + 'static,
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = Option<T>> + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel();
    let port = tcp_service(move |s| {
        let tx = tx.clone();
        let served = serve(s);
        async move {
            if let Some(report) = served.await {
                let _ = tx.send(report);
            }
        }
    })
    .await;
    (port, rx)
}

/// A local service that streams to each connection until its write fails.
async fn streaming_service() -> (u16, mpsc::UnboundedReceiver<WriterEnd>) {
    reporting_service(|s| async move { Some(write_until_error(s).await) }).await
}

/// A local service that reads `CHUNK` bytes of each connection, then closes it (with unread
/// data behind them).
async fn closing_service() -> u16 {
    tcp_service(|mut s| async move {
        let mut buf = vec![0; CHUNK];
        let _ = s.read_exact(&mut buf).await;
    })
    .await
}

/// A local service that reads until EOF (or an error) and reports when it came; it never
/// writes.
async fn reading_service() -> (u16, mpsc::UnboundedReceiver<Instant>) {
    reporting_service(|mut s| async move {
        let mut buf = vec![0; CHUNK];
        while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        Some(Instant::now())
    })
    .await
}

/// frps + frpc with one tcp proxy to `local`; returns the processes and the public port.
fn tunnel(env: &Env, mode: Mode, local: u16) -> (Proc, Proc, u16) {
    let bind = free_port();
    let remote = free_port();
    let frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\ntransport.tcpMux = {}\nlog.level = \"debug\"",
            mode.mux()
        ),
    );
    let frpc = env.frpc(
        "frpc",
        &frpc_tcp_config(bind, TOKEN, mode.mux(), mode.tls(), false, local, remote),
    );
    frpc.wait_log("[echo] start proxy success", Duration::from_secs(10));
    (frps, frpc, remote)
}

/// A user of the public port that reads `CHUNK` bytes, then closes (unread data behind them):
/// the local service, which streams, must have its writes fail.
async fn user_leaves_a_download(mode: Mode) {
    let env = Env::new();
    let (local, mut ends) = streaming_service().await;
    let (_frps, _frpc, remote) = tunnel(&env, mode, local);
    for round in 0..3 {
        let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let mut buf = vec![0; CHUNK];
        tokio::time::timeout(PROMPT, user.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("{mode:?} round {round}: no data through the tunnel"))
            .unwrap();
        drop(user);
        let left = Instant::now();
        let end = tokio::time::timeout(PROMPT, ends.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{mode:?} round {round}: the local service still streams {PROMPT:?} after \
                     the user closed"
                )
            })
            .expect("service reports");
        eprintln!(
            "{mode:?} round {round}: service write failed ({:?}) {:?} after the user left, \
             {} bytes written in all",
            end.error,
            end.at.saturating_duration_since(left),
            end.written
        );
    }
}

/// A user uploads into a local service that reads a little and closes: the user's writes
/// must fail.
async fn service_closes_during_an_upload(mode: Mode) {
    let env = Env::new();
    let local = closing_service().await;
    let (_frps, _frpc, remote) = tunnel(&env, mode, local);
    for round in 0..3 {
        let user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
        let started = Instant::now();
        // The service closes after CHUNK bytes; the user must learn of it, not keep
        // uploading into nothing (before the fix it went on for gigabytes).
        let end = tokio::time::timeout(PROMPT * 2, write_until_error(user))
            .await
            .unwrap_or_else(|_| {
                panic!("{mode:?} round {round}: the user still uploads into a closed service")
            });
        eprintln!(
            "{mode:?} round {round}: user write failed ({:?}) {:?} after it started, {} bytes \
             written in all",
            end.error,
            end.at.saturating_duration_since(started),
            end.written
        );
    }
}

/// A user sends a little and closes, with nothing flowing back: the service reads EOF.
async fn user_closes_while_idle(mode: Mode) {
    let env = Env::new();
    let (local, mut eofs) = reading_service().await;
    let (_frps, _frpc, remote) = tunnel(&env, mode, local);
    let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    user.write_all(b"hello").await.unwrap();
    drop(user);
    tokio::time::timeout(PROMPT, eofs.recv())
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: the service never saw the user's close"))
        .expect("service reports");
}

/// The service closes while the user only reads: the user reads EOF.
async fn service_closes_while_idle(mode: Mode) {
    let env = Env::new();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let local = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"bye").await;
        }
    });
    let (_frps, _frpc, remote) = tunnel(&env, mode, local);
    let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PROMPT, user.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: the user never saw the service's close"))
        .unwrap();
    assert_eq!(got, b"bye", "{mode:?}");
}

/// A half-close still lets the reply through: the user sends a request and shuts down its
/// writing; the service answers only after the EOF, with more than a window's worth.
async fn half_close_keeps_the_reply(mode: Mode) {
    let env = Env::new();
    let reply = pattern(8 << 20, 3);
    let served = reply.clone();
    let local = tcp_service(move |mut s| {
        let served = served.clone();
        async move {
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            assert_eq!(req, b"request");
            s.write_all(&served).await.unwrap();
        }
    })
    .await;
    let (_frps, _frpc, remote) = tunnel(&env, mode, local);
    let mut user = TcpStream::connect(("127.0.0.1", remote)).await.unwrap();
    user.write_all(b"request").await.unwrap();
    user.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), user.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{mode:?}: reply timed out"))
        .unwrap();
    assert_eq!(got.len(), reply.len(), "{mode:?}: reply length");
    assert!(got == reply, "{mode:?}: reply corrupted");
}

macro_rules! cases {
    ($($name:ident: $f:ident($mode:expr);)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            $f($mode).await;
        }
    )*};
}

cases! {
    user_leaves_a_download_mux_tls: user_leaves_a_download(Mode::MuxTls);
    user_leaves_a_download_mux: user_leaves_a_download(Mode::Mux);
    user_leaves_a_download_nomux: user_leaves_a_download(Mode::NoMux);
    service_closes_during_an_upload_mux_tls: service_closes_during_an_upload(Mode::MuxTls);
    service_closes_during_an_upload_mux: service_closes_during_an_upload(Mode::Mux);
    service_closes_during_an_upload_nomux: service_closes_during_an_upload(Mode::NoMux);
    user_closes_while_idle_mux: user_closes_while_idle(Mode::MuxTls);
    user_closes_while_idle_nomux: user_closes_while_idle(Mode::NoMux);
    service_closes_while_idle_mux: service_closes_while_idle(Mode::MuxTls);
    service_closes_while_idle_nomux: service_closes_while_idle(Mode::NoMux);
    half_close_keeps_the_reply_mux: half_close_keeps_the_reply(Mode::MuxTls);
    half_close_keeps_the_reply_nomux: half_close_keeps_the_reply(Mode::NoMux);
}

/// An HTTP backend that answers every request with an endless chunked stream (server-sent
/// events) and reports when its writes fail.
async fn sse_backend() -> (u16, mpsc::UnboundedReceiver<WriterEnd>) {
    reporting_service(|mut s| async move {
        // Read the request head.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if !matches!(s.read(&mut byte).await, Ok(1)) {
                return None;
            }
            head.push(byte[0]);
        }
        let start = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                      Transfer-Encoding: chunked\r\n\r\n";
        if s.write_all(start).await.is_err() {
            return None;
        }
        let event = format!("data: {}\n\n", "x".repeat(16 * 1024));
        let chunk = format!("{:x}\r\n{event}\r\n", event.len());
        Some(write_repeatedly(s, chunk.as_bytes()).await)
    })
    .await
}

async fn sse_user_leaves(mux: bool) {
    let env = Env::new();
    let (backend, mut ends) = sse_backend().await;
    let bind = free_port();
    let http = free_port();
    let _frps = env.frps(
        "frps",
        bind,
        &format!(
            "auth.token = \"{TOKEN}\"\ntransport.tcpMux = {mux}\nvhostHTTPPort = {http}\n\
             log.level = \"debug\""
        ),
    );
    let frpc = env.frpc(
        "frpc",
        &format!(
            "{}customDomains = [\"sse.example.com\"]\n",
            frpc_proxy_config(
                bind,
                TOKEN,
                &format!("transport.tcpMux = {mux}\nlog.level = \"debug\""),
                "sse",
                "http",
                backend
            )
        ),
    );
    frpc.wait_log("[sse] start proxy success", Duration::from_secs(10));
    for round in 0..3 {
        let mut user = TcpStream::connect(("127.0.0.1", http)).await.unwrap();
        user.write_all(b"GET /events HTTP/1.1\r\nHost: sse.example.com\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0; CHUNK];
        tokio::time::timeout(PROMPT, user.read_exact(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no events through the vhost"))
            .unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 200"), "round {round}");
        drop(user);
        let left = Instant::now();
        let end = tokio::time::timeout(PROMPT, ends.recv())
            .await
            .unwrap_or_else(|_| {
                panic!("round {round}: the backend still streams {PROMPT:?} after the user left")
            })
            .expect("backend reports");
        eprintln!(
            "mux={mux} round {round}: backend write failed ({:?}) {:?} after the user left, \
             {} bytes written in all",
            end.error,
            end.at.saturating_duration_since(left),
            end.written
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_streaming_response_stops_when_the_user_leaves_mux() {
    sse_user_leaves(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vhost_streaming_response_stops_when_the_user_leaves_nomux() {
    sse_user_leaves(false).await;
}
