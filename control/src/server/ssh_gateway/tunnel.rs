//! One ssh connection to the gateway (frp's `TunnelServer`): authenticate, wait for the
//! `tcpip-forward` request (`ssh -R`) and the command (`exec`), start an frpc inside frps for
//! the proxy the command asks for, tell the user how it went on the session channel, and
//! serve the proxy until the ssh connection ends. Each user connection to the proxy becomes
//! a `forwarded-tcpip` channel back to the ssh client, which connects it to the `-R` target.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::future::BoxFuture;
use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Handle, Msg, PublicKeyOffer, Session};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tracing::{debug, error, info, trace};

use super::command::{self, Refusal, Request};
use crate::client::plugin::{ConnInfo, Plugin, Relay, UserConn};
use crate::client::{Client, Phase};
use crate::config::ClientConfig;
use crate::server::State;
use crate::transport::{Conn, InProcessDialer};

/// From accepting the connection to a successful authentication (frps' first-message
/// timeout; frp has none, so a silent or half-finished handshake would hold a connection).
const AUTH_TIMEOUT: Duration = super::super::FIRST_MESSAGE_TIMEOUT;
/// From authentication to both the forward request and the command (frp's 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// For the proxy to be running (frp waits 1 s; frps answers in milliseconds, the margin is
/// for loaded machines).
const READY_TIMEOUT: Duration = Duration::from_secs(5);
/// After telling the user why the tunnel ends, how long the client gets to hang up.
const HANG_UP_GRACE: Duration = Duration::from_secs(1);

/// What the connection's handler (inside russh's session task) reports.
enum Event {
    AuthFailed(String),
    /// The user the key's `authorized_keys` comment names (empty without one).
    Authenticated(String),
    Session(ChannelId),
    Forward(String, u32),
    Exec(String),
}

/// Settings every connection shares.
pub(super) struct Shared {
    pub config: Arc<russh::server::Config>,
    /// `authorizedKeysFile`; `None`: no ssh authentication, the command's `-t` token logs the
    /// proxy in instead.
    pub authorized_keys: Option<PathBuf>,
}

struct SshHandler {
    shared: Arc<Shared>,
    remote: SocketAddr,
    events: mpsc::UnboundedSender<Event>,
    user: String,
    /// Only the first forward request, session channel and command count (as in frp); the
    /// rest are answered without being passed on, so a client cannot queue up events.
    forwarded: bool,
    has_session: bool,
    has_command: bool,
}

impl SshHandler {
    /// `Some(user)` when `key` may log in.
    fn check_key(&self, key: &PublicKey) -> Option<String> {
        let path = self.shared.authorized_keys.as_ref()?;
        match super::keys::authorized_user(path, key) {
            Ok(Some(user)) => Some(user),
            Ok(None) => {
                let _ = self.events.send(Event::AuthFailed(format!(
                    "unknown public key for remoteAddr \"{}\"",
                    self.remote
                )));
                None
            }
            Err(e) => {
                error!("load authorized keys file error: {e}");
                let _ = self.events.send(Event::AuthFailed("internal error".into()));
                None
            }
        }
    }

    fn reply(&self, accept: bool) -> Auth {
        if accept {
            Auth::Accept
        } else {
            Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                partial_success: false,
            }
        }
    }
}

impl russh::server::Handler for SshHandler {
    type Error = russh::Error;

    async fn auth_none(&mut self, _user: &str) -> Result<Auth, Self::Error> {
        Ok(self.reply(self.shared.authorized_keys.is_none()))
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.shared.authorized_keys.is_none() {
            return Ok(Auth::Accept);
        }
        Ok(self.reply(self.check_key(offer.public_key).is_some()))
    }

    async fn auth_publickey(
        &mut self,
        _user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.shared.authorized_keys.is_none() {
            return Ok(Auth::Accept);
        }
        match self.check_key(key.public_key) {
            Some(user) => {
                self.user = user;
                Ok(Auth::Accept)
            }
            None => Ok(self.reply(false)),
        }
    }

    async fn auth_succeeded(&mut self, _session: &mut Session) -> Result<(), Self::Error> {
        let _ = self
            .events
            .send(Event::Authenticated(std::mem::take(&mut self.user)));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        mut channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.has_session {
            // Dropping the handle refuses the channel.
            return Ok(());
        }
        self.has_session = true;
        reply.accept().await;
        let _ = self.events.send(Event::Session(channel.id()));
        // What the user types is not read; drain it so it cannot hold the session up.
        tokio::spawn(async move { while channel.wait().await.is_some() {} });
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        if !self.has_command {
            self.has_command = true;
            let command = String::from_utf8_lossy(data).into_owned();
            let _ = self.events.send(Event::Exec(command));
        }
        Ok(())
    }

    // frp answers yes to every channel request.
    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _variable_name: &str,
        _variable_value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // Only the first forward carries the proxy's connections (as in frp).
        if !self.forwarded {
            self.forwarded = true;
            let _ = self.events.send(Event::Forward(address.to_string(), *port));
        }
        Ok(true)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        _address: &str,
        _port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Serves one accepted connection; logs why it ended when that was an error.
pub(super) async fn serve(
    shared: Arc<Shared>,
    state: Arc<State>,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    let _ = tcp.set_nodelay(true);
    let kill = CancellationToken::new();
    let stream = Killable::new(tcp, kill.clone());
    match run(shared, state, stream, remote).await {
        Ok(()) => debug!("ssh tunnel connection from {remote} closed"),
        Err(reason) => {
            // Bounded: a flood of garbage must not flood the log.
            match crate::log::PEER_REFUSALS.take() {
                Some(0) => {
                    error!("ssh tunnel server run error: connection from {remote}: {reason}")
                }
                Some(n) => error!(
                    "ssh tunnel server run error: connection from {remote}: {reason} ({n} similar lines suppressed)"
                ),
                None => {}
            }
        }
    }
    // Whatever state the session is in, the connection is closed now.
    kill.cancel();
}

/// The ssh session and what it takes to talk to the user.
struct Conversation {
    session: russh::server::RunningSession<SshHandler>,
    handle: Handle,
    channel: Option<ChannelId>,
}

impl Conversation {
    /// Writes a line to the user's session channel (frp's `writeToClient`).
    async fn say(&self, text: &str) {
        if let Some(ch) = self.channel {
            let _ = self.handle.data(ch, format!("{text}\n").into_bytes()).await;
        }
    }

    /// Ends the session channel with `code`, gives the client a moment to hang up, then
    /// disconnects. The caller closes the socket after.
    async fn finish(&mut self, code: u32) {
        if let Some(ch) = self.channel {
            let _ = self.handle.exit_status_request(ch, code).await;
            let _ = self.handle.eof(ch).await;
            let _ = self.handle.close(ch).await;
        }
        if tokio::time::timeout(HANG_UP_GRACE, &mut self.session)
            .await
            .is_err()
        {
            let _ = self
                .handle
                .disconnect(russh::Disconnect::ByApplication, String::new(), "en".into())
                .await;
            let _ = tokio::time::timeout(HANG_UP_GRACE, &mut self.session).await;
        }
    }
}

async fn run(
    shared: Arc<Shared>,
    state: Arc<State>,
    stream: Killable<TcpStream>,
    remote: SocketAddr,
) -> Result<(), String> {
    let (tx, mut events) = mpsc::unbounded_channel();
    let handler = SshHandler {
        shared: shared.clone(),
        remote,
        events: tx,
        user: String::new(),
        forwarded: false,
        has_session: false,
        has_command: false,
    };
    let deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
    let started = tokio::time::timeout_at(
        deadline,
        russh::server::run_stream(shared.config.clone(), stream, handler),
    )
    .await;
    let session = match started {
        Err(_) => return Err(format!("no ssh handshake within {AUTH_TIMEOUT:?}")),
        Ok(Err(e)) => return Err(format!("ssh handshake: {e}")),
        Ok(Ok(s)) => s,
    };
    let handle = session.handle();
    let mut talk = Conversation {
        session,
        handle,
        channel: None,
    };

    // 1. Authentication. (The events end when the session does: its result says why.)
    let mut auth_failure = String::new();
    let ended = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Authenticated(user)) => break Ok(user),
                Some(Event::AuthFailed(why)) => auth_failure = why,
                Some(_) => {}
                None => break Err((&mut talk.session).await),
            },
            r = &mut talk.session => break Err(r),
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("no successful ssh authentication within {AUTH_TIMEOUT:?}"));
            }
        }
    };
    let key_user = match ended {
        Ok(user) => user,
        Err(r) => {
            // Reasons given before the session ended (a refused key) come first.
            while let Ok(ev) = events.try_recv() {
                if let Event::AuthFailed(why) = ev {
                    auth_failure = why;
                }
            }
            let why = match r {
                Err(e) => format!("ssh handshake: {e}"),
                Ok(()) => "closed before authentication".into(),
            };
            return Err(if auth_failure.is_empty() {
                why
            } else {
                format!("{why}: {auth_failure}")
            });
        }
    };

    // 2. The forward request and the command (frp: 3 s).
    let mut forward: Option<(String, u32)> = None;
    let mut payload = String::new();
    let wait = tokio::time::sleep(REQUEST_TIMEOUT);
    tokio::pin!(wait);
    while forward.is_none() || payload.is_empty() {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Session(id)) => {
                    if talk.channel.is_none() {
                        talk.channel = Some(id);
                    }
                }
                Some(Event::Forward(host, port)) => forward = Some((host, port)),
                Some(Event::Exec(cmd)) => {
                    if cmd.is_empty() {
                        talk.say("no command: run ssh with one, e.g. ssh -R :80:127.0.0.1:8080 v0@{address} tcp --remote-port 6000").await;
                        talk.finish(1).await;
                        return Err("empty command".into());
                    }
                    payload = cmd;
                }
                Some(_) => {}
                None => {
                    return match (&mut talk.session).await {
                        Err(e) => Err(format!("ssh session: {e}")),
                        Ok(()) => Err("closed before asking for a proxy".into()),
                    };
                }
            },
            r = &mut talk.session => {
                return match r {
                    Err(e) => Err(format!("ssh session: {e}")),
                    Ok(()) => Err("closed before asking for a proxy".into()),
                };
            }
            _ = &mut wait => {
                let why = "get addr and extra payload timeout";
                talk.say(&format!(
                    "{why}: run ssh with -R and a command, e.g. ssh -R :80:127.0.0.1:8080 v0@{{address}} tcp --remote-port 6000"
                ))
                .await;
                talk.finish(1).await;
                return Err(why.into());
            }
        }
    }
    let Some((host, port)) = forward else {
        unreachable!("the loop ends with a forward");
    };

    // 3. The command.
    let request = match command::parse(&payload) {
        Ok(r) => r,
        Err(Refusal::Help(text)) => {
            talk.say(&text).await;
            talk.finish(0).await;
            return Ok(());
        }
        Err(Refusal::Error(e)) => {
            talk.say(&e).await;
            talk.finish(1).await;
            return Err(format!("parse flags from ssh client error: {e}"));
        }
    };

    // 4. The frpc inside frps.
    let Request {
        proxy,
        user,
        client_id,
        token,
    } = request;
    let name = proxy.name.clone();
    let proxy_type = proxy.proxy_type.as_str();
    let mut cfg = ClientConfig::unset();
    cfg.user = if key_user.is_empty() { user } else { key_user };
    cfg.client_id = client_id;
    // With authorizedKeysFile the ssh login is the authentication (frp's AlwaysAuthPass):
    // the client logs in with frps' own token. Without, the command's `-t` token must do.
    cfg.auth.token = if shared.authorized_keys.is_some() {
        state.token.clone()
    } else {
        token
    };
    cfg.transport.tcp_mux = false;
    cfg.transport.tls.enable = false;
    cfg.proxies = vec![proxy];
    cfg.complete();
    // Nothing is dialed: an `http_proxy` from the environment does not apply.
    cfg.transport.proxy_url.clear();
    let user = cfg.user.clone();

    let dial: InProcessDialer = {
        let state = state.clone();
        Arc::new(move || {
            let (ours, theirs) = tokio::io::duplex(64 * 1024);
            let state = state.clone();
            tokio::spawn(async move {
                state
                    .handle_logical(Conn::Boxed(Box::new(theirs)), remote)
                    .await
            });
            Conn::Boxed(Box::new(ours))
        })
    };
    let forwarder = Arc::new(Forwarder {
        handle: talk.handle.clone(),
        host,
        port,
    });
    let client = match Client::in_process(cfg, state.engine.clone(), dial, &name, forwarder) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            talk.say(&e.to_string()).await;
            talk.finish(1).await;
            return Err(e.to_string());
        }
    };
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut vc = tokio::spawn(client.clone().run(async move {
        let _ = stop_rx.await;
    }));

    // 5. Wait for the proxy to run, then serve until the ssh connection ends.
    let outcome = wait_ready(&client, &name, &mut vc, &mut talk).await;
    let result = match outcome {
        Ready::Running(remote_addr) => {
            info!("ssh tunnel from {remote}: proxy [{name}] type [{proxy_type}] running");
            talk.say(&format!(
                "\nfrp (via SSH) (Ctrl+C to quit)\n\nUser: {user}\nProxyName: {name}\nType: {proxy_type}\nRemoteAddress: {remote_addr}\n"
            ))
            .await;
            tokio::select! {
                _ = &mut talk.session => Ok(()),
                r = &mut vc => {
                    // The frpc stopped by itself (frp closes the ssh connection then).
                    let why = match r {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the proxy's client stopped".to_string(),
                    };
                    talk.say(&why).await;
                    talk.finish(1).await;
                    Err(why)
                }
            }
        }
        Ready::Failed(why) => {
            talk.say(&why).await;
            talk.finish(1).await;
            Err(format!("proxy [{name}]: {why}"))
        }
        Ready::SessionEnded => Ok(()),
    };
    // Clean-up: the frpc closes its proxy (CloseProxy) and its connections to frps.
    let _ = stop_tx.send(());
    if tokio::time::timeout(Duration::from_secs(5), &mut vc)
        .await
        .is_err()
    {
        vc.abort();
    }
    info!("ssh tunnel from {remote}: proxy [{name}] closed");
    result
}

enum Ready {
    Running(String),
    Failed(String),
    SessionEnded,
}

/// frp's `waitProxyStatusReady`: the proxy runs, its start failed, or the frpc stopped (a
/// refused login).
async fn wait_ready(
    client: &Client,
    name: &str,
    vc: &mut tokio::task::JoinHandle<Result<(), crate::client::ClientError>>,
    talk: &mut Conversation,
) -> Ready {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let phase = client
                    .proxy_phases()
                    .into_iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, p)| p);
                match phase {
                    Some(Phase::Running { remote_addr }) => return Ready::Running(remote_addr),
                    Some(Phase::StartError(_, e)) => return Ready::Failed(e),
                    _ => {}
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ready::Failed("wait proxy status ready timeout".into());
                }
            }
            r = &mut *vc => {
                return Ready::Failed(match r {
                    Ok(Err(e)) => e.to_string(),
                    _ => "ssh tunnel server closed".into(),
                });
            }
            _ = &mut talk.session => return Ready::SessionEnded,
        }
    }
}

/// Serves the proxy's user connections: each one a `forwarded-tcpip` channel to the ssh
/// client, for the address of its `-R` request (frp's `HandleWorkConnCb`).
struct Forwarder {
    handle: Handle,
    host: String,
    port: u32,
}

impl Plugin for Forwarder {
    fn name(&self) -> &'static str {
        "ssh-tunnel"
    }

    fn handle(&self, user: UserConn, info: ConnInfo, relay: Relay) -> BoxFuture<'static, ()> {
        let handle = self.handle.clone();
        let (host, port) = (self.host.clone(), self.port);
        Box::pin(async move {
            // frp sends the forwarded address as the originator too.
            match handle
                .channel_open_forwarded_tcpip(host.clone(), port, host, port)
                .await
            {
                Ok(ch) => {
                    let target = dataplane::Endpoint::Stream(Box::new(ch.into_stream()));
                    relay.join(user, target, BytesMut::new()).await;
                }
                Err(e) => trace!(
                    "[{}] open conn error: open ssh channel error: {e}",
                    info.proxy
                ),
            }
        })
    }
}

/// A stream the gateway can close from outside russh's session task: once `kill` fires,
/// reads and writes fail, which ends the session whatever state it is in (a handshake that
/// never completes, a client that ignores the disconnect).
struct Killable<S> {
    inner: S,
    kill: CancellationToken,
    on_read: Pin<Box<WaitForCancellationFutureOwned>>,
    on_write: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<S> Killable<S> {
    fn new(inner: S, kill: CancellationToken) -> Self {
        Killable {
            inner,
            on_read: Box::pin(kill.clone().cancelled_owned()),
            on_write: Box::pin(kill.clone().cancelled_owned()),
            kill,
        }
    }
}

fn killed() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "connection closed by the gateway",
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for Killable<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.on_read.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Killable<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        if me.on_write.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_write(cx, b)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.on_write.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(killed()));
        }
        Pin::new(&mut me.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        if me.kill.is_cancelled() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut me.inner).poll_shutdown(cx)
    }
}
