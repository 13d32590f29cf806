//! `[[httpPlugins]]`: a server plugin reached over HTTP(S), as frp's `httpPlugin`.
//!
//! Each request is `POST {addr}{path}?op=OP&version=0.1.0` with `Content-Type:
//! application/json`, `X-Frp-Reqid` and the body `{"version":"0.1.0","op":OP,"content":…}`;
//! the answer must be `200` with `{"reject":…,"reject_reason":…,"unchange":…,"content":…}`.
//! `addr` without a scheme is `http://`; `https://` verifies the plugin's certificate against
//! the system's roots only with `tlsVerify = true`. Connections are kept alive and reused
//! (hyper's pooled client).
//!
//! frp's HTTP client has no timeout; here a request that takes longer than
//! [`REQUEST_TIMEOUT`] fails as a plugin error would, so a plugin that hangs cannot hold a
//! login, a proxy or a user connection forever.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{
    API_VERSION, CloseProxyContent, HookCtx, HookError, HookResult, LoginContent, NewProxyContent,
    NewUserConnContent, NewWorkConnContent, Op, PingContent, ServerPlugin, Verdict, null_default,
};
use crate::config::HttpPluginOptions;

/// How long one plugin request may take (frp-uring's bound; frp has none).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Test-only: overrides [`REQUEST_TIMEOUT`] (milliseconds).
pub const TEST_TIMEOUT_ENV: &str = "FRP_URING_TEST_ONLY_PLUGIN_TIMEOUT_MS";
/// The largest answer read from a plugin.
const MAX_RESPONSE: usize = 4 << 20;

/// One `[[httpPlugins]]` entry.
pub struct HttpPlugin {
    name: String,
    ops: Vec<Op>,
    url: String,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Serialize)]
struct Request<'a, T> {
    version: &'static str,
    op: &'static str,
    content: &'a T,
}

#[derive(Deserialize)]
struct Response {
    #[serde(default, deserialize_with = "null_default")]
    reject: bool,
    #[serde(default, deserialize_with = "null_default")]
    reject_reason: String,
    #[serde(default, deserialize_with = "null_default")]
    unchange: bool,
    #[serde(default)]
    content: Option<serde_json::Value>,
}

impl HttpPlugin {
    pub fn new(opts: &HttpPluginOptions) -> HttpPlugin {
        let mut url = format!("{}{}", opts.addr, opts.path);
        let https = url.starts_with("https://");
        if !https && !url.starts_with("http://") {
            url = format!("http://{url}");
        }
        let tls = if https && opts.tls_verify {
            crate::tls::system_roots_client_config().unwrap_or_else(|e| {
                warn!(
                    "plugin [{}]: {e}; its certificate cannot be verified",
                    opts.name
                );
                empty_roots_config()
            })
        } else {
            // Without tlsVerify any certificate is accepted (Go's InsecureSkipVerify).
            crate::tls::client_config("", "", "").unwrap_or_else(|_| empty_roots_config())
        };
        // One small request and answer at a time per connection: no Nagle delay.
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let timeout = std::env::var(TEST_TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_millis)
            .unwrap_or(REQUEST_TIMEOUT);
        HttpPlugin {
            name: opts.name.clone(),
            ops: opts.ops.iter().filter_map(|o| Op::parse(o)).collect(),
            url,
            timeout,
            client,
        }
    }

    /// Sends one request and decodes the answer; the content of a changed answer is decoded
    /// into a fresh `T` (absent fields are zero, as frp's decoding leaves them).
    async fn call<T: Serialize + DeserializeOwned + Default>(
        &self,
        ctx: &HookCtx,
        op: Op,
        content: &T,
    ) -> HookResult<T> {
        let body = serde_json::to_vec(&Request {
            version: API_VERSION,
            op: op.as_str(),
            content,
        })
        .map_err(|e| HookError(e.to_string()))?;
        let uri = format!("{}?op={}&version={API_VERSION}", self.url, op.as_str());
        let req = http::Request::post(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("X-Frp-Reqid", &ctx.reqid)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| HookError(format!("parse \"{uri}\": {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| HookError(error_chain(&e)))?;
            let status = resp.status();
            if status != http::StatusCode::OK {
                return Err(HookError(format!(
                    "do http request error code: {}",
                    status.as_u16()
                )));
            }
            Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| HookError(format!("read answer: {e}")))
        };
        let buf = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(HookError(format!(
                    "Post \"{uri}\": no answer within {:?}",
                    self.timeout
                )));
            }
        };
        let res: Response =
            serde_json::from_slice(&buf).map_err(|e| HookError(format!("invalid answer: {e}")))?;
        let changed = match res.content {
            Some(v) if !v.is_null() => {
                serde_json::from_value(v).map_err(|e| HookError(format!("invalid answer: {e}")))?
            }
            _ => T::default(),
        };
        Ok(if res.reject {
            Verdict::Reject(res.reject_reason)
        } else if res.unchange {
            Verdict::Unchange
        } else {
            Verdict::Change(changed)
        })
    }
}

/// A TLS config that trusts nothing (every verified handshake fails).
fn empty_roots_config() -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    )
}

/// An error with its causes (hyper's client error alone says only "client error (Connect)").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl ServerPlugin for HttpPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn handles(&self, op: Op) -> bool {
        self.ops.contains(&op)
    }

    fn login<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a LoginContent,
    ) -> BoxFuture<'a, HookResult<LoginContent>> {
        Box::pin(self.call(ctx, Op::Login, c))
    }

    fn new_proxy<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewProxyContent,
    ) -> BoxFuture<'a, HookResult<NewProxyContent>> {
        Box::pin(self.call(ctx, Op::NewProxy, c))
    }

    fn close_proxy<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a CloseProxyContent,
    ) -> BoxFuture<'a, Result<(), HookError>> {
        Box::pin(async move { self.call(ctx, Op::CloseProxy, c).await.map(|_| ()) })
    }

    fn ping<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a PingContent,
    ) -> BoxFuture<'a, HookResult<PingContent>> {
        Box::pin(self.call(ctx, Op::Ping, c))
    }

    fn new_work_conn<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewWorkConnContent,
    ) -> BoxFuture<'a, HookResult<NewWorkConnContent>> {
        Box::pin(self.call(ctx, Op::NewWorkConn, c))
    }

    fn new_user_conn<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewUserConnContent,
    ) -> BoxFuture<'a, HookResult<NewUserConnContent>> {
        Box::pin(self.call(ctx, Op::NewUserConn, c))
    }
}
