//! The xtcp visitor (frp's `XTCPVisitor`): user connections (from `bindAddr:bindPort` or
//! handed over by other visitors) each become a stream of one P2P session with the proxy
//! owner. The session is made on demand: a connection that finds none asks the tunnel worker
//! to punch (PreCheck, STUN, `NatHoleVisitor`, frps' plan, punch, QUIC/KCP) and retries every
//! 500 ms for up to 20 s. The worker punches at most once per 10 s.
//!
//! - `keepTunnelOpen`: punch at start, then check the session every `minRetryInterval`
//!   seconds (a failed check closes it and asks for a new punch), at most
//!   `maxRetriesAnHour` failed checks an hour beyond the first burst (frp's token bucket).
//! - `fallbackTo` + `fallbackTimeoutMs`: a connection that gets no stream within the timeout
//!   goes to the named visitor (usually an stcp visitor with `bindPort = -1`) instead.
//! - A dead session (the owner gone, an idle timeout) fails the next stream open, which
//!   closes it and asks for a new punch: the next connections get a new session.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dataplane::{Pair, Side};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, error, info, trace, warn};

use super::tunnel::{self, Tunnel};
use super::{EXCHANGE_TIMEOUT, exchange_info, log_resp, punch};
use crate::auth;
use crate::client::visitor::{Session, layers, target_proxy_name, transfer_conn};
use crate::config::VisitorConfig;
use crate::crypto::CryptoKey;
use crate::msg::NatHoleVisitor;
use crate::transport::{self, Conn};

/// frp's `ErrNoTunnelSession`.
pub const NO_TUNNEL_SESSION: &str = "no tunnel session";
/// How long a user connection waits for a stream at most (frp: 20 s).
const OPEN_TIMEOUT: Duration = Duration::from_secs(20);
/// Between two tries of a waiting user connection (frp: 500 ms).
const OPEN_RETRY: Duration = Duration::from_millis(500);
/// The tunnel worker punches at most once per this (frp: 10 s).
const PUNCH_SPACING: Duration = Duration::from_secs(10);

/// frp's `rate.NewLimiter(rate.Every(1h/n), n)`: a bucket of `n` tokens, one back every
/// hour/n.
pub struct RetryLimiter {
    tokens: f64,
    cap: f64,
    every: Duration,
    last: Instant,
}

impl RetryLimiter {
    pub fn new(per_hour: i64) -> RetryLimiter {
        let n = per_hour.max(1) as f64;
        RetryLimiter {
            tokens: n,
            cap: n,
            every: Duration::from_secs_f64(3600.0 / n),
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let gained = now.duration_since(self.last).as_secs_f64() / self.every.as_secs_f64();
        self.tokens = (self.tokens + gained).min(self.cap);
        self.last = now;
    }

    /// How long the next retry must wait (zero: now); takes its token.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.every.mul_f64(-self.tokens)
        }
    }
}

struct Xtcp {
    s: Session,
    v: Arc<VisitorConfig>,
    tag: String,
    tunnel: Mutex<Option<Arc<Tunnel>>>,
    start: Notify,
    busy: AtomicBool,
}

/// Serves one xtcp visitor until its task is dropped.
pub(crate) async fn serve(
    s: Session,
    v: Arc<VisitorConfig>,
    listener: Option<TcpListener>,
    mut internal: mpsc::Receiver<Conn>,
) {
    let x = Arc::new(Xtcp {
        tag: format!("[{}] ", v.name),
        s,
        v,
        tunnel: Mutex::new(None),
        start: Notify::new(),
        busy: AtomicBool::new(false),
    });
    let worker = x.clone().tunnel_worker();
    let keep = {
        let x = x.clone();
        async move {
            if x.v.keep_tunnel_open {
                x.keep_tunnel_open().await
            } else {
                std::future::pending().await
            }
        }
    };
    let accept = {
        let x = x.clone();
        async move {
            let mut acceptor = crate::listen::Acceptor::new(x.tag.clone());
            loop {
                let user = match &listener {
                    Some(l) => tokio::select! {
                        (c, _) = acceptor.accept(l) => {
                            transport::tune_tcp(&c, 0);
                            Conn::Tcp(c)
                        }
                        c = internal.recv() => match c {
                            Some(c) => c,
                            None => return,
                        },
                    },
                    None => match internal.recv().await {
                        Some(c) => c,
                        None => return,
                    },
                };
                tokio::spawn(x.clone().handle_conn(user));
            }
        }
    };
    tokio::select! {
        _ = worker => {}
        _ = keep => {}
        _ = accept => {}
    }
    if let Some(t) = x.tunnel.lock().unwrap().take() {
        t.close();
    }
}

impl Xtcp {
    /// Asks the worker for a punch, unless it is punching (or pausing) already.
    fn ask_for_tunnel(&self) {
        if !self.busy.load(Ordering::SeqCst) {
            self.start.notify_one();
        }
    }

    async fn tunnel_worker(self: Arc<Self>) {
        loop {
            self.start.notified().await;
            self.busy.store(true, Ordering::SeqCst);
            let started = Instant::now();
            self.make_nat_hole().await;
            // Not too often.
            tokio::time::sleep_until(started + PUNCH_SPACING).await;
            self.busy.store(false, Ordering::SeqCst);
        }
    }

    async fn keep_tunnel_open(&self) {
        let mut limiter = RetryLimiter::new(self.v.max_retries_an_hour);
        let every = Duration::from_secs(self.v.min_retry_interval.max(1) as u64);
        let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
        self.start.notify_one();
        loop {
            ticker.tick().await;
            debug!("{}keepTunnelOpenWorker try to check tunnel...", self.tag);
            match self.get_tunnel_conn().await {
                Err(e) => {
                    warn!(
                        "{}keepTunnelOpenWorker get tunnel connection error: {e}",
                        self.tag
                    );
                    tokio::time::sleep(limiter.reserve(Instant::now())).await;
                }
                Ok(c) => {
                    debug!("{}keepTunnelOpenWorker check success", self.tag);
                    drop(c);
                }
            }
        }
    }

    /// A stream of the current session; with none (or a dead one) asks for a punch.
    async fn get_tunnel_conn(&self) -> Result<Conn, String> {
        let t = self.tunnel.lock().unwrap().clone();
        let r = match t {
            Some(t) => t.open().await,
            None => Err(NO_TUNNEL_SESSION.to_string()),
        };
        if r.is_err() {
            if let Some(t) = self.tunnel.lock().unwrap().take() {
                t.close();
            }
            self.ask_for_tunnel();
        }
        r
    }

    /// frp's `openTunnel`: tries every 500 ms until `limit`.
    async fn open_tunnel(&self, limit: Duration) -> Result<Conn, String> {
        tokio::time::timeout(limit, async {
            loop {
                match self.get_tunnel_conn().await {
                    Ok(c) => return c,
                    Err(e) => {
                        if e != NO_TUNNEL_SESSION {
                            warn!("{}get tunnel connection error: {e}", self.tag);
                        }
                        tokio::time::sleep(OPEN_RETRY).await;
                    }
                }
            }
        })
        .await
        .map_err(|_| "open tunnel timeout".to_string())
    }

    async fn handle_conn(self: Arc<Self>, user: Conn) {
        debug!("{}get a new xtcp user connection", self.tag);
        let fallback = &self.v.fallback_to;
        let limit = if fallback.is_empty() {
            OPEN_TIMEOUT
        } else {
            OPEN_TIMEOUT.min(Duration::from_millis(
                self.v.fallback_timeout_ms.max(0) as u64
            ))
        };
        let tunnel_conn = match self.open_tunnel(limit).await {
            Ok(c) => c,
            Err(e) => {
                error!("{}open tunnel error: {e}", self.tag);
                if fallback.is_empty() {
                    return;
                }
                debug!(
                    "{}try to transfer connection to visitor: {fallback}",
                    self.tag
                );
                if transfer_conn(&self.s, fallback, user).is_err() {
                    error!(
                        "{}transfer connection to visitor {fallback} error: visitor [{fallback}] not found",
                        self.tag
                    );
                }
                return;
            }
        };
        let (inbound, outbound) = layers(&self.v);
        self.s.engine.spawn(Pair {
            a: Side::plain(user.into_endpoint()),
            b: Side {
                endpoint: tunnel_conn.into_endpoint(),
                prefix: Default::default(),
                inbound,
                outbound,
                initial_write: Default::default(),
            },
            counters: None,
            limiter: None,
        });
    }

    /// frp's `makeNatHole`: PreCheck, Prepare, ExchangeInfo, MakeHole, then the session.
    async fn make_nat_hole(&self) {
        let tag = &self.tag;
        let target = target_proxy_name(&self.s.user, &self.v.server_user, &self.v.server_name);
        trace!("{tag}makeNatHole start");
        let tid = punch::new_transaction_id();
        let pre = NatHoleVisitor {
            transaction_id: tid.clone(),
            proxy_name: target.clone(),
            pre_check: true,
            ..Default::default()
        };
        match self
            .s
            .nathole
            .request(pre.into(), &tid, EXCHANGE_TIMEOUT)
            .await
        {
            Ok(r) if r.error.is_empty() => {}
            Ok(r) => {
                warn!("{tag}nathole precheck error: {}", r.error);
                return;
            }
            Err(e) => {
                warn!("{tag}nathole precheck error: get natHoleRespMsg error: {e}");
                return;
            }
        }
        let Some(prepared) =
            super::prepare_logged(tag, &self.s.stun_server, self.v.nat_traversal.as_ref()).await
        else {
            return;
        };
        let now = chrono::Utc::now().timestamp();
        let tid = punch::new_transaction_id();
        let m = NatHoleVisitor {
            transaction_id: tid.clone(),
            proxy_name: target,
            pre_check: false,
            protocol: self.v.protocol.clone(),
            sign_key: auth::sign_key(&self.v.secret_key, now),
            timestamp: now,
            mapped_addrs: prepared.addrs.clone(),
            assisted_addrs: prepared.assisted.clone(),
        };
        trace!("{tag}nathole exchange info start");
        let resp = match exchange_info(&self.s.nathole, &tid, m.into(), EXCHANGE_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                warn!("{tag}nathole exchange info error: {e}");
                return;
            }
        };
        log_resp(tag, &resp);
        let key = CryptoKey::derive(self.v.secret_key.as_bytes());
        let (sock, raddr) = match punch::make_hole(prepared.sock, &resp, &key, tag).await {
            Ok(r) => r,
            Err(e) => {
                warn!("{tag}make hole error: {e}");
                return;
            }
        };
        info!(
            "{tag}establishing nat hole connection successful, sid [{}], remoteAddr [{raddr}]",
            resp.sid
        );
        let t = if self.v.protocol == "kcp" {
            tunnel::dial_kcp(sock, raddr).await
        } else {
            tunnel::dial_quic(sock, raddr, &self.s.quic).await
        };
        match t {
            Ok(t) => {
                let old = self.tunnel.lock().unwrap().replace(Arc::new(t));
                if let Some(old) = old {
                    old.close();
                }
            }
            Err(e) => warn!("{tag}init tunnel session error: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_limiter_is_a_token_bucket() {
        let t0 = Instant::now();
        let mut l = RetryLimiter::new(4);
        for _ in 0..4 {
            assert_eq!(l.reserve(t0), Duration::ZERO);
        }
        // Empty: the next waits one period (15 min), the one after two.
        assert_eq!(l.reserve(t0), Duration::from_secs(900));
        assert_eq!(l.reserve(t0), Duration::from_secs(1800));
        // A bad setting still limits.
        let mut l = RetryLimiter::new(-3);
        assert_eq!(l.reserve(t0), Duration::ZERO);
        assert_eq!(l.reserve(t0), Duration::from_secs(3600));
    }
}
