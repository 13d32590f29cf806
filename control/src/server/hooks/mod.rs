//! frps' hook chain: server plugins asked on Login, NewProxy, CloseProxy, Ping, NewWorkConn and
//! NewUserConn (frp's `pkg/plugin/server`).
//!
//! A [`ServerPlugin`] has one method per operation, each given the operation's content (frp's
//! JSON shapes: the message as received plus the client's [`UserInfo`]) and answering with a
//! [`Verdict`]: let it pass unchanged, reject it with a reason, or replace it. The [`Hooks`]
//! chain asks the plugins registered for an operation in configuration order, as frp does: the
//! first rejection or error ends the chain; a replaced content is what the next plugin sees and
//! what frps then acts on. CloseProxy is a notification: every plugin is told, answers are
//! ignored. [`HttpPlugin`] (`[[httpPlugins]]`) is the implementation frp has; an in-process
//! plugin would be another implementation of the trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tracing::{info, warn};

use crate::config::ServerConfig;
use crate::msg::{CloseProxy, Login, NewProxy, NewWorkConn, Ping};

mod http;
pub use http::HttpPlugin;

/// The version frps puts in every plugin request.
pub const API_VERSION: &str = "0.1.0";

/// The operations a plugin can be registered for (`ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Login,
    NewProxy,
    CloseProxy,
    Ping,
    NewWorkConn,
    NewUserConn,
}

impl Op {
    pub const ALL: [Op; 6] = [
        Op::Login,
        Op::NewProxy,
        Op::CloseProxy,
        Op::Ping,
        Op::NewWorkConn,
        Op::NewUserConn,
    ];

    /// frp's name of the operation (`op` in requests and in `ops`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Login => "Login",
            Op::NewProxy => "NewProxy",
            Op::CloseProxy => "CloseProxy",
            Op::Ping => "Ping",
            Op::NewWorkConn => "NewWorkConn",
            Op::NewUserConn => "NewUserConn",
        }
    }

    pub fn parse(s: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == s)
    }
}

/// Go's decoding of `null`: the field keeps its zero value.
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(
    d: D,
) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go marshals a nil map as `null` (frps' `metas` are nil when frpc sent none).
fn map_or_null<S: Serializer>(m: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    if m.is_empty() {
        s.serialize_none()
    } else {
        m.serialize(s)
    }
}

/// The client a request is about (frp's `UserInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    #[serde(default, deserialize_with = "null_default")]
    pub user: String,
    #[serde(
        default,
        deserialize_with = "null_default",
        serialize_with = "map_or_null"
    )]
    pub metas: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_default")]
    pub run_id: String,
}

impl UserInfo {
    /// The user info of a logged-in client: its Login's user and metas, its run id.
    pub fn of(login: &Login, run_id: &str) -> UserInfo {
        UserInfo {
            user: login.user.clone(),
            metas: login.metas.clone(),
            run_id: run_id.to_string(),
        }
    }
}

/// Login: the message, plus the address the client connected from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoginContent {
    #[serde(flatten)]
    pub login: Login,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub client_address: String,
}

/// NewProxy: the client and its proxy's message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewProxyContent {
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    #[serde(flatten)]
    pub new_proxy: NewProxy,
}

/// CloseProxy: the client and the proxy's name (sent when a proxy is closed, for whatever
/// reason: CloseProxy, the client leaving).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CloseProxyContent {
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    #[serde(flatten)]
    pub close_proxy: CloseProxy,
}

/// Ping: the client and its heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PingContent {
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    #[serde(flatten)]
    pub ping: Ping,
}

/// NewWorkConn: the client and the work connection's first message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NewWorkConnContent {
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    #[serde(flatten)]
    pub new_work_conn: NewWorkConn,
}

/// NewUserConn: a user connection reaching a tcp, https, tcpmux, stcp or sudp proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUserConnContent {
    #[serde(default, deserialize_with = "null_default")]
    pub user: UserInfo,
    #[serde(default, deserialize_with = "null_default")]
    pub proxy_name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub proxy_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub remote_addr: String,
}

/// A plugin's answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict<T> {
    /// Go on with the content as it was (`unchange`).
    Unchange,
    /// Refuse (`reject`, with `reject_reason`): the client is told the reason.
    Reject(String),
    /// Go on with this content instead.
    Change(T),
}

/// A plugin could not be asked, or its answer made no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookError(pub String);

pub type HookResult<T> = Result<Verdict<T>, HookError>;

/// What one run of the chain shares among its plugins (frp's request id).
#[derive(Debug, Clone)]
pub struct HookCtx {
    /// Sent to HTTP plugins as `X-Frp-Reqid`.
    pub reqid: String,
}

impl HookCtx {
    fn new() -> HookCtx {
        let b: [u8; 8] = rand::random();
        HookCtx {
            reqid: hex::encode(b),
        }
    }
}

fn unchanged<'a, T: Send + 'a>() -> BoxFuture<'a, HookResult<T>> {
    Box::pin(std::future::ready(Ok(Verdict::Unchange)))
}

/// A server plugin: one method per operation, called only for the operations
/// [`ServerPlugin::handles`] claims. Every method defaults to letting the content pass.
pub trait ServerPlugin: Send + Sync {
    /// The plugin's name, as logged.
    fn name(&self) -> &str;

    /// Whether the plugin is asked on `op` (`ops`).
    fn handles(&self, op: Op) -> bool;

    /// A client logs in, before its credentials are checked. A changed Login is what frps
    /// then verifies and registers (user, metas, run id, privilege key…); a rejection is the
    /// LoginResp error.
    fn login<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a LoginContent,
    ) -> BoxFuture<'a, HookResult<LoginContent>> {
        let _ = (ctx, c);
        unchanged()
    }

    /// A client registers a proxy. A changed NewProxy (e.g. another `remote_port`) is what
    /// frps registers; a rejection is the NewProxyResp error.
    fn new_proxy<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewProxyContent,
    ) -> BoxFuture<'a, HookResult<NewProxyContent>> {
        let _ = (ctx, c);
        unchanged()
    }

    /// A proxy was closed. Told after the fact: the answer is not used.
    fn close_proxy<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a CloseProxyContent,
    ) -> BoxFuture<'a, Result<(), HookError>> {
        let _ = (ctx, c);
        Box::pin(std::future::ready(Ok(())))
    }

    /// A heartbeat arrives, before its privilege key is checked. A rejection is the Pong
    /// error (frpc then reconnects).
    fn ping<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a PingContent,
    ) -> BoxFuture<'a, HookResult<PingContent>> {
        let _ = (ctx, c);
        unchanged()
    }

    /// A work connection arrives for a logged-in client, before its privilege key is checked.
    /// A rejection is sent as a StartWorkConn error and the connection closed.
    fn new_work_conn<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewWorkConnContent,
    ) -> BoxFuture<'a, HookResult<NewWorkConnContent>> {
        let _ = (ctx, c);
        unchanged()
    }

    /// A user connection reached a proxy, before a work connection is taken for it. A
    /// rejection closes the user connection; a changed content has no effect.
    fn new_user_conn<'a>(
        &'a self,
        ctx: &'a HookCtx,
        c: &'a NewUserConnContent,
    ) -> BoxFuture<'a, HookResult<NewUserConnContent>> {
        let _ = (ctx, c);
        unchanged()
    }
}

/// A content type that passes through the chain, tied to its operation and trait method.
trait Content: Send + Sync + Sized {
    const OP: Op;
    fn ask<'a>(
        p: &'a dyn ServerPlugin,
        ctx: &'a HookCtx,
        c: &'a Self,
    ) -> BoxFuture<'a, HookResult<Self>>;
}

macro_rules! content {
    ($t:ty, $op:expr, $method:ident) => {
        impl Content for $t {
            const OP: Op = $op;
            fn ask<'a>(
                p: &'a dyn ServerPlugin,
                ctx: &'a HookCtx,
                c: &'a Self,
            ) -> BoxFuture<'a, HookResult<Self>> {
                p.$method(ctx, c)
            }
        }
    };
}

content!(LoginContent, Op::Login, login);
content!(NewProxyContent, Op::NewProxy, new_proxy);
content!(PingContent, Op::Ping, ping);
content!(NewWorkConnContent, Op::NewWorkConn, new_work_conn);
content!(NewUserConnContent, Op::NewUserConn, new_user_conn);

/// The plugins of a frps, asked in configuration order.
#[derive(Default, Clone)]
pub struct Hooks {
    /// Per [`Op`] (in [`Op::ALL`] order): the plugins registered for it.
    by_op: [Vec<Arc<dyn ServerPlugin>>; 6],
}

impl Hooks {
    /// A chain of `plugins`, each asked on the operations it handles.
    pub fn new(plugins: Vec<Arc<dyn ServerPlugin>>) -> Hooks {
        let mut by_op: [Vec<Arc<dyn ServerPlugin>>; 6] = Default::default();
        for p in plugins {
            for (i, op) in Op::ALL.into_iter().enumerate() {
                if p.handles(op) {
                    by_op[i].push(p.clone());
                }
            }
        }
        Hooks { by_op }
    }

    /// The `[[httpPlugins]]` of `cfg`.
    pub fn from_config(cfg: &ServerConfig) -> Hooks {
        let mut plugins: Vec<Arc<dyn ServerPlugin>> = Vec::new();
        for opts in &cfg.http_plugins {
            plugins.push(Arc::new(HttpPlugin::new(opts)));
            info!("plugin [{}] has been registered", opts.name);
        }
        Hooks::new(plugins)
    }

    fn plugins(&self, op: Op) -> &[Arc<dyn ServerPlugin>] {
        let i = Op::ALL.iter().position(|o| *o == op).unwrap_or(0);
        &self.by_op[i]
    }

    /// Whether any plugin is registered for `op`.
    pub fn has(&self, op: Op) -> bool {
        !self.plugins(op).is_empty()
    }

    /// frp's chain for the operations whose content can change: the first error or rejection
    /// ends it (the error's text is what the client is told), a change is passed on.
    async fn run<T: Content>(&self, mut content: T) -> Result<T, String> {
        let plugins = self.plugins(T::OP);
        if plugins.is_empty() {
            return Ok(content);
        }
        let ctx = HookCtx::new();
        let op = T::OP.as_str();
        for p in plugins {
            match T::ask(p.as_ref(), &ctx, &content).await {
                Ok(Verdict::Unchange) => {}
                Ok(Verdict::Change(c)) => content = c,
                Ok(Verdict::Reject(reason)) => return Err(reason),
                Err(e) => {
                    // frp logs NewUserConn's failures at info, the others at warning.
                    if T::OP == Op::NewUserConn {
                        info!(
                            "[reqid: {}] send {op} request to plugin [{}] error: {e}",
                            ctx.reqid,
                            p.name()
                        );
                    } else {
                        warn!(
                            "[reqid: {}] send {op} request to plugin [{}] error: {e}",
                            ctx.reqid,
                            p.name()
                        );
                    }
                    return Err(format!("send {op} request to plugin error"));
                }
            }
        }
        Ok(content)
    }

    pub async fn login(&self, c: LoginContent) -> Result<LoginContent, String> {
        self.run(c).await
    }

    pub async fn new_proxy(&self, c: NewProxyContent) -> Result<NewProxyContent, String> {
        self.run(c).await
    }

    pub async fn ping(&self, c: PingContent) -> Result<PingContent, String> {
        self.run(c).await
    }

    pub async fn new_work_conn(&self, c: NewWorkConnContent) -> Result<NewWorkConnContent, String> {
        self.run(c).await
    }

    pub async fn new_user_conn(&self, c: NewUserConnContent) -> Result<NewUserConnContent, String> {
        self.run(c).await
    }

    /// Tells every CloseProxy plugin, in the background (frp does not wait either).
    pub fn close_proxy(&self, c: CloseProxyContent) {
        let plugins = self.plugins(Op::CloseProxy).to_vec();
        if plugins.is_empty() {
            return;
        }
        tokio::spawn(async move {
            let ctx = HookCtx::new();
            for p in plugins {
                if let Err(e) = p.close_proxy(&ctx, &c).await {
                    warn!(
                        "[reqid: {}] send CloseProxy request to plugin [{}] error: {e}",
                        ctx.reqid,
                        p.name()
                    );
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
