//! TLS work connections on the data plane's cores.
//!
//! Without tcpMux every work connection is a TLS session of its own over a TCP socket (frp's
//! default `transport.tls.enable`). Once frp's messages are exchanged on it, the pair goes to
//! the data plane; a [`TlsStream`] over a bare TCP socket goes there taken apart
//! ([`dataplane::Endpoint::Tls`]): the socket, the bytes it already read or owes, and two
//! transforms over rustls' session state — [`Open`] decrypts records where the core read them,
//! [`Seal`] encrypts what the core writes, and its `finish` sends close_notify before the FIN.
//! No tokio task, no socket registration and no stream buffers stay with the pair.
//!
//! The two transforms share the session (one lock, only ever taken by the core that owns the
//! pair). What rustls answers while opening — a KeyUpdate of our own after the peer's
//! `update_requested` — leaves before the next sealed record: TLS 1.3 asks for it "prior to
//! sending its next Application Data record" (RFC 8446 §4.6.3), and neither Go nor rustls waits
//! for it.
//!
//! A TLS stream over anything else (a proxy tunnel, a websocket, KCP) stays a stream and is
//! relayed on tokio, as is a session that failed or is closing when the pair is made.

use std::sync::{Arc, Mutex};

use dataplane::{AsyncStream, Endpoint, SplitTls, TlsParts, Transform, TransformError};
use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::stream::{Outgoing, Sink, Step, TlsSide, TlsStream, Want, process};
use crate::transport::Conn;

/// The largest run of ciphertext a session keeps between reads: part of one record, or a
/// post-handshake message spread over a few (rustls keeps those until complete). More means a
/// peer sending what never completes.
const MAX_KEPT: usize = 4 * (16384 + 2048 + 5);

/// The data-plane endpoint for a connection handed over as a boxed stream: a TLS stream over
/// a bare TCP socket is taken apart ([`Endpoint::Tls`]), anything else stays a stream.
pub fn endpoint(stream: Box<dyn AsyncStream>) -> Endpoint {
    // The stream's own type, not the box's (which is an `AsyncStream` too).
    let any = (*stream).as_any();
    if any.is::<TlsStream<TcpStream, UnbufferedServerConnection>>() {
        return split_or_stream(
            downcast::<TlsStream<TcpStream, UnbufferedServerConnection>>(stream),
        );
    }
    if any.is::<TlsStream<Conn, UnbufferedClientConnection>>() {
        return split_or_stream(downcast::<TlsStream<Conn, UnbufferedClientConnection>>(
            stream,
        ));
    }
    Endpoint::Stream(stream)
}

fn downcast<T: 'static>(stream: Box<dyn AsyncStream>) -> Box<T> {
    stream
        .into_any()
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("the type was checked"))
}

fn split_or_stream<IO, S>(mut tls: Box<TlsStream<IO, S>>) -> Endpoint
where
    IO: BareTcp,
    S: TlsSide,
{
    if tls.get_ref().is_bare() && tls.open_all() {
        Endpoint::Tls(tls)
    } else {
        Endpoint::Stream(tls)
    }
}

/// A TLS stream's transport that may be a bare TCP socket.
pub(super) trait BareTcp: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    fn is_bare(&self) -> bool;
    /// The socket ([`BareTcp::is_bare`] said so).
    fn into_tcp(self) -> TcpStream;
}

impl BareTcp for TcpStream {
    fn is_bare(&self) -> bool {
        true
    }
    fn into_tcp(self) -> TcpStream {
        self
    }
}

impl BareTcp for Conn {
    fn is_bare(&self) -> bool {
        matches!(self, Conn::Tcp(_))
    }
    fn into_tcp(self) -> TcpStream {
        match self {
            Conn::Tcp(tcp) => tcp,
            _ => unreachable!("is_bare said a bare TCP socket"),
        }
    }
}

impl<IO: BareTcp, S: TlsSide> SplitTls for TlsStream<IO, S> {
    fn into_parts(self: Box<Self>) -> TlsParts {
        let p = apart(*self);
        TlsParts {
            io: p.io.into_tcp(),
            opened: p.opened,
            owed: p.owed,
            open: p.open,
            seal: p.seal,
        }
    }
}

/// Takes a TLS stream apart over any transport, for a caller that moves the records itself
/// (the data plane does it for bare TCP sockets through [`SplitTls`]; the fuzz targets over
/// memory). The stream comes back where it cannot be: it failed, or is closing.
pub fn take_apart<IO, S>(
    mut tls: Box<TlsStream<IO, S>>,
) -> Result<TlsParts<IO>, Box<TlsStream<IO, S>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: TlsSide,
{
    if tls.open_all() {
        Ok(apart(*tls))
    } else {
        Err(tls)
    }
}

/// [`take_apart`] once `open_all` said yes.
fn apart<IO, S>(tls: TlsStream<IO, S>) -> TlsParts<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: TlsSide,
{
    let (io, conn, rx, opened, owed) = tls.into_raw();
    let session = Arc::new(Mutex::new(Session {
        conn,
        rx,
        tx: Outgoing::default(),
        failed: None,
    }));
    TlsParts {
        io,
        opened,
        owed,
        open: Box::new(Open(session.clone())),
        seal: Box::new(Seal(session)),
    }
}

/// rustls' state of one connection, shared by its [`Open`] and [`Seal`].
struct Session<S> {
    conn: S,
    /// Ciphertext not yet done with: part of a record (usually empty, and then unallocated).
    rx: Vec<u8>,
    /// What rustls produced while opening (a KeyUpdate answer), owed to the peer.
    tx: Outgoing,
    /// The first error: every later call reports it.
    failed: Option<String>,
}

impl<S: TlsSide> Session<S> {
    fn fail(&mut self, e: rustls::Error) -> TransformError {
        let text = format!("tls: {e}");
        self.failed = Some(text.clone());
        TransformError(text)
    }

    fn check(&self) -> Result<(), TransformError> {
        match &self.failed {
            Some(e) => Err(TransformError(e.clone())),
            None => Ok(()),
        }
    }

    /// Opens the complete records at the start of `incoming` onto `out`; returns how much of
    /// it is done with.
    fn open(&mut self, incoming: &mut [u8], out: &mut Vec<u8>) -> Result<usize, TransformError> {
        let mut done = 0;
        loop {
            let (r, n) = process(
                &mut self.conn,
                &mut incoming[done..],
                &mut self.tx,
                Sink::Append(out),
                Want::Read,
            );
            done += n;
            match r {
                Ok(Step::Data) => {}
                Ok(_) => return Ok(done),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Seals `want` (data, or close_notify) onto `out`.
    fn seal(&mut self, want: Want<'_>, out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut tx = Outgoing::after(std::mem::take(out));
        let mut late = Vec::new();
        let mut peer_closed_seen = false;
        let result = loop {
            // rustls looks at what is kept of a record first (it cannot complete one).
            let (r, n) = process(
                &mut self.conn,
                &mut self.rx[..],
                &mut tx,
                Sink::Append(&mut late),
                want,
            );
            self.rx.drain(..n);
            match r {
                Ok(Step::Done) => break Ok(()),
                // The peer's close_notify, seen once: sending goes on (half-close).
                Ok(Step::PeerClosed) if !peer_closed_seen => peer_closed_seen = true,
                Ok(Step::Data) if late.is_empty() => {}
                Ok(Step::Data) => {
                    break Err(TransformError(
                        "tls: a record completed while sealing".into(),
                    ));
                }
                Ok(Step::Closed | Step::PeerClosed) => {
                    break Err(TransformError("tls: the session is closed".into()));
                }
                Ok(Step::NeedData | Step::Ready) => {
                    break Err(TransformError("tls: the session cannot send yet".into()));
                }
                Err(e) => break Err(self.fail(e)),
            }
        };
        *out = tx.into_vec();
        result
    }
}

fn lock<S>(
    session: &Mutex<Session<S>>,
) -> Result<std::sync::MutexGuard<'_, Session<S>>, TransformError> {
    session
        .lock()
        .map_err(|_| TransformError("tls: the session's state was lost".into()))
}

/// Wire bytes → plaintext: [`Transform::transform_mut`] decrypts records where they lie.
struct Open<S>(Arc<Mutex<Session<S>>>);

impl<S: TlsSide> Transform for Open<S> {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        self.transform_mut(&mut input.to_vec(), out)
    }

    fn transform_mut(&mut self, input: &mut [u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut s = lock(&self.0)?;
        s.check()?;
        if s.rx.is_empty() {
            let n = s.open(input, out)?;
            s.rx.extend_from_slice(&input[n..]);
        } else {
            let mut rx = std::mem::take(&mut s.rx);
            rx.extend_from_slice(input);
            let n = s.open(&mut rx, out)?;
            rx.drain(..n);
            // Idle sessions keep no buffer.
            s.rx = if rx.is_empty() { Vec::new() } else { rx };
        }
        if s.rx.len() > MAX_KEPT {
            let kept = s.rx.len();
            return Err(s.fail(rustls::Error::General(format!(
                "{kept} bytes of ciphertext that never complete a record"
            ))));
        }
        Ok(())
    }
}

/// Plaintext → wire bytes; `finish` queues close_notify.
struct Seal<S>(Arc<Mutex<Session<S>>>);

impl<S: TlsSide> Transform for Seal<S> {
    fn transform(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), TransformError> {
        let mut s = lock(&self.0)?;
        s.check()?;
        if s.tx.pending() {
            out.extend_from_slice(s.tx.pending_bytes());
            s.tx.release();
        }
        if input.is_empty() {
            return Ok(());
        }
        s.seal(Want::Write(input), out)
    }

    fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), TransformError> {
        self.transform(&[], out)?;
        let mut s = lock(&self.0)?;
        s.seal(Want::Close, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{accept, client_config, connect, server_config, server_name};
    use bytes::Bytes;
    use dataplane::{Engine, EngineConfig, EngineKind, Pair, Side};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    fn engine(kind: EngineKind) -> Engine {
        Engine::new(EngineConfig {
            engine: kind,
            threads: 1,
            ..EngineConfig::default()
        })
    }

    async fn read_n<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        r.read_exact(&mut got).await.unwrap();
        got
    }

    /// Our server end of a TLS session (frps' work connection), taken apart onto a core, between
    /// tokio-rustls (rustls' buffered API: a record layer of its own) and a plain TCP socket:
    /// what the control plane read ahead and what the TLS stream still held come first, a
    /// KeyUpdate asking for ours mid-stream is answered, and each end reaches the other — ours
    /// with close_notify (without it tokio-rustls reads an error, not the end).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tls_side_is_carried_by_a_core() {
        for kind in [EngineKind::Epoll, EngineKind::IoUring, EngineKind::Tokio] {
            let engine = engine(kind);
            let (ct, st) = tcp_pair().await;
            let server = tokio::spawn(accept(st, server_config("", "", "").unwrap()));
            let mut client = tokio_rustls::TlsConnector::from(client_config("", "", "").unwrap())
                .connect(server_name("127.0.0.1").unwrap(), ct)
                .await
                .unwrap();
            let mut server = server.await.unwrap().unwrap();
            // frp's messages and the first bytes after them, in two records; the control
            // plane reads part of the first.
            client.write_all(b"hello ").await.unwrap();
            client.flush().await.unwrap();
            client.write_all(b"world").await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_n(&mut server, 3).await, b"hel");
            let endpoint = endpoint(Box::new(server));
            assert!(matches!(endpoint, Endpoint::Tls(_)), "a bare TCP socket");
            let (mut user, theirs) = tcp_pair().await;
            engine.spawn(Pair {
                a: Side {
                    prefix: Bytes::from_static(b"hel"),
                    ..Side::plain(endpoint)
                },
                b: Side::plain(Endpoint::Tcp(theirs)),
                counters: None,
                limiter: None,
            });
            assert_eq!(read_n(&mut user, 11).await, b"hello world");
            user.write_all(b"ping").await.unwrap();
            assert_eq!(read_n(&mut client, 4).await, b"ping");

            // The peer updates its keys and asks for ours: both directions go on.
            client.get_mut().1.refresh_traffic_keys().unwrap();
            client.write_all(b"after the update").await.unwrap();
            client.flush().await.unwrap();
            assert_eq!(read_n(&mut user, 16).await, b"after the update");
            user.write_all(b"pong").await.unwrap();
            assert_eq!(read_n(&mut client, 4).await, b"pong");

            // Bulk both ways (records cut by the core's reads, many per read).
            let up: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7) as u8).collect();
            let down: Vec<u8> = (0..2 << 20).map(|i: u32| (i * 13) as u8).collect();
            let (mut cr, mut cw) = tokio::io::split(client);
            let (mut ur, mut uw) = user.into_split();
            let (got_up, got_down, ..) = tokio::join!(
                read_n(&mut ur, up.len()),
                read_n(&mut cr, down.len()),
                async { cw.write_all(&up).await.unwrap() },
                async { uw.write_all(&down).await.unwrap() },
            );
            assert!(got_up == up, "{kind:?}: client → user");
            assert!(got_down == down, "{kind:?}: user → client");

            // Our end first: close_notify, then the FIN.
            uw.shutdown().await.unwrap();
            let mut rest = Vec::new();
            cr.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            // Then theirs.
            cw.shutdown().await.unwrap();
            ur.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
            if kind != EngineKind::Tokio {
                assert_eq!(engine.stats().tokio_pairs, 0, "{kind:?}: on a core");
            }
        }
    }

    /// frpc's end (TLS over a `Conn`) is taken apart when the `Conn` is a bare TCP socket, and
    /// stays a stream over anything else.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn our_client_end_is_carried_by_a_core_over_tcp_only() {
        let engine = engine(EngineKind::Epoll);
        let (ct, st) = tcp_pair().await;
        let server = tokio::spawn(async move {
            tokio_rustls::TlsAcceptor::from(server_config("", "", "").unwrap())
                .accept(st)
                .await
                .unwrap()
        });
        let client = connect(
            Conn::Tcp(ct),
            client_config("", "", "").unwrap(),
            server_name("127.0.0.1").unwrap(),
        )
        .await
        .unwrap();
        let mut server = server.await.unwrap();
        let endpoint = crate::transport::boxed(client).into_endpoint();
        assert!(matches!(endpoint, Endpoint::Tls(_)));
        let (mut local, theirs) = tcp_pair().await;
        engine.spawn(Pair {
            a: Side::plain(endpoint),
            b: Side::plain(Endpoint::Tcp(theirs)),
            counters: None,
            limiter: None,
        });
        server.write_all(b"from frps").await.unwrap();
        server.flush().await.unwrap();
        assert_eq!(read_n(&mut local, 9).await, b"from frps");
        local.write_all(b"from the service").await.unwrap();
        assert_eq!(read_n(&mut server, 16).await, b"from the service");
        assert_eq!(engine.stats().tokio_pairs, 0);

        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            tokio_rustls::TlsAcceptor::from(server_config("", "", "").unwrap())
                .accept(b)
                .await
                .unwrap()
        });
        let client = connect(
            crate::transport::boxed(a),
            client_config("", "", "").unwrap(),
            server_name("127.0.0.1").unwrap(),
        )
        .await
        .unwrap();
        let _server = server.await.unwrap();
        let endpoint = crate::transport::boxed(client).into_endpoint();
        assert!(matches!(endpoint, Endpoint::Stream(_)), "not a TCP socket");
    }
}
