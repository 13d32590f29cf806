//! The opening exchange of a logical connection, for both wire protocols (spec §2.5, §4):
//!
//! - frps: [`server_accept`] detects v1/v2, answers a v2 ClientHello with a ServerHello (or a
//!   rejection, then closes) and returns the first message with the negotiated crypto.
//! - frpc: [`client_login`] sends (magic, ClientHello,) Login back to back, checks the
//!   ServerHello and reads LoginResp, still in the clear.
//! - both: [`enable_control_encryption`] switches a control connection to AES-128-CFB (v1) or
//!   to the AEAD streams keyed from the Hello transcript (v2) right after LoginResp.

use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tracing::warn;

use crate::crypto::CryptoKey;
use crate::msg::{Login, LoginResp, Message};
use crate::msgconn::{MsgConn, MsgError};
use crate::wire_v2::{
    BootstrapInfo, CRYPTO_RANDOM_LEN, ClientHello, CryptoContext, FRAME_CLIENT_HELLO,
    FRAME_MESSAGE, FRAME_SERVER_HELLO, HelloError, ServerHello, WireVersion, decode_message_frame,
};

/// How long frpc waits for ServerHello + LoginResp.
pub const LOGIN_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// **Test-only hook.** When this environment variable holds 64 hex digits, frps uses them as
/// the `serverRandom` of every v2 ServerHello instead of fresh random bytes. It exists so that
/// the interop replay test can make frps derive the same AEAD keys as the real frps did in a
/// captured session (the keys hash both Hellos). It weakens nothing a client relies on — the
/// client's own random still makes each transcript unique — but it is never meant for
/// production; frps logs a warning at start-up when it is set.
pub const TEST_SERVER_RANDOM_ENV: &str = "FRP_URING_TEST_ONLY_V2_SERVER_RANDOM";

fn fixed_server_random() -> Option<[u8; CRYPTO_RANDOM_LEN]> {
    static FIXED: OnceLock<Option<[u8; CRYPTO_RANDOM_LEN]>> = OnceLock::new();
    *FIXED.get_or_init(|| {
        let v = std::env::var(TEST_SERVER_RANDOM_ENV).ok()?;
        let bytes = hex::decode(v.trim()).ok()?;
        bytes.try_into().ok()
    })
}

/// Logs a warning if a test-only hook is active (call once at frps start-up).
pub fn warn_test_hooks() {
    if fixed_server_random().is_some() {
        warn!(
            "{TEST_SERVER_RANDOM_ENV} is set: v2 ServerHellos use a fixed serverRandom (test-only, never use this in production)"
        );
    }
}

fn server_random() -> [u8; CRYPTO_RANDOM_LEN] {
    fixed_server_random().unwrap_or_else(rand::random)
}

/// The opening exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Msg(#[from] MsgError),
    #[error("{0}")]
    Hello(#[from] HelloError),
    #[error("unexpected frame type {got}, want {want}")]
    UnexpectedFrame { got: u16, want: u16 },
    #[error("unexpected message {got} instead of {want}")]
    UnexpectedMessage {
        got: &'static str,
        want: &'static str,
    },
    #[error("missing v2 crypto negotiation")]
    MissingCrypto,
}

/// A logical connection as frps accepted it.
pub struct Accepted<S> {
    pub conn: MsgConn<S>,
    pub version: WireVersion,
    /// Set when a v2 ClientHello was answered.
    pub crypto: Option<CryptoContext>,
    pub first: Message,
}

/// frps: reads the preamble and the first message of a logical connection within `deadline`
/// (Go's `acceptConnection`). A v2 ClientHello is answered on the way; a refused one is
/// answered with the reason and fails the accept.
pub async fn server_accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: S,
    deadline: Duration,
) -> Result<Accepted<S>, HandshakeError> {
    let started = tokio::time::Instant::now();
    let (mut conn, version) = MsgConn::accept(io, deadline).await?;
    let left = deadline.saturating_sub(started.elapsed());
    let fut = async {
        if version == WireVersion::V1 {
            return Ok((conn.read_msg().await?, None, conn));
        }
        let mut frame = conn.read_frame().await?;
        let mut crypto = None;
        if frame.frame_type == FRAME_CLIENT_HELLO {
            let (payload, ctx) = CryptoContext::server_answer(&frame.payload, server_random());
            conn.write_frame(FRAME_SERVER_HELLO, &payload).await?;
            crypto = Some(ctx?);
            frame = conn.read_frame().await?;
        }
        if frame.frame_type != FRAME_MESSAGE {
            return Err(HandshakeError::UnexpectedFrame {
                got: frame.frame_type,
                want: FRAME_MESSAGE,
            });
        }
        let first = decode_message_frame(&frame).map_err(MsgError::from)?;
        Ok((first, crypto, conn))
    };
    let (first, crypto, conn) = tokio::time::timeout(left, fut)
        .await
        .map_err(|_| MsgError::Timeout)??;
    Ok(Accepted {
        conn,
        version,
        crypto,
        first,
    })
}

/// A v2 control needs the context of a ClientHello answered on the same connection.
pub fn check_control_crypto(
    version: WireVersion,
    crypto: Option<&CryptoContext>,
) -> Result<(), HandshakeError> {
    if version == WireVersion::V2 && crypto.is_none() {
        return Err(HandshakeError::MissingCrypto);
    }
    Ok(())
}

/// Which end of the control connection we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

/// Switches a control connection to its cipher after LoginResp: AES-128-CFB keyed by `key`
/// (v1), or AEAD keyed by HKDF(`token`, transcript) (v2).
pub fn enable_control_encryption<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut MsgConn<S>,
    crypto: Option<&CryptoContext>,
    token: &str,
    key: &CryptoKey,
    role: Role,
) -> Result<(), HandshakeError> {
    match conn.version() {
        WireVersion::V1 => conn.enable_encryption(key)?,
        WireVersion::V2 => {
            let ctx = crypto.ok_or(HandshakeError::MissingCrypto)?;
            let keys = ctx.control_keys(token.as_bytes());
            let (inbound, outbound) = match role {
                Role::Client => keys.client_streams(),
                Role::Server => keys.server_streams(),
            };
            conn.enable_transforms(Box::new(inbound), Box::new(outbound))?;
        }
    }
    Ok(())
}

/// frpc: the login exchange on a fresh control connection made with [`MsgConn::client`].
/// Returns LoginResp (whatever its `error`) and, for v2, the negotiated crypto.
pub async fn client_login<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut MsgConn<S>,
    login: Login,
    bootstrap: BootstrapInfo,
) -> Result<(LoginResp, Option<CryptoContext>), HandshakeError> {
    let mut hello = None;
    if conn.version() == WireVersion::V2 {
        let payload = ClientHello::generate(bootstrap).to_payload();
        conn.write_frame(FRAME_CLIENT_HELLO, &payload).await?;
        hello = Some(payload);
    }
    conn.write_msg(&login.into()).await?;
    let exchange = async {
        let mut crypto = None;
        if let Some(ch) = &hello {
            let frame = conn.read_frame().await?;
            if frame.frame_type != FRAME_SERVER_HELLO {
                return Err(HandshakeError::UnexpectedFrame {
                    got: frame.frame_type,
                    want: FRAME_SERVER_HELLO,
                });
            }
            let sh = ServerHello::from_payload(&frame.payload)?;
            if !sh.error.is_empty() {
                return Err(HelloError::Rejected(sh.error).into());
            }
            crypto = Some(CryptoContext::client_finish(ch, &frame.payload)?);
        }
        match conn.read_msg().await? {
            Message::LoginResp(r) => Ok((r, crypto)),
            other => Err(HandshakeError::UnexpectedMessage {
                got: other.name(),
                want: "LoginResp",
            }),
        }
    };
    tokio::time::timeout(LOGIN_RESPONSE_TIMEOUT, exchange)
        .await
        .map_err(|_| HandshakeError::Msg(MsgError::Timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{NewWorkConn, Ping, ReqWorkConn, StartWorkConn};
    use crate::wire_v2::MAGIC;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn login() -> Login {
        Login {
            version: "0.70.1".into(),
            privilege_key: "k".into(),
            timestamp: 1,
            ..Default::default()
        }
    }

    /// A v2 client and our server agree on keys and talk AEAD after LoginResp; a v1 client
    /// on the same server code path gets CFB.
    #[tokio::test]
    async fn login_exchange_both_versions() {
        for version in [WireVersion::V1, WireVersion::V2] {
            let (a, b) = tokio::io::duplex(1 << 16);
            let key = CryptoKey::derive(b"tok");
            let server = tokio::spawn(async move {
                let acc = server_accept(b, Duration::from_secs(2)).await.unwrap();
                assert_eq!(acc.version, version);
                assert!(matches!(acc.first, Message::Login(_)));
                check_control_crypto(acc.version, acc.crypto.as_ref()).unwrap();
                let mut mc = acc.conn;
                mc.write_msg(&LoginResp::default().into()).await.unwrap();
                let key = CryptoKey::derive(b"tok");
                enable_control_encryption(&mut mc, acc.crypto.as_ref(), "tok", &key, Role::Server)
                    .unwrap();
                mc.write_msg(&ReqWorkConn {}.into()).await.unwrap();
                mc.read_msg().await.unwrap()
            });
            let mut mc = MsgConn::client(a, version);
            let (resp, crypto) = client_login(&mut mc, login(), BootstrapInfo::default())
                .await
                .unwrap();
            assert!(resp.error.is_empty());
            assert_eq!(crypto.is_some(), version == WireVersion::V2);
            enable_control_encryption(&mut mc, crypto.as_ref(), "tok", &key, Role::Client).unwrap();
            mc.write_msg(&Ping::default().into()).await.unwrap();
            assert_eq!(mc.read_msg().await.unwrap(), ReqWorkConn {}.into());
            assert_eq!(server.await.unwrap(), Ping::default().into());
        }
    }

    #[tokio::test]
    async fn v2_login_without_client_hello_is_refused() {
        let (mut a, b) = tokio::io::duplex(4096);
        let mut bytes = MAGIC.to_vec();
        bytes.extend(crate::wire_v2::encode_v2_message(&login().into()).unwrap());
        a.write_all(&bytes).await.unwrap();
        let acc = server_accept(b, Duration::from_secs(2)).await.unwrap();
        assert_eq!(acc.version, WireVersion::V2);
        assert!(acc.crypto.is_none());
        let e = check_control_crypto(acc.version, acc.crypto.as_ref()).unwrap_err();
        assert_eq!(e.to_string(), "missing v2 crypto negotiation");
    }

    #[tokio::test]
    async fn bad_client_hello_gets_a_rejection() {
        let (a, b) = tokio::io::duplex(4096);
        let server = tokio::spawn(async move {
            server_accept(b, Duration::from_secs(2))
                .await
                .err()
                .unwrap()
                .to_string()
        });
        let mut mc = MsgConn::client(a, WireVersion::V2);
        let mut ch = ClientHello::generate(BootstrapInfo::default());
        ch.capabilities.crypto.algorithms = vec!["rot13".into()];
        mc.write_frame(FRAME_CLIENT_HELLO, &ch.to_payload())
            .await
            .unwrap();
        let frame = mc.read_frame().await.unwrap();
        assert_eq!(frame.frame_type, FRAME_SERVER_HELLO);
        assert_eq!(
            ServerHello::from_payload(&frame.payload).unwrap().error,
            "no supported crypto algorithm"
        );
        assert_eq!(server.await.unwrap(), "no supported crypto algorithm");
    }

    /// A v2 work connection: magic + NewWorkConn, StartWorkConn back as a v2 frame, and the
    /// proxied bytes that follow are not lost.
    #[tokio::test]
    async fn v2_work_connection_keeps_trailing_bytes() {
        let (a, b) = tokio::io::duplex(4096);
        let mut client = MsgConn::client(a, WireVersion::V2);
        client
            .write_msg(
                &NewWorkConn {
                    run_id: "r".into(),
                    ..Default::default()
                }
                .into(),
            )
            .await
            .unwrap();
        let acc = server_accept(b, Duration::from_secs(2)).await.unwrap();
        assert_eq!(acc.version, WireVersion::V2);
        let (io, rest) = acc.conn.into_parts();
        assert!(rest.is_empty());
        let mut server = MsgConn::with_version(io, WireVersion::V2);
        server
            .write_msg(&StartWorkConn::default().into())
            .await
            .unwrap();
        let (mut io, _) = server.into_parts();
        io.write_all(b"payload").await.unwrap();
        assert!(matches!(
            client.read_msg().await.unwrap(),
            Message::StartWorkConn(_)
        ));
        let (mut io_c, mut rest) = client.into_parts();
        let mut tail = vec![0u8; 7 - rest.len()];
        io_c.read_exact(&mut tail).await.unwrap();
        rest.extend(tail);
        assert_eq!(rest, b"payload");
    }

    #[tokio::test]
    async fn v1_bytes_are_replayed_after_detection() {
        let (mut a, b) = tokio::io::duplex(4096);
        // Fewer than 7 bytes first: the detector must wait, then hand all of them to v1.
        let frame = crate::msg::encode_v1(&Ping::default().into());
        a.write_all(&frame[..3]).await.unwrap();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(&frame[3..]).await.unwrap();
            a
        });
        let acc = server_accept(b, Duration::from_secs(2)).await.unwrap();
        assert_eq!(acc.version, WireVersion::V1);
        assert_eq!(acc.first, Ping::default().into());
        t.await.unwrap();
    }
}
