//! frps' in-memory statistics (frp's `pkg/metrics/mem` and `server/registry`): per proxy its
//! owner, config, status times and 7 days of traffic; per client its login record; server
//! totals. frps calls the `on_*` hooks; the dashboard and `/metrics` read snapshots.
//!
//! Traffic comes from the data plane's per-proxy [`Counters`], read (relaxed atomics) when a
//! snapshot is taken, on a 1-minute tick and when a proxy closes: the difference since the
//! previous read goes to the current local day. A closed proxy's counters are kept while its
//! connections still run, so their bytes are still counted, as frp counts a connection's bytes
//! when it ends. Entries of offline proxies stay (frp's "offline" rows) until
//! `DELETE /api/proxies?status=offline` or 7 days offline.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Local, NaiveDate};
use dataplane::Counters;
use serde::Serialize;
use serde_json::{Value, json};

use crate::msg::{Login, NewProxy};

/// Days of traffic history kept (frp's `ReserveDays`).
pub const RESERVE_DAYS: usize = 7;

/// Per-day totals, today first (frp's `DateCounter`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayCounter {
    day: NaiveDate,
    counts: [u64; RESERVE_DAYS],
}

impl DayCounter {
    pub fn new(today: NaiveDate) -> Self {
        DayCounter {
            day: today,
            counts: [0; RESERVE_DAYS],
        }
    }

    fn rotate(&mut self, today: NaiveDate) {
        let days = (today - self.day).num_days();
        if days <= 0 {
            return;
        }
        let shift = days.min(RESERVE_DAYS as i64) as usize;
        self.counts.rotate_right(shift);
        self.counts[..shift].fill(0);
        self.day = today;
    }

    pub fn add(&mut self, today: NaiveDate, n: u64) {
        self.rotate(today);
        self.counts[0] += n;
    }

    /// The last 7 days, today first.
    pub fn days(&mut self, today: NaiveDate) -> [u64; RESERVE_DAYS] {
        self.rotate(today);
        self.counts
    }

    pub fn today(&mut self, today: NaiveDate) -> u64 {
        self.days(today)[0]
    }
}

/// One proxy's data-plane counters and how much of them is already accounted.
struct Source {
    counters: Arc<Counters>,
    seen_in: u64,
    seen_out: u64,
}

struct ProxyStats {
    proxy_type: String,
    user: String,
    client_id: String,
    /// The proxy's config as the dashboard shows it (`conf`); from its NewProxy.
    conf: Value,
    online: bool,
    /// The current registration's counters, then those of closed registrations whose
    /// connections are still running.
    sources: Vec<Source>,
    traffic_in: DayCounter,
    traffic_out: DayCounter,
    /// Since frps started (Prometheus counters).
    total_in: u64,
    total_out: u64,
    last_start: Option<DateTime<Local>>,
    last_close: Option<DateTime<Local>>,
}

/// A client as `/api/clients` shows it (frp's `registry.ClientInfo`); its key is the map's.
/// Boxed in the map and holding no string it can do without: thousands of clients stay
/// connected, and frp keeps offline clients with a clientID.
#[derive(Debug, Clone)]
struct ClientRecord {
    user: String,
    raw_client_id: String,
    run_id: String,
    hostname: String,
    ip: Option<IpAddr>,
    version: String,
    wire_protocol: &'static str,
    first_connected: i64,
    last_connected: i64,
    disconnected: i64,
    online: bool,
}

#[derive(Default)]
struct Inner {
    proxies: HashMap<String, ProxyStats>,
    clients: HashMap<String, Box<ClientRecord>>,
    client_count: i64,
    total_in: Option<DayCounter>,
    total_out: Option<DayCounter>,
}

/// frps' statistics; shared by the server (writer) and the dashboard (reader).
#[derive(Default)]
pub struct Stats {
    inner: Mutex<Inner>,
}

/// `/api/serverinfo`'s live figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub total_traffic_in: u64,
    pub total_traffic_out: u64,
    pub cur_conns: u64,
    pub client_counts: i64,
    pub proxy_type_counts: BTreeMap<String, i64>,
}

/// One proxy's figures (frp's `ProxyStatsInfo` / `GetProxyStatsResp`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatsInfo {
    pub name: String,
    /// null when offline.
    pub conf: Value,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(rename = "clientID", skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    pub today_traffic_in: u64,
    pub today_traffic_out: u64,
    pub cur_conns: u64,
    pub last_start_time: String,
    pub last_close_time: String,
    /// "online" or "offline".
    pub status: String,
    #[serde(skip)]
    pub proxy_type: String,
    /// Since frps started (not in frp's JSON; for `/metrics`).
    #[serde(skip)]
    pub total_in: u64,
    #[serde(skip)]
    pub total_out: u64,
}

/// `/api/traffic/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTraffic {
    pub name: String,
    pub traffic_in: Vec<u64>,
    pub traffic_out: Vec<u64>,
}

/// `/api/clients` entries (frp's `ClientInfoResp`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClientInfo {
    pub key: String,
    pub user: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(rename = "runID")]
    pub run_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub wire_protocol: String,
    pub hostname: String,
    #[serde(rename = "clientIP", skip_serializing_if = "String::is_empty")]
    pub client_ip: String,
    pub first_connected_at: i64,
    pub last_connected_at: i64,
    #[serde(skip_serializing_if = "is_zero")]
    pub disconnected_at: i64,
    pub online: bool,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// frp's time format for lastStartTime / lastCloseTime.
fn fmt_time(t: Option<DateTime<Local>>) -> String {
    t.map(|t| t.format("%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

impl ProxyStats {
    /// Moves what the counters counted since the last read into the day buckets; forgets
    /// counters of closed registrations once their last connection is gone.
    fn sample(&mut self, today: NaiveDate, totals: &mut (DayCounter, DayCounter)) {
        let online = self.online;
        let n = self.sources.len();
        let mut keep = Vec::with_capacity(n);
        for (i, mut s) in self.sources.drain(..).enumerate() {
            // Read conns first: a pair that ends after this read has its bytes in the
            // counters read below, or is seen again next time.
            let conns = s.counters.conns.load(Ordering::Relaxed);
            let now_in = s.counters.a_to_b.load(Ordering::Relaxed);
            let now_out = s.counters.b_to_a.load(Ordering::Relaxed);
            let (d_in, d_out) = (now_in - s.seen_in, now_out - s.seen_out);
            (s.seen_in, s.seen_out) = (now_in, now_out);
            self.traffic_in.add(today, d_in);
            self.traffic_out.add(today, d_out);
            totals.0.add(today, d_in);
            totals.1.add(today, d_out);
            self.total_in += d_in;
            self.total_out += d_out;
            let current = online && i == n - 1;
            if current || conns > 0 {
                keep.push(s);
            }
        }
        self.sources = keep;
    }

    fn cur_conns(&self) -> u64 {
        self.sources
            .iter()
            .map(|s| s.counters.conns.load(Ordering::Relaxed))
            .sum()
    }

    fn info(&mut self, name: &str, today: NaiveDate) -> ProxyStatsInfo {
        ProxyStatsInfo {
            name: name.to_string(),
            conf: if self.online {
                self.conf.clone()
            } else {
                Value::Null
            },
            user: self.user.clone(),
            client_id: self.client_id.clone(),
            today_traffic_in: self.traffic_in.today(today),
            today_traffic_out: self.traffic_out.today(today),
            cur_conns: self.cur_conns(),
            last_start_time: fmt_time(self.last_start),
            last_close_time: fmt_time(self.last_close),
            status: if self.online { "online" } else { "offline" }.into(),
            proxy_type: self.proxy_type.clone(),
            total_in: self.total_in,
            total_out: self.total_out,
        }
    }
}

impl Inner {
    fn totals(&mut self, today: NaiveDate) -> (DayCounter, DayCounter) {
        (
            self.total_in
                .take()
                .unwrap_or_else(|| DayCounter::new(today)),
            self.total_out
                .take()
                .unwrap_or_else(|| DayCounter::new(today)),
        )
    }

    fn sample_all(&mut self, today: NaiveDate) {
        let mut totals = self.totals(today);
        for p in self.proxies.values_mut() {
            p.sample(today, &mut totals);
        }
        (self.total_in, self.total_out) = (Some(totals.0), Some(totals.1));
    }
}

impl Stats {
    pub fn new() -> Stats {
        Stats::default()
    }

    // --- hooks (frps) ------------------------------------------------------------------------

    /// A client logged in (frp's `ClientRegistry.Register` + `NewClient`).
    pub fn on_login(
        &self,
        run_id: &str,
        login: &Login,
        remote: SocketAddr,
        wire_protocol: &'static str,
    ) {
        let now = Local::now().timestamp();
        let key = client_key(run_id, &login.user, &login.client_id);
        let mut inner = self.inner.lock().unwrap();
        inner.client_count += 1;
        let rec = inner.clients.entry(key).or_insert_with(|| {
            Box::new(ClientRecord {
                user: login.user.clone(),
                raw_client_id: String::new(),
                run_id: String::new(),
                hostname: String::new(),
                ip: None,
                version: String::new(),
                wire_protocol: "",
                first_connected: now,
                last_connected: now,
                disconnected: 0,
                online: true,
            })
        });
        rec.raw_client_id = login.client_id.clone();
        rec.run_id = run_id.to_string();
        rec.hostname = login.hostname.clone();
        rec.ip = Some(remote.ip());
        rec.version = login.version.clone();
        rec.wire_protocol = wire_protocol;
        rec.last_connected = now;
        rec.disconnected = 0;
        rec.online = true;
    }

    /// A client's control closed (frp's `MarkOfflineByRunID` + `CloseClient`): clients
    /// without a clientID are forgotten, others stay as offline. `user` and `client_id` are
    /// the session's Login's; a newer session of the same client is left alone.
    pub fn on_logout(&self, run_id: &str, user: &str, client_id: &str) {
        let key = client_key(run_id, user, client_id);
        let mut inner = self.inner.lock().unwrap();
        inner.client_count -= 1;
        let forget = match inner.clients.get_mut(&key) {
            Some(c) if c.run_id == run_id => {
                if c.raw_client_id.is_empty() {
                    true
                } else {
                    c.run_id.clear();
                    c.online = false;
                    c.disconnected = Local::now().timestamp();
                    false
                }
            }
            _ => false,
        };
        if forget {
            inner.clients.remove(&key);
        }
    }

    /// A proxy registered (frp's `NewProxy` metric).
    pub fn on_proxy_start(
        &self,
        np: &NewProxy,
        proxy_type: &str,
        counters: &Arc<Counters>,
        user: &str,
        client_id: &str,
    ) {
        let now = Local::now();
        let today = now.date_naive();
        let mut inner = self.inner.lock().unwrap();
        let stale = inner
            .proxies
            .get(&np.proxy_name)
            .is_some_and(|p| p.proxy_type != proxy_type);
        if stale {
            inner.proxies.remove(&np.proxy_name);
        }
        let p = inner
            .proxies
            .entry(np.proxy_name.clone())
            .or_insert_with(|| ProxyStats {
                proxy_type: proxy_type.to_string(),
                user: String::new(),
                client_id: String::new(),
                conf: Value::Null,
                online: false,
                sources: Vec::new(),
                traffic_in: DayCounter::new(today),
                traffic_out: DayCounter::new(today),
                total_in: 0,
                total_out: 0,
                last_start: None,
                last_close: None,
            });
        p.user = user.to_string();
        p.client_id = client_id.to_string();
        p.conf = proxy_conf(np, proxy_type);
        p.online = true;
        p.sources.push(Source {
            counters: counters.clone(),
            seen_in: counters.a_to_b.load(Ordering::Relaxed),
            seen_out: counters.b_to_a.load(Ordering::Relaxed),
        });
        p.last_start = Some(now);
    }

    /// A proxy closed (frp's `CloseProxy` metric).
    pub fn on_proxy_close(&self, name: &str) {
        let now = Local::now();
        let mut inner = self.inner.lock().unwrap();
        let mut totals = inner.totals(now.date_naive());
        if let Some(p) = inner.proxies.get_mut(name) {
            p.sample(now.date_naive(), &mut totals);
            p.online = false;
            // Shown only while online; an offline entry keeps its figures, not its config
            // (small allocations that outlive the session pin heap pages).
            p.conf = Value::Null;
            p.last_close = Some(now);
            // Drop the counters now unless connections still run on them.
            p.sample(now.date_naive(), &mut totals);
        }
        (inner.total_in, inner.total_out) = (Some(totals.0), Some(totals.1));
    }

    // --- snapshots (dashboard) -----------------------------------------------------------------

    /// Reads every counter into the day buckets (the dashboard's 1-minute tick).
    pub fn sample(&self) {
        self.inner
            .lock()
            .unwrap()
            .sample_all(Local::now().date_naive());
    }

    pub fn server(&self) -> ServerStats {
        let today = Local::now().date_naive();
        let mut inner = self.inner.lock().unwrap();
        inner.sample_all(today);
        let mut types: BTreeMap<String, i64> = BTreeMap::new();
        let mut cur_conns = 0;
        for p in inner.proxies.values() {
            *types.entry(p.proxy_type.clone()).or_default() += p.online as i64;
            cur_conns += p.cur_conns();
        }
        ServerStats {
            total_traffic_in: inner.total_in.as_mut().map_or(0, |d| d.today(today)),
            total_traffic_out: inner.total_out.as_mut().map_or(0, |d| d.today(today)),
            cur_conns,
            client_counts: inner.client_count,
            proxy_type_counts: types,
        }
    }

    /// Every proxy (online and offline), sorted by name; `proxy_type` filters.
    pub fn proxies(&self, proxy_type: Option<&str>) -> Vec<ProxyStatsInfo> {
        let today = Local::now().date_naive();
        let mut inner = self.inner.lock().unwrap();
        inner.sample_all(today);
        let mut out: Vec<ProxyStatsInfo> = inner
            .proxies
            .iter_mut()
            .filter(|(_, p)| proxy_type.is_none_or(|t| p.proxy_type == t))
            .map(|(name, p)| p.info(name, today))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn proxy(&self, name: &str) -> Option<ProxyStatsInfo> {
        let today = Local::now().date_naive();
        let mut inner = self.inner.lock().unwrap();
        inner.sample_all(today);
        inner.proxies.get_mut(name).map(|p| p.info(name, today))
    }

    pub fn traffic(&self, name: &str) -> Option<ProxyTraffic> {
        let today = Local::now().date_naive();
        let mut inner = self.inner.lock().unwrap();
        inner.sample_all(today);
        let p = inner.proxies.get_mut(name)?;
        Some(ProxyTraffic {
            name: name.to_string(),
            traffic_in: p.traffic_in.days(today).to_vec(),
            traffic_out: p.traffic_out.days(today).to_vec(),
        })
    }

    /// Forgets proxies offline for longer than `min_offline` (frp's `clearUselessInfo`);
    /// returns (cleared, total before).
    pub fn clear_offline(&self, min_offline: chrono::Duration) -> (usize, usize) {
        let now = Local::now();
        let mut inner = self.inner.lock().unwrap();
        let total = inner.proxies.len();
        inner.proxies.retain(|_, p| {
            let clear = match (p.last_start, p.last_close) {
                (Some(s), Some(c)) => !p.online && s <= c && now - c >= min_offline,
                (None, Some(c)) => !p.online && now - c >= min_offline,
                _ => false,
            };
            !clear
        });
        (total - inner.proxies.len(), total)
    }

    /// `/api/clients` (filters: user, clientId, runId, status = online|offline|all), sorted by
    /// user, clientID, key.
    pub fn clients(
        &self,
        user: Option<&str>,
        client_id: Option<&str>,
        run_id: Option<&str>,
        status: Option<&str>,
    ) -> Vec<ClientInfo> {
        let inner = self.inner.lock().unwrap();
        let mut out: Vec<ClientInfo> = inner
            .clients
            .iter()
            .map(|(key, c)| client_info(key, c))
            .filter(|c| user.is_none_or(|u| u.is_empty() || c.user == u))
            .filter(|c| client_id.is_none_or(|id| id.is_empty() || c.client_id == id))
            .filter(|c| run_id.is_none_or(|id| id.is_empty() || c.run_id == id))
            .filter(
                |c| match status.map(|s| s.to_ascii_lowercase()).as_deref() {
                    Some("online") => c.online,
                    Some("offline") => !c.online,
                    _ => true,
                },
            )
            .collect();
        out.sort_by(|a, b| {
            (a.user.as_str(), a.client_id.as_str(), a.key.as_str()).cmp(&(
                b.user.as_str(),
                b.client_id.as_str(),
                b.key.as_str(),
            ))
        });
        out
    }

    pub fn client(&self, key: &str) -> Option<ClientInfo> {
        let inner = self.inner.lock().unwrap();
        inner.clients.get(key).map(|c| client_info(key, c))
    }
}

/// A client's key in `/api/clients` (frp's `registry` key): `user.clientID`, with the run id
/// standing in for a missing clientID and no dot without a user.
fn client_key(run_id: &str, user: &str, client_id: &str) -> String {
    let id = if client_id.is_empty() {
        run_id
    } else {
        client_id
    };
    match (user, id) {
        ("", id) => id.to_string(),
        (user, "") => user.to_string(),
        (user, id) => format!("{user}.{id}"),
    }
}

fn client_info(key: &str, c: &ClientRecord) -> ClientInfo {
    ClientInfo {
        key: key.to_string(),
        user: c.user.clone(),
        client_id: if c.raw_client_id.is_empty() {
            c.run_id.clone()
        } else {
            c.raw_client_id.clone()
        },
        run_id: c.run_id.clone(),
        version: c.version.clone(),
        wire_protocol: c.wire_protocol.to_string(),
        hostname: c.hostname.clone(),
        client_ip: c.ip.map(|ip| ip.to_string()).unwrap_or_default(),
        first_connected_at: c.first_connected,
        last_connected_at: c.last_connected,
        disconnected_at: c.disconnected,
        online: c.online,
    }
}

/// The `conf` object frp's dashboard shows for a proxy, rebuilt from its NewProxy the way frps
/// rebuilds a proxy config from the message (secrets — group key, sk, http password — left out).
fn proxy_conf(np: &NewProxy, proxy_type: &str) -> Value {
    let mut transport = json!({});
    if np.use_encryption {
        transport["useEncryption"] = json!(true);
    }
    if np.use_compression {
        transport["useCompression"] = json!(true);
    }
    if !np.bandwidth_limit.is_empty() {
        transport["bandwidthLimit"] = json!(np.bandwidth_limit);
    }
    if !np.bandwidth_limit_mode.is_empty() {
        transport["bandwidthLimitMode"] = json!(np.bandwidth_limit_mode);
    }
    let mut conf = json!({
        "name": np.proxy_name,
        "type": proxy_type,
        "transport": transport,
        "loadBalancer": {"group": np.group},
        "healthCheck": {"type": "", "timeoutSeconds": 0, "maxFailed": 0, "intervalSeconds": 0},
    });
    if !np.metas.is_empty() {
        conf["metadatas"] = json!(np.metas);
    }
    if !np.annotations.is_empty() {
        conf["annotations"] = json!(np.annotations);
    }
    let domains = |conf: &mut Value| {
        if !np.custom_domains.is_empty() {
            conf["customDomains"] = json!(np.custom_domains);
        }
        if !np.subdomain.is_empty() {
            conf["subdomain"] = json!(np.subdomain);
        }
    };
    match proxy_type {
        "tcp" | "udp" => conf["remotePort"] = json!(np.remote_port),
        "http" => {
            domains(&mut conf);
            conf["locations"] = json!(np.locations);
            conf["hostHeaderRewrite"] = json!(np.host_header_rewrite);
        }
        "https" => domains(&mut conf),
        "tcpmux" => {
            domains(&mut conf);
            conf["multiplexer"] = json!(np.multiplexer);
            conf["routeByHTTPUser"] = json!(np.route_by_http_user);
        }
        _ => {}
    }
    conf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    #[test]
    fn day_counter_rotates_and_keeps_seven_days() {
        let mut c = DayCounter::new(day(1));
        c.add(day(1), 5);
        c.add(day(2), 7);
        assert_eq!(c.days(day(2)), [7, 5, 0, 0, 0, 0, 0]);
        c.add(day(4), 1);
        assert_eq!(c.days(day(4)), [1, 0, 7, 5, 0, 0, 0]);
        assert_eq!(c.days(day(10)), [0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(c.days(day(11)), [0; 7]);
        // The clock going back changes nothing.
        c.add(day(9), 3);
        assert_eq!(c.today(day(11)), 3);
    }

    fn np(name: &str) -> NewProxy {
        NewProxy {
            proxy_name: name.into(),
            proxy_type: "tcp".into(),
            remote_port: 6000,
            ..Default::default()
        }
    }

    #[test]
    fn traffic_follows_counters_across_close_and_restart() {
        let s = Stats::new();
        let c1 = Arc::new(Counters::default());
        s.on_proxy_start(&np("p"), "tcp", &c1, "u", "");
        c1.a_to_b.fetch_add(100, Ordering::Relaxed);
        c1.b_to_a.fetch_add(40, Ordering::Relaxed);
        let p = s.proxy("p").unwrap();
        assert_eq!((p.today_traffic_in, p.today_traffic_out), (100, 40));
        assert_eq!(p.status, "online");
        assert_eq!(p.conf["remotePort"], 6000);

        // Closed with a connection still running: its later bytes still count.
        c1.conns.fetch_add(1, Ordering::Relaxed);
        s.on_proxy_close("p");
        c1.a_to_b.fetch_add(10, Ordering::Relaxed);
        c1.conns.fetch_sub(1, Ordering::Relaxed);
        let p = s.proxy("p").unwrap();
        assert_eq!(p.today_traffic_in, 110);
        assert_eq!(p.status, "offline");
        assert!(p.conf.is_null());
        assert!(!p.last_close_time.is_empty());
        // Counters with no connection left are forgotten.
        c1.a_to_b.fetch_add(1000, Ordering::Relaxed);
        assert_eq!(s.proxy("p").unwrap().today_traffic_in, 110);

        // A new registration adds to the same history.
        let c2 = Arc::new(Counters::default());
        s.on_proxy_start(&np("p"), "tcp", &c2, "u", "");
        c2.a_to_b.fetch_add(1, Ordering::Relaxed);
        let t = s.traffic("p").unwrap();
        assert_eq!(t.traffic_in, [111, 0, 0, 0, 0, 0, 0]);
        assert_eq!(t.traffic_out, [40, 0, 0, 0, 0, 0, 0]);
        let srv = s.server();
        assert_eq!((srv.total_traffic_in, srv.total_traffic_out), (111, 40));
        assert_eq!(srv.proxy_type_counts["tcp"], 1);
    }

    #[test]
    fn offline_proxies_can_be_cleared() {
        let s = Stats::new();
        let c = Arc::new(Counters::default());
        s.on_proxy_start(&np("a"), "tcp", &c, "", "");
        s.on_proxy_start(&np("b"), "tcp", &c, "", "");
        s.on_proxy_close("b");
        assert_eq!(s.clear_offline(chrono::Duration::zero()), (1, 2));
        let names: Vec<_> = s.proxies(None).into_iter().map(|p| p.name).collect();
        assert_eq!(names, ["a"]);
    }

    #[test]
    fn clients_register_and_go_offline_like_frp() {
        let s = Stats::new();
        let remote: SocketAddr = "127.0.0.1:5555".parse().unwrap();
        let anon = Login {
            user: "u".into(),
            hostname: "h".into(),
            version: "0.70.0".into(),
            ..Default::default()
        };
        let named = Login {
            client_id: "box1".into(),
            ..anon.clone()
        };
        s.on_login("run1", &anon, remote, "v1");
        s.on_login("run2", &named, remote, "v1");
        let all = s.clients(None, None, None, None);
        let keys: Vec<_> = all.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(keys, ["u.box1", "u.run1"]);
        assert_eq!(all[1].client_id, "run1");
        assert_eq!(all[0].client_ip, "127.0.0.1");
        assert_eq!(s.server().client_counts, 2);

        s.on_logout("run1", "u", "");
        s.on_logout("run2", "u", "box1");
        let all = s.clients(None, None, None, None);
        assert_eq!(all.len(), 1, "a client without clientID is forgotten");
        assert!(!all[0].online);
        assert!(all[0].disconnected_at > 0);
        assert_eq!(s.clients(None, None, None, Some("online")).len(), 0);
        assert_eq!(s.server().client_counts, 0);
        let v = serde_json::to_value(s.client("u.box1").unwrap()).unwrap();
        assert_eq!(v["clientID"], "box1");
        assert_eq!(v["runID"], "");
    }
}
