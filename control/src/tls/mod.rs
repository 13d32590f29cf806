//! TLS for frp's transport (spec §2.3): rustls configs for both ends, the self-signed
//! certificate frps serves when none is configured, and the permissive verifier frpc uses when
//! no `trustedCaFile` is set (Go's `InsecureSkipVerify`).

mod split;
mod stream;
pub use split::{endpoint, take_apart};
pub use stream::{ClientTlsStream, ServerTlsStream, TlsSide, TlsStream, accept, connect};

use std::path::Path;
use std::sync::Arc;

use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// frp's "custom TLS head byte": sent first by frpc when `disableCustomTLSFirstByte = false`,
/// consumed by frps.
pub const FRP_TLS_HEAD_BYTE: u8 = 0x17;
/// The first byte of a standard TLS record (a ClientHello).
pub const TLS_RECORD_BYTE: u8 = 0x16;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("read TLS file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("no certificate found in {0}")]
    NoCert(String),
    #[error("no private key found in {0}: {1}")]
    NoKey(String, String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generate self-signed certificate: {0}")]
    Generate(String),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
    #[error(
        "no system root certificates to verify the proxy with ({0}); set SSL_CERT_FILE or SSL_CERT_DIR"
    )]
    NoSystemRoots(String),
}

/// rustls' ring provider with Go's cipher suite order (crypto/tls on hardware with AES):
/// AES-128-GCM first, then AES-256-GCM, then ChaCha20-Poly1305, for TLS 1.3 and 1.2 alike.
/// rustls' own default puts AES-256 first; a session between two frp-uring peers then paid
/// four more AES rounds per block and 128 more bytes of key schedule per connection (each
/// side of every connected client) than one with a Go peer, which asks for AES-128.
fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    use rustls::CipherSuite as C;
    p.cipher_suites.sort_by_key(|s| {
        let cipher = match s.suite() {
            C::TLS13_AES_128_GCM_SHA256
            | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
            C::TLS13_AES_256_GCM_SHA384
            | C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 1,
            _ => 2,
        };
        (s.tls13().is_none(), cipher)
    });
    Arc::new(p)
}

fn load_certs(path: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_string(),
        source: e,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCert(path.to_string()));
    }
    Ok(certs)
}

fn load_key(path: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    let data = std::fs::read(path).map_err(|e| TlsError::Read {
        path: path.to_string(),
        source: e,
    })?;
    PrivateKeyDer::from_pem_slice(&data)
        .map_err(|e| TlsError::NoKey(path.to_string(), e.to_string()))
}

fn root_store(ca_file: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert)?;
    }
    Ok(roots)
}

/// A certificate and key generated at start-up, as frps does when no certFile is configured.
pub fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let ck = rcgen::generate_simple_self_signed(vec!["frp-uring".to_string()])
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    let key = PrivateKeyDer::try_from(ck.signing_key.serialize_der())
        .map_err(|e| TlsError::Generate(e.to_string()))?;
    Ok((vec![ck.cert.der().clone()], key))
}

/// frps' TLS config: the configured certificate (or a fresh self-signed one) and, when
/// `trustedCaFile` is set, mandatory client certificates signed by that CA (mTLS).
pub fn server_config(
    cert_file: &str,
    key_file: &str,
    trusted_ca_file: &str,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let (certs, key) = if cert_file.is_empty() || key_file.is_empty() {
        self_signed()?
    } else {
        (load_certs(cert_file)?, load_key(key_file)?)
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = if trusted_ca_file.is_empty() {
        builder.with_no_client_auth()
    } else {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(root_store(trusted_ca_file)?),
            provider(),
        )
        .build()
        .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        builder.with_client_cert_verifier(verifier)
    };
    Ok(Arc::new(builder.with_single_cert(certs, key)?))
}

/// frpc's TLS config: verify frps only when `trustedCaFile` is set (frp's behaviour), present a
/// client certificate when certFile and keyFile are set.
pub fn client_config(
    cert_file: &str,
    key_file: &str,
    trusted_ca_file: &str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = if trusted_ca_file.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(
                provider().signature_verification_algorithms,
            )))
    } else {
        builder.with_root_certificates(root_store(trusted_ca_file)?)
    };
    let cfg = if !cert_file.is_empty() && !key_file.is_empty() {
        builder.with_client_auth_cert(load_certs(cert_file)?, load_key(key_file)?)?
    } else {
        builder.with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// A TLS client config that verifies the peer against the system's root certificates, like
/// Go's default `tls.Config{}` (used for `https://` proxies). The roots are found as Go finds
/// them on Linux: `SSL_CERT_FILE` / `SSL_CERT_DIR` when set, else the distribution's bundle.
pub fn system_roots_client_config() -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(TlsError::NoSystemRoots(if why.is_empty() {
            "none found".into()
        } else {
            why
        }));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The TLS config of an HTTPS client (the OIDC token endpoint and discovery): Go's defaults —
/// the system's roots — unless `trusted_ca_file` replaces them or `insecure_skip_verify` turns
/// verification off. No system roots is not an error here (plain `http://` URLs need none; an
/// `https://` one then fails its handshake).
pub fn https_client_config(
    trusted_ca_file: &str,
    insecure_skip_verify: bool,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServerCert(
                provider().signature_verification_algorithms,
            )))
    } else if !trusted_ca_file.is_empty() {
        builder.with_root_certificates(root_store(trusted_ca_file)?)
    } else {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        builder.with_root_certificates(roots)
    };
    Ok(builder.with_no_client_auth())
}

/// The name frpc presents (SNI) and verifies: `tls.serverName`, else `serverAddr`.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.to_string()))
}

/// Go's `InsecureSkipVerify`: any certificate is accepted, but the handshake signatures are
/// still checked so the session keys belong to whoever holds the presented key.
#[derive(Debug)]
struct AcceptAnyServerCert(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// Whether a TLS file path exists, for config validation messages.
pub fn file_exists(path: &str) -> bool {
    Path::new(path).exists()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Two frp-uring peers agree on AES-128-GCM, as a Go peer asks for; the order of the rest
    /// is rustls' (TLS 1.3 before 1.2).
    #[tokio::test]
    async fn peers_negotiate_aes_128_gcm_first_as_go_does() {
        let suites: Vec<_> = provider().cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(
            suites[..3],
            [
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
            ]
        );
        assert_eq!(
            suites[3],
            rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        );
        let server = tokio_rustls::TlsAcceptor::from(server_config("", "", "").unwrap());
        let client = tokio_rustls::TlsConnector::from(client_config("", "", "").unwrap());
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move { server.accept(b).await.unwrap() });
        let c = client
            .connect(server_name("127.0.0.1").unwrap(), a)
            .await
            .unwrap();
        let s = srv.await.unwrap();
        for suite in [
            c.get_ref().1.negotiated_cipher_suite(),
            s.get_ref().1.negotiated_cipher_suite(),
        ] {
            assert_eq!(
                suite.map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
            );
        }
    }

    #[tokio::test]
    async fn self_signed_handshake_with_permissive_client() {
        let server = tokio_rustls::TlsAcceptor::from(server_config("", "", "").unwrap());
        let client = tokio_rustls::TlsConnector::from(client_config("", "", "").unwrap());
        let (a, b) = tokio::io::duplex(64 * 1024);
        let srv = tokio::spawn(async move {
            let mut s = server.accept(b).await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
            s.flush().await.unwrap();
        });
        let mut c = client
            .connect(server_name("127.0.0.1").unwrap(), a)
            .await
            .unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello");
        srv.await.unwrap();
    }

    #[test]
    fn missing_cert_file_is_a_clear_error() {
        let err = server_config("/nonexistent/cert.pem", "/nonexistent/key.pem", "").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cert.pem"), "{err}");
    }
}
