//! A local OIDC provider for the auth tests: discovery document, JWKS and a token endpoint
//! serving the client-credentials grant, on 127.0.0.1. Tokens are ES256 JWTs signed with keys
//! generated per provider (rcgen, ring); the test steers what the next tokens look like.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, EncodingKey, Header};

pub const CLIENT_ID: &str = "test-client";
pub const CLIENT_SECRET: &str = "test-secret";
pub const SUBJECT: &str = "test-service";

/// One signing key: its id, private key, and public JWK.
struct Key {
    kid: String,
    private: EncodingKey,
    jwk: serde_json::Value,
}

impl Key {
    fn generate(kid: &str) -> Key {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Key {
            kid: kid.to_string(),
            private: EncodingKey::from_ec_der(&kp.serialize_der()),
            jwk: serde_json::json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
                "x": b64(&raw[1..33]), "y": b64(&raw[33..]),
            }),
        }
    }
}

/// What the next issued tokens look like.
#[derive(Clone)]
pub struct Issue {
    pub audience: String,
    /// `exp` relative to now, in seconds (negative: already expired).
    pub exp_in: i64,
    /// `expires_in` of the token response (`None`: left out).
    pub expires_in: Option<u64>,
    /// Sign with a key the JWKS does not publish.
    pub unknown_key: bool,
}

impl Default for Issue {
    fn default() -> Self {
        Issue {
            audience: "frps".into(),
            exp_in: 3600,
            expires_in: Some(3600),
            unknown_key: false,
        }
    }
}

struct State {
    issuer: String,
    /// Published keys; the last one signs.
    keys: Vec<Key>,
    stranger: Key,
    issue: Issue,
    next_kid: usize,
}

/// A running provider (stops with the test's runtime).
pub struct Provider {
    pub port: u16,
    state: Arc<Mutex<State>>,
    pub token_requests: Arc<AtomicUsize>,
    pub jwks_requests: Arc<AtomicUsize>,
}

impl Provider {
    pub async fn start() -> Provider {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            issuer: format!("http://127.0.0.1:{port}"),
            keys: vec![Key::generate("key-1")],
            stranger: Key::generate("key-1"),
            issue: Issue::default(),
            next_kid: 2,
        }));
        let p = Provider {
            port,
            state: state.clone(),
            token_requests: Arc::new(AtomicUsize::new(0)),
            jwks_requests: Arc::new(AtomicUsize::new(0)),
        };
        let (tokens, jwks) = (p.token_requests.clone(), p.jwks_requests.clone());
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let (state, tokens, jwks) = (state.clone(), tokens.clone(), jwks.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (state, tokens, jwks) = (state.clone(), tokens.clone(), jwks.clone());
                        async move { Ok::<_, Infallible>(answer(req, &state, &tokens, &jwks).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        p
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn token_endpoint(&self) -> String {
        format!("{}/token", self.issuer())
    }

    /// Sets what the next tokens look like.
    pub fn set_issue(&self, issue: Issue) {
        self.state.lock().unwrap().issue = issue;
    }

    /// Key rotation: a new key signs from now on and is the only one published.
    pub fn rotate(&self) {
        let mut st = self.state.lock().unwrap();
        let kid = format!("key-{}", st.next_kid);
        st.next_kid += 1;
        st.keys = vec![Key::generate(&kid)];
    }
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())))
        .unwrap()
}

async fn answer(
    req: Request<Incoming>,
    state: &Mutex<State>,
    tokens: &AtomicUsize,
    jwks: &AtomicUsize,
) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/.well-known/openid-configuration" => {
            let issuer = state.lock().unwrap().issuer.clone();
            json(
                StatusCode::OK,
                serde_json::json!({
                    "issuer": issuer,
                    "token_endpoint": format!("{issuer}/token"),
                    "jwks_uri": format!("{issuer}/jwks"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["ES256"],
                }),
            )
        }
        "/jwks" => {
            jwks.fetch_add(1, Ordering::SeqCst);
            let st = state.lock().unwrap();
            let keys: Vec<_> = st.keys.iter().map(|k| k.jwk.clone()).collect();
            json(StatusCode::OK, serde_json::json!({ "keys": keys }))
        }
        "/token" => {
            let basic = req
                .headers()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|b| String::from_utf8(b).ok());
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let form: HashMap<String, String> = form_urlencoded::parse(&body)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
                return json(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({"error": "unsupported_grant_type"}),
                );
            }
            let (id, secret) = match basic.as_deref().and_then(|b| b.split_once(':')) {
                Some((i, s)) => (i.to_string(), s.to_string()),
                None => (
                    form.get("client_id").cloned().unwrap_or_default(),
                    form.get("client_secret").cloned().unwrap_or_default(),
                ),
            };
            if id != CLIENT_ID || secret != CLIENT_SECRET {
                return json(
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({"error": "invalid_client"}),
                );
            }
            let st = state.lock().unwrap();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64;
            let claims = serde_json::json!({
                "iss": st.issuer, "sub": SUBJECT, "aud": st.issue.audience,
                "iat": now, "exp": now + st.issue.exp_in,
            });
            let key = if st.issue.unknown_key {
                &st.stranger
            } else {
                st.keys.last().unwrap()
            };
            let mut header = Header::new(Algorithm::ES256);
            header.kid = Some(key.kid.clone());
            let token = jsonwebtoken::encode(&header, &claims, &key.private).unwrap();
            let mut resp = serde_json::json!({"access_token": token, "token_type": "Bearer"});
            if let Some(e) = st.issue.expires_in {
                resp["expires_in"] = e.into();
            }
            tokens.fetch_add(1, Ordering::SeqCst);
            json(StatusCode::OK, resp)
        }
        _ => json(StatusCode::NOT_FOUND, serde_json::json!({})),
    }
}
