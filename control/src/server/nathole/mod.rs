//! frps' NAT hole controller for xtcp (frp's `pkg/nathole` controller, spec §10.3).
//!
//! frps never carries xtcp bytes: it introduces the two frpc. The xtcp proxy's owner
//! registers the proxy ([`Controller::listen_client`]: its wire name, `sk`, `allowUsers`).
//! A visitor first sends `NatHoleVisitor{preCheck}` (does the proxy exist, may this user use
//! it), then, after its STUN discovery, `NatHoleVisitor` with its mapped addresses and a sign
//! key. frps opens a session with a new sid, hands the sid to the proxy (which sends it to
//! the owner as `NatHoleSid` on a work connection, see `server::xtcp`) and waits up to
//! [`NAT_HOLE_TIMEOUT`] for the owner's `NatHoleClient` with its own addresses. It then
//! classifies both NATs ([`classify`]), picks a punching plan ([`analysis`]) and answers both
//! sides with `NatHoleResp` on their control connections — the side that sends first gets
//! its answer a second later, so the receiver is ready. The session stays a while longer
//! (the plan's read timeout + 30 s) for the owner's `NatHoleReport`, which teaches the
//! analyzer what works.
//!
//! Differences from frp, all on bad input: `allowUsers` is checked for the real request too
//! (frp checks it on the pre-check only); `NatHoleClient` and `NatHoleReport` are taken only
//! from the proxy owner's client, once per session; sessions are capped (per visitor client
//! and in all) and the analysis records too; a proxy that is gone or stuck does not hold a
//! visitor's request forever.

pub(crate) mod analysis;
pub(crate) mod classify;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use md5::{Digest, Md5};
use rand::RngExt;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tracing::{debug, info, trace};

use self::analysis::{Analyzer, Behavior, ROLE_SENDER};
use self::classify::{NatFeature, classify_nat_feature, parse_ips};
use crate::auth;
use crate::msg::{
    NatHoleClient, NatHoleDetectBehavior, NatHoleReport, NatHoleResp, NatHoleVisitor, PortsRange,
};

/// How long frps waits for the owner's `NatHoleClient` (frp's `NatHoleTimeout`, seconds).
pub(crate) const NAT_HOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The sender's answer goes out this much later than the receiver's.
const SENDER_DELAY: Duration = Duration::from_secs(1);
/// A session is kept this long after the plan's read timeout, for the owner's report.
const REPORT_GRACE: Duration = Duration::from_secs(30);
/// Longest wait for room in a control's queue for a NatHoleResp.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// How often unused analysis records are dropped (frp: hourly).
const CLEAN_INTERVAL: Duration = Duration::from_secs(3600);
/// Queued sids per xtcp proxy.
const SID_QUEUE: usize = 16;

/// The budget of warnings about refused or forged NatHole messages (a flood logs a few).
static REFUSALS: crate::log::LineBudget = crate::log::LineBudget::new(20);

/// Bounds on what clients can make frps hold.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Sessions at once, all visitors together.
    pub sessions: usize,
    /// Sessions at once opened by one visitor client.
    pub per_visitor: usize,
    /// Analysis records (NAT pairs) remembered.
    pub records: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            sessions: 1024,
            per_visitor: 32,
            records: analysis::MAX_RECORDS,
        }
    }
}

/// Where a client's control messages go (frp's `MessageTransporter`): its control's queue.
pub(crate) type Transporter = Arc<dyn super::control::ToClient>;

/// The client a NatHole message came from.
#[derive(Clone)]
pub(crate) struct Peer {
    pub run_id: String,
    pub user: String,
    pub tx: Transporter,
}

/// A registered xtcp proxy.
struct ClientCfg {
    id: u64,
    owner: String,
    sk: String,
    allow_users: Vec<String>,
    sid_tx: mpsc::Sender<String>,
}

impl ClientCfg {
    fn allows(&self, user: &str) -> bool {
        self.allow_users.iter().any(|u| u == user || u == "*")
    }
}

/// The plan given to a session's two sides.
#[derive(Debug, Clone)]
struct Plan {
    key: String,
    mode: i64,
    index: usize,
}

struct Session {
    sid: String,
    proxy_name: String,
    /// Run id of the proxy's owner: the one client whose NatHoleClient/Report count.
    owner: String,
    visitor_msg: NatHoleVisitor,
    visitor: Peer,
    client: Mutex<Option<(NatHoleClient, Transporter)>>,
    client_arrived: Notify,
    plan: Mutex<Option<Plan>>,
    reported: AtomicBool,
}

#[derive(Default)]
struct Tables {
    clients: HashMap<String, ClientCfg>,
    sessions: HashMap<String, Arc<Session>>,
    /// Open sessions by visitor run id.
    per_visitor: HashMap<String, usize>,
}

/// The controller; one per frps.
pub(crate) struct Controller {
    tables: Mutex<Tables>,
    analyzer: Mutex<Analyzer>,
    next_id: AtomicU64,
    limits: Limits,
}

/// An xtcp proxy's registration; dropping it unregisters the proxy (frp's `CloseClient`).
pub(crate) struct Listening {
    controller: Weak<Controller>,
    name: String,
    id: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(c) = self.controller.upgrade() {
            let mut t = c.tables.lock().unwrap();
            if t.clients.get(&self.name).is_some_and(|c| c.id == self.id) {
                t.clients.remove(&self.name);
            }
        }
    }
}

/// Removes its session from the tables when the session's task ends, however it ends.
struct SessionGuard {
    controller: Arc<Controller>,
    sid: String,
    visitor: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut t = self.controller.tables.lock().unwrap();
        t.sessions.remove(&self.sid);
        if let Some(n) = t.per_visitor.get_mut(&self.visitor) {
            *n -= 1;
            if *n == 0 {
                t.per_visitor.remove(&self.visitor);
            }
        }
    }
}

impl Controller {
    /// `reserve_hours` is `natholeAnalysisDataReserveHours`.
    pub(crate) fn new(reserve_hours: i64, limits: Limits) -> Arc<Controller> {
        Arc::new(Controller {
            tables: Mutex::new(Tables::default()),
            analyzer: Mutex::new(Analyzer::new(reserve_hours, limits.records)),
            next_id: AtomicU64::new(1),
            limits,
        })
    }

    /// Drops unused analysis records every hour (frp's `CleanWorker`); runs until dropped.
    pub(crate) async fn clean_worker(self: Arc<Self>) {
        let mut tick = tokio::time::interval_at(Instant::now() + CLEAN_INTERVAL, CLEAN_INTERVAL);
        loop {
            tick.tick().await;
            let start = Instant::now();
            let (count, total) = self.analyzer.lock().unwrap().clean(start);
            trace!(
                "clean {count}/{total} nathole analysis data, cost {:?}",
                start.elapsed()
            );
        }
    }

    /// Registers the xtcp proxy `name` of the client `owner` (run id); sids of visitors'
    /// sessions arrive on the receiver. frp's `ListenClient`.
    pub(crate) fn listen_client(
        self: &Arc<Self>,
        name: &str,
        sk: &str,
        allow_users: Vec<String>,
        owner: &str,
    ) -> Result<(Listening, mpsc::Receiver<String>), String> {
        let (sid_tx, sid_rx) = mpsc::channel(SID_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut t = self.tables.lock().unwrap();
        if t.clients.contains_key(name) {
            return Err(format!("proxy [{name}] is repeated"));
        }
        t.clients.insert(
            name.to_string(),
            ClientCfg {
                id,
                owner: owner.to_string(),
                sk: sk.to_string(),
                allow_users,
                sid_tx,
            },
        );
        let listening = Listening {
            controller: Arc::downgrade(self),
            name: name.to_string(),
            id,
        };
        Ok((listening, sid_rx))
    }

    /// A visitor's `NatHoleVisitor` (frp's `HandleVisitor`). Answers a pre-check or a refusal
    /// at once; an accepted request goes on in a task of its own.
    pub(crate) fn handle_visitor(self: &Arc<Self>, m: NatHoleVisitor, visitor: Peer) {
        if m.pre_check {
            let error = {
                let t = self.tables.lock().unwrap();
                match t.clients.get(&m.proxy_name) {
                    None => format!("xtcp server for [{}] doesn't exist", m.proxy_name),
                    Some(cfg) if !cfg.allows(&visitor.user) => format!(
                        "xtcp visitor user [{}] not allowed for [{}]",
                        visitor.user, m.proxy_name
                    ),
                    Some(_) => String::new(),
                }
            };
            reply(&visitor.tx, error_resp(&m.transaction_id, error));
            return;
        }
        let opened = self.open_session(&m, &visitor);
        let (session, sid_tx, guard) = match opened {
            Ok(s) => s,
            Err(e) => {
                crate::warn_limited!(REFUSALS, "handle visitorMsg error: {e}");
                reply(&visitor.tx, error_resp(&m.transaction_id, e));
                return;
            }
        };
        trace!(
            "handle visitor message, sid [{}], server name: {}",
            session.sid, m.proxy_name
        );
        tokio::spawn(self.clone().run_session(session, sid_tx, guard));
    }

    /// Checks a visitor's request and records its session.
    fn open_session(
        self: &Arc<Self>,
        m: &NatHoleVisitor,
        visitor: &Peer,
    ) -> Result<(Arc<Session>, mpsc::Sender<String>, SessionGuard), String> {
        let mut t = self.tables.lock().unwrap();
        let Some(cfg) = t.clients.get(&m.proxy_name) else {
            return Err(format!("xtcp server for [{}] doesn't exist", m.proxy_name));
        };
        if !auth::verify_sign_key(&cfg.sk, m.timestamp, &m.sign_key) {
            return Err(format!("xtcp connection of [{}] auth failed", m.proxy_name));
        }
        if !cfg.allows(&visitor.user) {
            return Err(format!(
                "xtcp visitor user [{}] not allowed for [{}]",
                visitor.user, m.proxy_name
            ));
        }
        let (owner, sid_tx) = (cfg.owner.clone(), cfg.sid_tx.clone());
        let mine = t.per_visitor.get(&visitor.run_id).copied().unwrap_or(0);
        if mine >= self.limits.per_visitor {
            return Err(format!(
                "too many xtcp sessions in progress for this client ({mine})"
            ));
        }
        if t.sessions.len() >= self.limits.sessions {
            return Err("too many xtcp sessions in progress on this server".into());
        }
        let mut sid = gen_sid();
        while t.sessions.contains_key(&sid) {
            sid = gen_sid();
        }
        let session = Arc::new(Session {
            sid: sid.clone(),
            proxy_name: m.proxy_name.clone(),
            owner,
            visitor_msg: m.clone(),
            visitor: visitor.clone(),
            client: Mutex::new(None),
            client_arrived: Notify::new(),
            plan: Mutex::new(None),
            reported: AtomicBool::new(false),
        });
        t.sessions.insert(sid.clone(), session.clone());
        *t.per_visitor.entry(visitor.run_id.clone()).or_default() += 1;
        let guard = SessionGuard {
            controller: self.clone(),
            sid,
            visitor: visitor.run_id.clone(),
        };
        Ok((session, sid_tx, guard))
    }

    /// A session from the sid's delivery to the end of its report window.
    async fn run_session(
        self: Arc<Self>,
        session: Arc<Session>,
        sid_tx: mpsc::Sender<String>,
        _guard: SessionGuard,
    ) {
        let sid = session.sid.clone();
        // The owner learns the sid through its proxy (a NatHoleSid on a work connection).
        if sid_tx
            .send_timeout(sid.clone(), NAT_HOLE_TIMEOUT)
            .await
            .is_err()
        {
            debug!(
                "sid [{sid}] not handed to xtcp proxy [{}]: it is closed or busy",
                session.proxy_name
            );
            return;
        }
        drop(sid_tx);
        let arrived = tokio::time::timeout(NAT_HOLE_TIMEOUT, session.client_arrived.notified());
        if arrived.await.is_err() {
            debug!("wait for NatHoleClient message timeout, sid [{sid}]");
            return;
        }
        let Some((cm, client_tx)) = session.client.lock().unwrap().clone() else {
            return;
        };
        let vm = &session.visitor_msg;
        let (v_resp, c_resp) = match self.analysis(&session, &cm, Instant::now()) {
            Ok(r) => r,
            Err(e) => {
                debug!("sid [{sid}] analysis error: {e}");
                (
                    error_resp(&vm.transaction_id, e.clone()),
                    error_resp(&cm.transaction_id, e),
                )
            }
        };
        let linger =
            Duration::from_millis(c_resp.detect_behavior.read_timeout.max(0) as u64) + REPORT_GRACE;
        tokio::join!(
            send_resp(&session.visitor.tx, v_resp),
            send_resp(&client_tx, c_resp)
        );
        tokio::time::sleep(linger).await;
    }

    /// The owner's `NatHoleClient` (frp's `HandleClient`).
    pub(crate) fn handle_client(&self, m: NatHoleClient, from: &Peer) {
        let Some(session) = self.session(&m.sid) else {
            debug!(
                "[{}] NatHoleClient for unknown sid [{}] ignored",
                from.run_id, m.sid
            );
            return;
        };
        if from.run_id != session.owner {
            crate::warn_limited!(
                REFUSALS,
                "[{}] NatHoleClient for sid [{}] rejected: not from the owner of proxy [{}]",
                from.run_id,
                m.sid,
                session.proxy_name
            );
            return;
        }
        trace!(
            "handle client message, sid [{}], server name: {}",
            session.sid, m.proxy_name
        );
        let mut slot = session.client.lock().unwrap();
        if slot.is_some() {
            debug!(
                "[{}] repeated NatHoleClient for sid [{}] ignored",
                from.run_id, m.sid
            );
            return;
        }
        *slot = Some((m, from.tx.clone()));
        session.client_arrived.notify_one();
    }

    /// The owner's `NatHoleReport` (frp's `HandleReport`).
    pub(crate) fn handle_report(&self, m: NatHoleReport, from: &Peer) {
        let Some(session) = self.session(&m.sid) else {
            trace!(
                "sid [{}] report make hole success: {}, but session not found",
                m.sid, m.success
            );
            return;
        };
        if from.run_id != session.owner {
            crate::warn_limited!(
                REFUSALS,
                "[{}] NatHoleReport for sid [{}] rejected: not from the owner of proxy [{}]",
                from.run_id,
                m.sid,
                session.proxy_name
            );
            return;
        }
        let plan = session.plan.lock().unwrap().clone();
        let (mode, index) = plan.as_ref().map(|p| (p.mode, p.index)).unwrap_or_default();
        if m.success
            && let Some(p) = &plan
            && !session.reported.swap(true, Ordering::SeqCst)
        {
            self.analyzer
                .lock()
                .unwrap()
                .report_success(&p.key, p.mode, p.index, Instant::now());
        }
        info!(
            "sid [{}] report make hole success: {}, mode {mode}, index {index}",
            m.sid, m.success
        );
    }

    fn session(&self, sid: &str) -> Option<Arc<Session>> {
        self.tables.lock().unwrap().sessions.get(sid).cloned()
    }

    /// Classifies both NATs and makes the plan: (visitor's answer, client's answer).
    fn analysis(
        &self,
        session: &Session,
        cm: &NatHoleClient,
        now: Instant,
    ) -> Result<(NatHoleResp, NatHoleResp), String> {
        let vm = &session.visitor_msg;
        let cf = classify_nat_feature(&cm.mapped_addrs, &parse_ips(&cm.assisted_addrs))
            .map_err(|e| format!("classify client nat feature error: {e}"))?;
        let vf = classify_nat_feature(&vm.mapped_addrs, &parse_ips(&vm.assisted_addrs))
            .map_err(|e| format!("classify visitor nat feature error: {e}"))?;
        let key = analysis_key(&vm.mapped_addrs, &vf, &cm.mapped_addrs, &cf);
        let (mode, index, cb, vb) = self.analyzer.lock().unwrap().recommend(&key, &cf, &vf, now);
        *session.plan.lock().unwrap() = Some(Plan { key, mode, index });

        let mut timeout_ms = cb.send_delay_ms.max(vb.send_delay_ms) + 5000;
        if cb.listen_random_ports > 0 || vb.listen_random_ports > 0 {
            timeout_ms += 30000;
        }
        let plan = |tid: &str,
                    peer_addrs: &[String],
                    peer_assisted: &[String],
                    b: &Behavior,
                    peer: &NatFeature| {
            NatHoleResp {
                transaction_id: tid.to_string(),
                sid: session.sid.clone(),
                protocol: vm.protocol.clone(),
                candidate_addrs: compact(peer_addrs),
                assisted_addrs: compact(peer_assisted),
                detect_behavior: NatHoleDetectBehavior {
                    role: b.role.to_string(),
                    mode,
                    ttl: b.ttl,
                    send_delay_ms: b.send_delay_ms,
                    read_timeout: timeout_ms - b.send_delay_ms,
                    candidate_ports: range_ports(
                        peer_addrs,
                        peer.ports_difference,
                        b.ports_range_number,
                    ),
                    send_random_ports: b.ports_random_number,
                    listen_random_ports: b.listen_random_ports,
                },
                error: String::new(),
            }
        };
        let v_resp = plan(
            &vm.transaction_id,
            &cm.mapped_addrs,
            &cm.assisted_addrs,
            &vb,
            &cf,
        );
        let c_resp = plan(
            &cm.transaction_id,
            &vm.mapped_addrs,
            &vm.assisted_addrs,
            &cb,
            &vf,
        );
        debug!(
            "sid [{}] visitor nat: {vf:?}, candidateAddrs: {:?}; client nat: {cf:?}, candidateAddrs: {:?}, protocol: {}",
            session.sid, vm.mapped_addrs, cm.mapped_addrs, vm.protocol
        );
        debug!(
            "sid [{}] visitor detect behavior: {:?}",
            session.sid, v_resp.detect_behavior
        );
        debug!(
            "sid [{}] client detect behavior: {:?}",
            session.sid, c_resp.detect_behavior
        );
        Ok((v_resp, c_resp))
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize) {
        let t = self.tables.lock().unwrap();
        (
            t.clients.len(),
            t.sessions.len(),
            t.per_visitor.values().sum(),
        )
    }
}

/// frp's `GenSid`: Unix seconds then 16 random hex digits.
fn gen_sid() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let id: [u8; 8] = rand::rng().random();
    format!("{secs}{}", hex::encode(id))
}

/// The key of a NAT pair in the analyzer: MD5 of each side's first mapped IP and NAT
/// features, visitor first (frp's `genAnalysisKey`).
fn analysis_key(
    v_addrs: &[String],
    vf: &NatFeature,
    c_addrs: &[String],
    cf: &NatFeature,
) -> String {
    let mut h = Md5::new();
    for (addrs, f) in [(v_addrs, vf), (c_addrs, cf)] {
        if let Some(ip) = compact(&parse_ips(addrs)).first() {
            h.update(ip.as_bytes());
        }
        h.update(f.nat_type.as_bytes());
        h.update(f.behavior.as_bytes());
        h.update(
            if f.regular_ports_change {
                "true"
            } else {
                "false"
            }
            .as_bytes(),
        );
    }
    hex::encode(h.finalize())
}

/// Go's `slices.Compact`: runs of equal neighbours become one.
fn compact(v: &[String]) -> Vec<String> {
    let mut out = v.to_vec();
    out.dedup();
    out
}

/// The candidate port range around the last of `addrs` (frp's `getRangePorts`).
fn range_ports(addrs: &[String], difference: i64, max_number: i64) -> Vec<PortsRange> {
    if max_number <= 0 {
        return Vec::new();
    }
    let Some(last) = addrs.last() else {
        return Vec::new();
    };
    let Ok((_, port)) = classify::split_host_port(last) else {
        return Vec::new();
    };
    let Ok(port) = classify::atoi(port) else {
        return Vec::new();
    };
    vec![PortsRange {
        from: (port - difference - 5).max(port - max_number).max(1),
        to: (port + difference + 5).min(port + max_number).min(65535),
    }]
}

fn error_resp(transaction_id: &str, error: String) -> NatHoleResp {
    NatHoleResp {
        transaction_id: transaction_id.to_string(),
        error,
        ..Default::default()
    }
}

/// Queues an immediate answer; dropped (and logged) when the client's queue is full.
fn reply(tx: &Transporter, resp: NatHoleResp) {
    if let Err(e) = tx.outbox().try_send(Box::new(resp.into())) {
        debug!("NatHoleResp not sent: {e}");
    }
}

/// Sends a plan; the sender's a second after the receiver's.
async fn send_resp(tx: &Transporter, resp: NatHoleResp) {
    if resp.detect_behavior.role == ROLE_SENDER {
        tokio::time::sleep(SENDER_DELAY).await;
    }
    if let Err(e) = tx
        .outbox()
        .send_timeout(Box::new(resp.into()), SEND_TIMEOUT)
        .await
    {
        debug!("NatHoleResp not sent: {e}");
    }
}
