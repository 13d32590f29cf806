//! Authentication between frpc and frps (spec §5): how frpc fills `privilege_key` into Login,
//! Ping and NewWorkConn ([`ClientAuth`]) and how frps checks it ([`ServerAuth`]), for
//! `auth.method = "token"` (shared secret, see [`token`]) and `"oidc"` (see [`oidc`]), with the
//! token optionally read from `auth.tokenSource` (see [`source`]).
//!
//! `auth.additionalScopes` (`HeartBeats`, `NewWorkConns`) extend the check from Login to pings
//! and work connections. The refusal texts are frp's.

mod http;
pub mod oidc;
pub mod source;
mod token;

use std::collections::HashSet;
use std::sync::Mutex;

pub use token::{privilege_key, sign_key, verify_privilege_key, verify_sign_key};

use crate::config::{AuthClientConfig, AuthServerConfig, ValueSource};
use crate::msg::{Login, NewWorkConn, Ping};

/// Which messages besides Login carry a credential (`auth.additionalScopes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes {
    pub heartbeats: bool,
    pub new_work_conns: bool,
}

impl Scopes {
    pub fn from_config(scopes: &[String]) -> Self {
        Self {
            heartbeats: scopes.iter().any(|s| s == "HeartBeats"),
            new_work_conns: scopes.iter().any(|s| s == "NewWorkConns"),
        }
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Resolves `auth.tokenSource` (when set) into the token, as frp does once at start:
/// `failed to resolve auth.tokenSource: …` otherwise.
fn resolved_token(token: &str, src: Option<&ValueSource>) -> Result<String, String> {
    match src {
        Some(src) => {
            source::resolve(src).map_err(|e| format!("failed to resolve auth.tokenSource: {e}"))
        }
        None => Ok(token.to_owned()),
    }
}

// --- frpc --------------------------------------------------------------------------------------

enum Setter {
    Token,
    Oidc(oidc::ClientCredentials),
    OidcSource(ValueSource),
}

/// frpc's side: what goes into `privilege_key`.
pub struct ClientAuth {
    /// `auth.token` or what `auth.tokenSource` gave: the token method's secret and, whatever
    /// the method, the key the control connection is encrypted with.
    token: String,
    scopes: Scopes,
    setter: Setter,
}

impl ClientAuth {
    /// frp's `BuildClientAuth`: resolves `auth.tokenSource` (blocking) and prepares OIDC. The
    /// config is validated already.
    pub fn build(cfg: &AuthClientConfig) -> Result<Self, String> {
        let scopes = Scopes::from_config(&cfg.additional_scopes);
        let (token, setter) = match cfg.method.as_str() {
            "oidc" => {
                let setter = match &cfg.oidc.token_source {
                    Some(src) => Setter::OidcSource(src.clone()),
                    None => Setter::Oidc(oidc::ClientCredentials::new(&cfg.oidc)?),
                };
                (cfg.token.clone(), setter)
            }
            "token" => (
                resolved_token(&cfg.token, cfg.token_source.as_ref())?,
                Setter::Token,
            ),
            other => return Err(format!("unsupported auth method: {other}")),
        };
        Ok(Self {
            token,
            scopes,
            setter,
        })
    }

    /// The secret the control connection's encryption key derives from.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// The credential for a message sent at `timestamp`.
    async fn credential(&self, timestamp: i64) -> Result<String, String> {
        match &self.setter {
            Setter::Token => Ok(privilege_key(&self.token, timestamp)),
            Setter::Oidc(cc) => cc
                .token()
                .await
                .map_err(|e| format!("couldn't generate OIDC token for login: {e}")),
            Setter::OidcSource(src) => source::resolve_async(src)
                .await
                .map_err(|e| format!("couldn't acquire OIDC token for login: {e}")),
        }
    }

    /// Fills `login.privilege_key` (its timestamp is set by the caller).
    pub async fn set_login(&self, login: &mut Login) -> Result<(), String> {
        login.privilege_key = self.credential(login.timestamp).await?;
        Ok(())
    }

    /// Stamps a Ping when `HeartBeats` is in scope.
    pub async fn set_ping(&self, ping: &mut Ping) -> Result<(), String> {
        if self.scopes.heartbeats {
            if matches!(self.setter, Setter::Token) {
                ping.timestamp = unix_now();
            }
            ping.privilege_key = self.credential(ping.timestamp).await?;
        }
        Ok(())
    }

    /// Stamps a NewWorkConn when `NewWorkConns` is in scope.
    pub async fn set_new_work_conn(&self, nwc: &mut NewWorkConn) -> Result<(), String> {
        if self.scopes.new_work_conns {
            if matches!(self.setter, Setter::Token) {
                nwc.timestamp = unix_now();
            }
            nwc.privilege_key = self.credential(nwc.timestamp).await?;
        }
        Ok(())
    }
}

// --- frps --------------------------------------------------------------------------------------

enum Check {
    Token,
    Oidc {
        verifier: Box<oidc::Verifier>,
        /// Subjects seen in a valid Login: later tokens must name one of them (frp keeps
        /// this set for the life of frps).
        subjects: Mutex<HashSet<String>>,
    },
}

/// frps' side: checks `privilege_key`.
pub struct ServerAuth {
    token: String,
    scopes: Scopes,
    check: Check,
}

impl ServerAuth {
    /// frp's `BuildServerAuth`: resolves `auth.tokenSource` and, for OIDC, runs the issuer's
    /// discovery. The config is validated already.
    pub async fn build(cfg: &AuthServerConfig) -> Result<Self, String> {
        let scopes = Scopes::from_config(&cfg.additional_scopes);
        let (token, check) = match cfg.method.as_str() {
            "oidc" => {
                let verifier = oidc::Verifier::discover(&cfg.oidc).await.map_err(|e| {
                    format!("create OIDC verifier for issuer {:?}: {e}", cfg.oidc.issuer)
                })?;
                let check = Check::Oidc {
                    verifier: Box::new(verifier),
                    subjects: Mutex::new(HashSet::new()),
                };
                (cfg.token.clone(), check)
            }
            _ => {
                let src = cfg.token_source.clone();
                let token = cfg.token.clone();
                let token =
                    tokio::task::spawn_blocking(move || resolved_token(&token, src.as_ref()))
                        .await
                        .map_err(|e| e.to_string())??;
                (token, Check::Token)
            }
        };
        Ok(Self {
            token,
            scopes,
            check,
        })
    }

    /// A token-method check with `token` (no I/O; for tests and tools).
    pub fn with_token(token: &str, scopes: Scopes) -> Self {
        Self {
            token: token.to_owned(),
            scopes,
            check: Check::Token,
        }
    }

    /// The secret the control connection's encryption key derives from.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn scopes(&self) -> Scopes {
        self.scopes
    }

    /// frp's `VerifyLogin`.
    pub async fn verify_login(&self, login: &Login) -> Result<(), String> {
        match &self.check {
            Check::Token => {
                if verify_privilege_key(&self.token, login.timestamp, &login.privilege_key) {
                    Ok(())
                } else {
                    Err("token in login doesn't match token from configuration".into())
                }
            }
            Check::Oidc { verifier, subjects } => {
                let t = verifier
                    .verify(&login.privilege_key)
                    .await
                    .map_err(|e| format!("invalid OIDC token in login: {e}"))?;
                subjects.lock().unwrap().insert(t.subject);
                Ok(())
            }
        }
    }

    /// frp's `VerifyPing` (a no-op unless `HeartBeats` is in scope).
    pub async fn verify_ping(&self, ping: &Ping) -> Result<(), String> {
        if !self.scopes.heartbeats {
            return Ok(());
        }
        self.verify_later(
            ping.timestamp,
            &ping.privilege_key,
            "token in heartbeat doesn't match token from configuration",
        )
        .await
    }

    /// frp's `VerifyNewWorkConn` (a no-op unless `NewWorkConns` is in scope).
    pub async fn verify_new_work_conn(&self, nwc: &NewWorkConn) -> Result<(), String> {
        if !self.scopes.new_work_conns {
            return Ok(());
        }
        self.verify_later(
            nwc.timestamp,
            &nwc.privilege_key,
            "token in NewWorkConn doesn't match token from configuration",
        )
        .await
    }

    async fn verify_later(&self, timestamp: i64, key: &str, mismatch: &str) -> Result<(), String> {
        match &self.check {
            Check::Token => {
                if verify_privilege_key(&self.token, timestamp, key) {
                    Ok(())
                } else {
                    Err(mismatch.to_owned())
                }
            }
            Check::Oidc { verifier, subjects } => {
                // frp says "ping" for work connections too.
                let t = verifier
                    .verify(key)
                    .await
                    .map_err(|e| format!("invalid OIDC token in ping: {e}"))?;
                if subjects.lock().unwrap().contains(&t.subject) {
                    Ok(())
                } else {
                    Err(format!(
                        "received different OIDC subject in login and ping. new subject: {}",
                        t.subject
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_method_round_trip_and_scopes() {
        let mut cfg = AuthClientConfig {
            method: "token".into(),
            token: "abc".into(),
            ..Default::default()
        };
        let client = ClientAuth::build(&cfg).unwrap();
        let server = ServerAuth::with_token("abc", Scopes::default());
        let mut login = Login {
            timestamp: 42,
            ..Default::default()
        };
        client.set_login(&mut login).await.unwrap();
        server.verify_login(&login).await.unwrap();
        let other = ServerAuth::with_token("abd", Scopes::default());
        assert_eq!(
            other.verify_login(&login).await.unwrap_err(),
            "token in login doesn't match token from configuration"
        );
        // Out of scope: pings carry nothing and pass.
        let mut ping = Ping::default();
        client.set_ping(&mut ping).await.unwrap();
        assert!(ping.privilege_key.is_empty());
        other.verify_ping(&ping).await.unwrap();
        // In scope: stamped, and checked.
        cfg.additional_scopes = vec!["HeartBeats".into(), "NewWorkConns".into()];
        let client = ClientAuth::build(&cfg).unwrap();
        let scopes = Scopes::from_config(&cfg.additional_scopes);
        let server = ServerAuth::with_token("abc", scopes);
        let other = ServerAuth::with_token("abd", scopes);
        let mut ping = Ping::default();
        client.set_ping(&mut ping).await.unwrap();
        server.verify_ping(&ping).await.unwrap();
        assert_eq!(
            other.verify_ping(&ping).await.unwrap_err(),
            "token in heartbeat doesn't match token from configuration"
        );
        let mut nwc = NewWorkConn::default();
        client.set_new_work_conn(&mut nwc).await.unwrap();
        server.verify_new_work_conn(&nwc).await.unwrap();
        assert_eq!(
            other.verify_new_work_conn(&nwc).await.unwrap_err(),
            "token in NewWorkConn doesn't match token from configuration"
        );
    }

    /// `auth.oidc.tokenSource`: read again for every message that carries a token.
    #[tokio::test]
    async fn oidc_token_source_is_read_per_message() {
        let path = std::env::temp_dir().join(format!("frp-uring-oidc-{}", std::process::id()));
        std::fs::write(&path, "jwt-1\n").unwrap();
        let cfg = AuthClientConfig {
            method: "oidc".into(),
            additional_scopes: vec!["HeartBeats".into()],
            oidc: crate::config::AuthOidcClientConfig {
                token_source: Some(ValueSource {
                    source_type: "file".into(),
                    file: Some(crate::config::FileSource {
                        path: path.to_str().unwrap().into(),
                    }),
                    exec: None,
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = ClientAuth::build(&cfg).unwrap();
        let mut login = Login::default();
        client.set_login(&mut login).await.unwrap();
        assert_eq!(login.privilege_key, "jwt-1");
        std::fs::write(&path, "jwt-2").unwrap();
        let mut ping = Ping::default();
        client.set_ping(&mut ping).await.unwrap();
        assert_eq!(ping.privilege_key, "jwt-2");
        // Out of scope: nothing.
        let mut nwc = NewWorkConn::default();
        client.set_new_work_conn(&mut nwc).await.unwrap();
        assert!(nwc.privilege_key.is_empty());
        std::fs::remove_file(&path).unwrap();
        let err = client.set_login(&mut login).await.unwrap_err();
        assert!(
            err.starts_with("couldn't acquire OIDC token for login: failed to read file "),
            "{err}"
        );
    }

    #[tokio::test]
    async fn token_source_is_resolved_at_build() {
        let cfg = AuthServerConfig {
            method: "token".into(),
            token_source: Some(ValueSource {
                source_type: "file".into(),
                file: Some(crate::config::FileSource {
                    path: "/nonexistent/frp-uring-token".into(),
                }),
                exec: None,
            }),
            ..Default::default()
        };
        let err = ServerAuth::build(&cfg).await.err().unwrap();
        assert_eq!(
            err,
            "failed to resolve auth.tokenSource: failed to read file /nonexistent/frp-uring-token: open /nonexistent/frp-uring-token: no such file or directory"
        );
    }
}
