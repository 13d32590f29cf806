//! `auth.method = "oidc"`: frpc gets an access token with the OAuth 2.0 client-credentials grant
//! ([`ClientCredentials`]); frps verifies it as an OIDC ID token ([`Verifier`]: discovery, JWKS
//! with key rotation, issuer / audience / expiry checks).
//!
//! JWS parsing and signature checks are `jsonwebtoken`'s; HTTP is [`HttpClient`] (hyper's
//! HTTP/1.1 client over rustls with ring, hyper-util's proxy support).
//! The error texts are those of frp's Go libraries (`golang.org/x/oauth2`, `coreos/go-oidc`),
//! which frp passes on to logs and to clients.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::http::HttpClient;
use crate::config::{AuthOidcClientConfig, AuthOidcServerConfig};

/// A bound on each request to the token endpoint / issuer, so a silent provider cannot hold a
/// login (or frps' start) forever. Go's clients have none; this is far above any real answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Go's oauth2 reads at most this much of a token response.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;
/// The most read of a discovery document or key set.
const MAX_DOCUMENT: usize = 4 << 20;
/// A cached token is renewed this long before it expires (oauth2's `expiryDelta`).
const EXPIRY_DELTA: Duration = Duration::from_secs(10);

/// An HTTP client for OIDC requests. Like frp: with none of `trustedCaFile`,
/// `insecureSkipVerify`, `proxyURL` set, Go's default client (system roots, proxy from the
/// environment); otherwise those settings and no proxy but `proxyURL`.
pub fn http_client(
    trusted_ca_file: &str,
    insecure_skip_verify: bool,
    proxy_url: &str,
) -> Result<HttpClient, String> {
    let custom = !trusted_ca_file.is_empty() || insecure_skip_verify || !proxy_url.is_empty();
    let ca = if insecure_skip_verify {
        ""
    } else {
        trusted_ca_file
    };
    if !ca.is_empty() {
        let pem = std::fs::read(ca).map_err(|e| {
            format!(
                "failed to read OIDC CA certificate file {ca:?}: open {ca}: {}",
                crate::listen::os_error_text(&e)
            )
        })?;
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        if CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .next()
            .is_none()
        {
            return Err(format!(
                "failed to parse OIDC CA certificate from file {ca:?}"
            ));
        }
    }
    let tls = crate::tls::https_client_config(ca, insecure_skip_verify)
        .map_err(|e| format!("failed to parse OIDC CA certificate from file {ca:?}: {e}"))?;
    HttpClient::new(tls, !custom, proxy_url, HTTP_TIMEOUT)
}

// --- frpc: client credentials ------------------------------------------------------------------

/// The client-credentials grant against `auth.oidc.tokenEndpointURL` (oauth2's
/// `clientcredentials.Config` as frp sets it up). A token with `expires_in` is cached until
/// shortly before it expires; one without is never reused: every call fetches a fresh one.
pub struct ClientCredentials {
    http: HttpClient,
    token_url: String,
    client_id: String,
    client_secret: String,
    /// grant_type, scope, audience and `additionalEndpointParams`.
    form: Vec<(String, String)>,
    state: tokio::sync::Mutex<CacheState>,
}

#[derive(Default)]
struct CacheState {
    token: Option<(String, Instant)>,
    /// oauth2's auth-style probe: `Some(true)` once the endpoint took the credentials in the
    /// form body, `Some(false)` once it took them as HTTP Basic auth.
    in_body: Option<bool>,
}

struct Token {
    access_token: String,
    expires_in: Option<u64>,
}

impl ClientCredentials {
    /// Validated config in (see `ClientConfig::validate`); fails only on the HTTP settings.
    pub fn new(cfg: &AuthOidcClientConfig) -> Result<Self, String> {
        let http = http_client(
            &cfg.trusted_ca_file,
            cfg.insecure_skip_verify,
            &cfg.proxy_url,
        )
        .map_err(|e| format!("failed to create OIDC HTTP client: {e}"))?;
        let mut form = vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("scope".to_owned(), cfg.scope.clone()),
        ];
        for (k, v) in &cfg.additional_endpoint_params {
            form.push((k.clone(), v.clone()));
        }
        if !cfg.audience.is_empty() {
            form.push(("audience".to_owned(), cfg.audience.clone()));
        }
        Ok(Self {
            http,
            token_url: cfg.token_endpoint_url.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            form,
            state: tokio::sync::Mutex::new(CacheState::default()),
        })
    }

    /// A valid access token: the cached one or a new one (oauth2's error text on failure).
    pub async fn token(&self) -> Result<String, String> {
        let mut state = self.state.lock().await;
        if let Some((t, until)) = &state.token
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let token = match state.in_body {
            Some(in_body) => self.fetch(in_body).await?,
            None => match self.fetch(false).await {
                Ok(t) => {
                    state.in_body = Some(false);
                    t
                }
                Err(_) => {
                    let t = self.fetch(true).await?;
                    state.in_body = Some(true);
                    t
                }
            },
        };
        state.token = token.expires_in.filter(|s| *s > 0).map(|s| {
            let until = Instant::now() + Duration::from_secs(s).saturating_sub(EXPIRY_DELTA);
            (token.access_token.clone(), until)
        });
        Ok(token.access_token)
    }

    async fn fetch(&self, in_body: bool) -> Result<Token, String> {
        let mut form = self.form.clone();
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::ACCEPT,
            http::HeaderValue::from_static("application/json"),
        );
        if in_body {
            form.push(("client_id".into(), self.client_id.clone()));
            form.push(("client_secret".into(), self.client_secret.clone()));
        } else {
            // oauth2 query-escapes both halves before Basic-encoding them.
            let esc = |s: &str| form_escape(s);
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                esc(&self.client_id),
                esc(&self.client_secret)
            ));
            let basic = http::HeaderValue::try_from(format!("Basic {basic}"))
                .map_err(|e| format!("oauth2: cannot fetch token: {e}"))?;
            headers.insert(http::header::AUTHORIZATION, basic);
        }
        let body = (
            http::HeaderValue::from_static("application/x-www-form-urlencoded"),
            bytes::Bytes::from(encode_form(&form)),
        );
        let resp = self
            .http
            .request(
                http::Method::POST,
                &self.token_url,
                headers,
                Some(body),
                MAX_TOKEN_RESPONSE,
            )
            .await
            .map_err(|e| format!("oauth2: cannot fetch token: {e}"))?;
        let status = resp.status;
        let content_type = resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        let body = resp.body;
        let fields = parse_token_response(&content_type, &body);
        if !status.is_success() {
            let fields = fields.unwrap_or_default();
            let code = fields.str("error");
            if code.is_empty() {
                return Err(format!(
                    "oauth2: cannot fetch token: {status}\nResponse: {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            let mut s = format!("oauth2: {code:?}");
            for k in ["error_description", "error_uri"] {
                let v = fields.str(k);
                if !v.is_empty() {
                    s.push_str(&format!(" {v:?}"));
                }
            }
            return Err(s);
        }
        let fields = fields?;
        let access_token = fields.str("access_token");
        if access_token.is_empty() {
            return Err("oauth2: server response missing access_token".into());
        }
        Ok(Token {
            access_token,
            expires_in: fields.num("expires_in"),
        })
    }
}

/// Go's `url.QueryEscape`.
fn form_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Go's `url.Values.Encode`: keys sorted, both halves query-escaped.
fn encode_form(form: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = form.iter().collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let pairs: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_escape(k), form_escape(v)))
        .collect();
    pairs.join("&")
}

/// A token endpoint's answer: JSON, or a form (`application/x-www-form-urlencoded`,
/// `text/plain`), as oauth2 reads it.
#[derive(Default)]
struct Fields(serde_json::Map<String, serde_json::Value>);

impl Fields {
    fn str(&self, k: &str) -> String {
        match self.0.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            _ => String::new(),
        }
    }

    fn num(&self, k: &str) -> Option<u64> {
        match self.0.get(k)? {
            serde_json::Value::Number(n) => n.as_u64().or_else(|| n.as_f64().map(|f| f as u64)),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

fn parse_token_response(content_type: &str, body: &[u8]) -> Result<Fields, String> {
    if matches!(
        content_type,
        "application/x-www-form-urlencoded" | "text/plain"
    ) {
        let mut m = serde_json::Map::new();
        for pair in String::from_utf8_lossy(body).split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            m.entry(dec(k))
                .or_insert_with(|| serde_json::Value::String(dec(v)));
        }
        return Ok(Fields(m));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(m)) => Ok(Fields(m)),
        Ok(_) => Err("oauth2: cannot parse json: not an object".into()),
        Err(e) => Err(format!("oauth2: cannot parse json: {e}")),
    }
}

// --- frps: verification ------------------------------------------------------------------------

/// The claims frp looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    pub subject: String,
}

/// Verifies tokens against `auth.oidc.issuer` (go-oidc's `Provider.Verifier` as frp
/// configures it). Keys come from the issuer's `jwks_uri`, fetched on first use and again
/// whenever a token names a key the cached set cannot verify (key rotation).
pub struct Verifier {
    http: HttpClient,
    issuer: String,
    jwks_uri: String,
    algorithms: Vec<Algorithm>,
    audience: String,
    skip_expiry_check: bool,
    skip_issuer_check: bool,
    /// The cached key set and how many fetches produced it: a task whose refetch another
    /// task already did uses that result instead of fetching again.
    keys: RwLock<(u64, Arc<Vec<Key>>)>,
    /// Serializes JWKS fetches (verifications with cached keys never wait for one).
    refresh: tokio::sync::Mutex<()>,
}

struct Key {
    kid: Option<String>,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Discovery {
    #[serde(default)]
    issuer: String,
    #[serde(default)]
    jwks_uri: String,
    #[serde(default)]
    id_token_signing_alg_values_supported: Vec<String>,
}

/// go-oidc's supported signing algorithms.
fn parse_alg(name: &str) -> Option<Algorithm> {
    Some(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

fn alg_name(a: Algorithm) -> String {
    format!("{a:?}")
}

impl Verifier {
    /// OIDC discovery (`<issuer>/.well-known/openid-configuration`), as frps does at start.
    pub async fn discover(cfg: &AuthOidcServerConfig) -> Result<Self, String> {
        let http = http_client("", false, "")?;
        let url = format!(
            "{}/.well-known/openid-configuration",
            cfg.issuer.trim_end_matches('/')
        );
        let resp = http
            .request(
                http::Method::GET,
                &url,
                http::HeaderMap::new(),
                None,
                MAX_DOCUMENT,
            )
            .await?;
        let (status, body) = (resp.status, resp.body);
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|e| format!("oidc: failed to decode provider discovery object: {e}"))?;
        if d.issuer != cfg.issuer {
            return Err(format!(
                "oidc: issuer did not match the issuer returned by provider, expected {:?} got {:?}",
                cfg.issuer, d.issuer
            ));
        }
        let mut algorithms: Vec<Algorithm> = d
            .id_token_signing_alg_values_supported
            .iter()
            .filter_map(|a| parse_alg(a))
            .collect();
        if algorithms.is_empty() {
            algorithms.push(Algorithm::RS256);
        }
        Ok(Self {
            http,
            issuer: cfg.issuer.clone(),
            jwks_uri: d.jwks_uri,
            algorithms,
            audience: cfg.audience.clone(),
            skip_expiry_check: cfg.skip_expiry_check,
            skip_issuer_check: cfg.skip_issuer_check,
            keys: RwLock::new((0, Arc::new(Vec::new()))),
            refresh: tokio::sync::Mutex::new(()),
        })
    }

    /// go-oidc's `IDTokenVerifier.Verify`: the claims first (issuer, audience, expiry), then
    /// the signature. The error is go-oidc's text.
    pub async fn verify(&self, raw: &str) -> Result<IdToken, String> {
        let parts: Vec<&str> = raw.split('.').collect();
        if parts.len() < 2 {
            return Err(format!(
                "oidc: malformed jwt: oidc: malformed jwt, expected 3 parts got {}",
                parts.len()
            ));
        }
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1].trim_end_matches('='))
            .map_err(|e| format!("oidc: malformed jwt: oidc: malformed jwt payload: {e}"))?;
        let claims: Claims = serde_json::from_slice(&payload)
            .map_err(|e| format!("oidc: failed to unmarshal claims: {e}"))?;
        if !self.skip_issuer_check && claims.iss != self.issuer {
            return Err(format!(
                "oidc: id token issued by a different provider, expected {:?} got {:?}",
                self.issuer, claims.iss
            ));
        }
        if !self.audience.is_empty() && !claims.aud.0.contains(&self.audience) {
            return Err(format!(
                "oidc: expected audience {:?} got {}",
                self.audience,
                go_quote_list(&claims.aud.0)
            ));
        }
        if !self.skip_expiry_check {
            let now = chrono::Utc::now().timestamp() as f64;
            let exp = claims.exp.unwrap_or(f64::MIN);
            if exp < now {
                return Err(format!(
                    "oidc: token is expired (Token Expiry: {})",
                    go_time(claims.exp)
                ));
            }
            if let Some(nbf) = claims.nbf
                && now + 300.0 < nbf
            {
                return Err(format!(
                    "oidc: current time {} before the nbf (not before) time: {}",
                    go_time(Some(now)),
                    go_time(Some(nbf))
                ));
            }
        }
        if parts.len() != 3 {
            return Err(format!(
                "oidc: malformed jwt: oidc: malformed jwt, expected 3 parts got {}",
                parts.len()
            ));
        }
        let header =
            jsonwebtoken::decode_header(raw).map_err(|e| format!("oidc: malformed jwt: {e}"))?;
        if !self.algorithms.contains(&header.alg) {
            let expected: Vec<String> = self.algorithms.iter().map(|a| alg_name(*a)).collect();
            return Err(format!(
                "oidc: malformed jwt: go-jose/go-jose: unexpected signature algorithm {:?}; expected {}",
                alg_name(header.alg),
                go_quote_list(&expected)
            ));
        }
        let kid = header.kid.as_deref();
        let (generation, keys) = self.keys.read().unwrap().clone();
        if !verify_with(raw, header.alg, kid, &keys) {
            let keys = self
                .refetch(generation)
                .await
                .map_err(|e| format!("failed to verify signature: fetching keys {e}"))?;
            if !verify_with(raw, header.alg, kid, &keys) {
                return Err(
                    "failed to verify signature: failed to verify id token signature".into(),
                );
            }
        }
        Ok(IdToken {
            subject: claims.sub,
        })
    }

    /// Fetches the key set again, unless another task did since `seen` (then its result).
    async fn refetch(&self, seen: u64) -> Result<Arc<Vec<Key>>, String> {
        let _one_fetch = self.refresh.lock().await;
        let (generation, cached) = self.keys.read().unwrap().clone();
        if generation != seen {
            return Ok(cached);
        }
        let keys = Arc::new(self.fetch_keys().await?);
        *self.keys.write().unwrap() = (generation + 1, keys.clone());
        Ok(keys)
    }

    async fn fetch_keys(&self) -> Result<Vec<Key>, String> {
        let resp = self
            .http
            .request(
                http::Method::GET,
                &self.jwks_uri,
                http::HeaderMap::new(),
                None,
                MAX_DOCUMENT,
            )
            .await
            .map_err(|e| format!("oidc: get keys failed {e}"))?;
        let (status, body) = (resp.status, resp.body);
        if !status.is_success() {
            return Err(format!(
                "oidc: get keys failed: {status} {}",
                String::from_utf8_lossy(&body)
            ));
        }
        let set: JwkSet = serde_json::from_slice(&body).map_err(|e| {
            format!(
                "oidc: failed to decode keys: {e} {}",
                String::from_utf8_lossy(&body)
            )
        })?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| {
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    key: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect())
    }
}

/// Whether one of `keys` (those with the token's `kid`, or all when it names none) verifies
/// the signature.
fn verify_with(raw: &str, alg: Algorithm, kid: Option<&str>, keys: &[Key]) -> bool {
    let mut v = Validation::new(alg);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    keys.iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .any(|k| jsonwebtoken::decode::<serde_json::Value>(raw, &k.key, &v).is_ok())
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    sub: String,
    #[serde(default)]
    aud: Audience,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
}

/// `aud`: one string or a list of them.
#[derive(Default)]
struct Audience(Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum A {
            One(String),
            Many(Vec<String>),
        }
        Ok(match A::deserialize(d)? {
            A::One(s) => Audience(vec![s]),
            A::Many(v) => Audience(v),
        })
    }
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quote_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(" "))
}

/// A time as Go prints a `time.Time` (in UTC): `2006-01-02 15:04:05 +0000 UTC`.
fn go_time(secs: Option<f64>) -> String {
    match secs.and_then(|s| chrono::DateTime::from_timestamp(s as i64, 0)) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string(),
        None => "0001-01-01 00:00:00 +0000 UTC".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_formats() {
        assert_eq!(go_quote_list(&["a".into(), "b".into()]), r#"["a" "b"]"#);
        assert_eq!(go_quote_list(&[]), "[]");
        assert_eq!(go_time(Some(0.0)), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(None), "0001-01-01 00:00:00 +0000 UTC");
        assert_eq!(form_escape("a b/c:d~"), "a+b%2Fc%3Ad~");
        let form = [("scope", "a b"), ("grant_type", "client_credentials")]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            encode_form(&form),
            "grant_type=client_credentials&scope=a+b"
        );
    }

    #[test]
    fn token_responses_json_and_form() {
        let f = parse_token_response(
            "application/json",
            br#"{"access_token":"x","expires_in":"60"}"#,
        )
        .unwrap();
        assert_eq!(f.str("access_token"), "x");
        assert_eq!(f.num("expires_in"), Some(60));
        let f = parse_token_response(
            "application/x-www-form-urlencoded",
            b"access_token=a%2Bb+c&expires_in=5",
        )
        .unwrap();
        assert_eq!(f.str("access_token"), "a+b c");
        assert_eq!(f.num("expires_in"), Some(5));
        assert!(parse_token_response("application/json", b"<html>").is_err());
    }

    fn verifier(audience: &str, skip_exp: bool, skip_iss: bool) -> Verifier {
        Verifier {
            http: http_client("", false, "").unwrap(),
            issuer: "http://issuer".into(),
            jwks_uri: "http://127.0.0.1:1/jwks".into(),
            algorithms: vec![Algorithm::RS256],
            audience: audience.into(),
            skip_expiry_check: skip_exp,
            skip_issuer_check: skip_iss,
            keys: RwLock::new((0, Arc::new(Vec::new()))),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn unsigned(claims: serde_json::Value) -> String {
        let e = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        format!(
            "{}.{}.{}",
            e(br#"{"alg":"RS256","kid":"k"}"#),
            e(claims.to_string().as_bytes()),
            e(b"sig")
        )
    }

    /// The claim checks run before the signature, with go-oidc's messages.
    #[tokio::test]
    async fn claim_checks_in_go_oidc_order() {
        let v = verifier("frps", false, false);
        let far = chrono::Utc::now().timestamp() + 3600;
        async fn err(v: &Verifier, c: serde_json::Value) -> String {
            v.verify(&unsigned(c)).await.unwrap_err()
        }
        assert_eq!(
            v.verify("abc").await.unwrap_err(),
            "oidc: malformed jwt: oidc: malformed jwt, expected 3 parts got 1"
        );
        assert_eq!(
            err(
                &v,
                serde_json::json!({"iss": "http://other", "aud": "frps", "exp": far})
            )
            .await,
            r#"oidc: id token issued by a different provider, expected "http://issuer" got "http://other""#
        );
        assert_eq!(
            err(
                &v,
                serde_json::json!({"iss": "http://issuer", "aud": ["x", "y"], "exp": far})
            )
            .await,
            r#"oidc: expected audience "frps" got ["x" "y"]"#
        );
        assert_eq!(
            err(
                &v,
                serde_json::json!({"iss": "http://issuer", "aud": "frps", "exp": 0})
            )
            .await,
            "oidc: token is expired (Token Expiry: 1970-01-01 00:00:00 +0000 UTC)"
        );
        // Claims fine: the signature is checked, and the key set cannot be fetched.
        let e = err(
            &v,
            serde_json::json!({"iss": "http://issuer", "aud": "frps", "exp": far}),
        )
        .await;
        assert!(
            e.starts_with("failed to verify signature: fetching keys oidc: get keys failed"),
            "{e}"
        );
        // Skipped checks let the same claims through to the signature check.
        let v = verifier("", true, true);
        let e = err(
            &v,
            serde_json::json!({"iss": "http://other", "aud": "x", "exp": 0}),
        )
        .await;
        assert!(e.starts_with("failed to verify signature"), "{e}");
    }
}
