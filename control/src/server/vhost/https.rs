//! https proxies: SNI routing on `vhostHTTPSPort` (spec §11.2). frps does not terminate TLS:
//! it reads the ClientHello (rustls' [`Acceptor`], which parses a ClientHello without going on
//! with the handshake), routes by its server name like http with path "" and user "", and
//! joins the whole byte stream — the ClientHello included, as the user side's prefix — with a
//! work connection.
//!
//! No route: frps answers with a fatal `unrecognized_name` alert and closes (frp lets Go's TLS
//! stack fail a handshake with an empty config, which also ends in a fatal alert).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use dataplane::{Endpoint, Side};
use rustls::server::Acceptor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::debug;

use super::{MUX_READ_TIMEOUT, canonical_host};
use crate::server::State;
use crate::server::tcp::start_work_conn_for;

/// The most ClientHello bytes frps buffers before giving up.
const MAX_HELLO: usize = 64 * 1024;

/// A TLS 1.2-framed fatal `unrecognized_name` (112) alert.
const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

pub(crate) async fn serve(st: Arc<State>, l: TcpListener) {
    let mut acceptor = crate::listen::Acceptor::new("");
    loop {
        let (tcp, remote) = super::accept(&l, &mut acceptor).await;
        tokio::spawn(handle(st.clone(), tcp, remote));
    }
}

/// Routes one connection by its ClientHello's SNI (also for connections that arrived on
/// bindPort when vhostHTTPSPort = bindPort).
pub(crate) async fn handle(st: Arc<State>, mut tcp: TcpStream, remote: SocketAddr) {
    let hello = match tokio::time::timeout(MUX_READ_TIMEOUT, read_client_hello(&mut tcp)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!("get hostname from https request of {remote} error: {e}");
            return;
        }
        Err(_) => {
            debug!("get hostname from https request of {remote} error: timeout");
            return;
        }
    };
    let host = canonical_host(hello.server_name.as_deref().unwrap_or(""));
    let route = st
        .vhost
        .https
        .lock()
        .unwrap()
        .lookup(&host, "", "")
        .cloned();
    let Some(member) = route.and_then(|r| r.pick()) else {
        debug!("https request for host [{host}] from {remote}: no route found");
        let _ = tcp.write_all(&UNRECOGNIZED_NAME_ALERT).await;
        let _ = tcp.shutdown().await;
        return;
    };
    debug!(
        "[{}] [{}] new https connection for host [{host}] from {remote}",
        member.ctl.run_id, member.info.name
    );
    if !st.admit_user(&member.ctl, &member.info, &remote).await {
        return;
    }
    let start = start_work_conn_for(&member.info.name, &remote, tcp.local_addr().ok());
    let user = Side {
        prefix: Bytes::from(hello.bytes),
        ..Side::plain(Endpoint::Tcp(tcp))
    };
    st.join_user_conn(member.ctl, member.info, user, start)
        .await;
}

/// What was read of a TLS connection: every byte, and the ClientHello's server name.
pub(crate) struct Hello {
    pub bytes: Vec<u8>,
    pub server_name: Option<String>,
}

/// Reads until a whole ClientHello has arrived (it may span several records and reads).
pub(crate) async fn read_client_hello<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> io::Result<Hello> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        bytes.extend_from_slice(&chunk[..n]);
        if bytes.len() > MAX_HELLO {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "ClientHello too large",
            ));
        }
        let mut rest = &chunk[..n];
        while !rest.is_empty() {
            acceptor.read_tls(&mut rest)?;
        }
        match acceptor.accept() {
            Ok(Some(accepted)) => {
                let server_name = accepted.client_hello().server_name().map(str::to_string);
                return Ok(Hello { bytes, server_name });
            }
            Ok(None) => continue,
            Err((e, _alert)) => {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls' client, fed in small pieces, yields its SNI and every
    /// byte read.
    #[tokio::test]
    async fn sni_from_a_fragmented_client_hello() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let roots = rustls::RootCertStore::empty();
        let cfg = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("A.Example.com").unwrap();
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
        let mut wire = Vec::new();
        conn.write_tls(&mut wire).unwrap();
        assert!(wire.len() > 50);

        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = wire.clone();
        let w = tokio::spawn(async move {
            for piece in sent.chunks(7) {
                a.write_all(piece).await.unwrap();
            }
            a
        });
        let hello = read_client_hello(&mut b).await.unwrap();
        assert_eq!(
            canonical_host(hello.server_name.as_deref().unwrap()),
            "a.example.com"
        );
        assert_eq!(hello.bytes, wire);
        drop(w.await.unwrap());
    }

    #[tokio::test]
    async fn garbage_is_rejected() {
        let mut data: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        assert!(read_client_hello(&mut data).await.is_err());
    }
}
