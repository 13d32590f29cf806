//! The hole punch itself (frp's `MakeHole`): both sides send encrypted `NatHoleSid` datagrams
//! from their STUN-discovered socket to the addresses frps handed out, following frps' plan
//! (role, TTL, delays, guessed port ranges, random ports, extra listening sockets); the first
//! valid datagram with the right sid fixes the peer's address.
//!
//! A punch datagram is a v1 message frame (`NatHoleSid`, type `'5'`) encrypted one-shot with
//! the proxy's `secretKey`: `IV ‖ AES-128-CFB(PBKDF2(sk))`. The receiver of a first detect
//! message answers it with `response = true`; a sender only accepts answers.
//!
//! Differences from frp, for bad input: the wait is bounded as a whole (frp's single-socket
//! wait restarts its deadline on every datagram, so a stream of garbage keeps it waiting);
//! frps' plan is capped (listening sockets, ports per range walk, random ports), so a bad plan
//! costs bounded time and descriptors.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::future::{join_all, select_ok};
use rand::RngExt;
use tokio::net::UdpSocket;
use tracing::{debug, info, trace, warn};

use crate::crypto::{self, CryptoKey};
use crate::msg::{self, Message, NatHoleResp, NatHoleSid};

pub const ROLE_SENDER: &str = "sender";
pub const ROLE_RECEIVER: &str = "receiver";

/// frp's wait for the peer's detect message when frps gives no `readTimeoutMs`.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Caps on frps' plan (frp's own strategies use at most 256 sockets, 1000 random ports and
/// ranges of a few ports).
const MAX_LISTEN_RANDOM_PORTS: usize = 256;
const MAX_RANGE_PORTS: usize = 4096;
const MAX_RANDOM_PORTS: usize = 2000;
/// The largest punch datagram read (frp reads into 1024 bytes).
const READ_BUF: usize = 1024;

/// Why a punch datagram was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("encrypted data of {0} bytes is shorter than the 16-byte IV")]
    Short(usize),
    #[error("{0}")]
    Frame(String),
    #[error("unexpected message type {0:?} (want NatHoleSid)")]
    WrongType(char),
}

/// Why the punch failed.
#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    #[error("wait detect message timeout")]
    Timeout,
    #[error("wait detect message error: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes a punch datagram.
pub fn encode(m: &NatHoleSid, key: &CryptoKey) -> Vec<u8> {
    crypto::encode_oneshot(&msg::encode_v1(&Message::NatHoleSid(m.clone())), key)
}

/// Decodes a punch datagram: the one-shot decryption, then exactly one v1 `NatHoleSid` frame.
/// A wrong key decrypts to garbage, which fails here.
pub fn decode(data: &[u8], key: &CryptoKey) -> Result<NatHoleSid, CodecError> {
    let plain = crypto::decode_oneshot(data, key).map_err(|_| CodecError::Short(data.len()))?;
    let header: &[u8; msg::V1_HEADER_LEN] = plain
        .get(..msg::V1_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or_else(|| CodecError::Frame("message shorter than its header".into()))?;
    let (ty, len) = msg::parse_v1_header(header).map_err(|e| CodecError::Frame(e.to_string()))?;
    let body = plain
        .get(msg::V1_HEADER_LEN..msg::V1_HEADER_LEN + len)
        .ok_or_else(|| CodecError::Frame("message body truncated".into()))?;
    match Message::from_json(ty, body).map_err(|e| CodecError::Frame(e.to_string()))? {
        Message::NatHoleSid(m) => Ok(m),
        _ => Err(CodecError::WrongType(ty as char)),
    }
}

/// What frps' `NatHoleResp` asks of this side, as concrete work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub sender: bool,
    /// Sender: wait this long before sending.
    pub send_delay: Duration,
    /// Sent a detect message from every socket (frp's order, consecutive duplicates removed).
    pub detect: Vec<SocketAddr>,
    /// Receiver: extra sockets on random ports.
    pub listen_random_ports: usize,
    /// Every candidate IP × every port of the ranges (2 ms apart).
    pub range_targets: Vec<SocketAddr>,
    /// Random ports (1024..65535) per candidate IP, 15 ms apart, while waiting.
    pub random_ports: usize,
    /// Candidate IPs (for random ports).
    pub candidate_ips: Vec<IpAddr>,
    /// IP TTL of detect messages; 0 keeps the system's.
    pub ttl: u32,
    pub read_timeout: Duration,
}

fn parse_v4(addrs: &[String]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .filter_map(|a| match a.parse::<SocketAddr>() {
            Ok(s) if s.is_ipv4() => Some(s),
            _ => {
                trace!("skip unusable nat hole address {a}");
                None
            }
        })
        .collect()
}

/// frp's MakeHole preparation, as a [`Plan`].
pub fn plan(m: &NatHoleResp) -> Plan {
    let b = &m.detect_behavior;
    let sender = b.role == ROLE_SENDER;
    let candidates = parse_v4(&m.candidate_addrs);
    let mut detect = Vec::new();
    if sender {
        detect.extend(parse_v4(&m.assisted_addrs));
        detect.extend(candidates.iter().copied());
    } else if b.candidate_ports.is_empty() {
        detect.extend(candidates.iter().copied());
    }
    detect.dedup();
    let mut candidate_ips: Vec<IpAddr> = candidates.iter().map(|a| a.ip()).collect();
    candidate_ips.dedup();
    let mut range_targets = Vec::new();
    'outer: for ip in &candidate_ips {
        for r in &b.candidate_ports {
            let (from, to) = (r.from.max(1), r.to.min(65535));
            for port in from..=to {
                if range_targets.len() >= MAX_RANGE_PORTS {
                    break 'outer;
                }
                range_targets.push(SocketAddr::new(*ip, port as u16));
            }
        }
    }
    Plan {
        sender,
        send_delay: if sender && b.send_delay_ms > 0 {
            Duration::from_millis(b.send_delay_ms.min(60_000) as u64)
        } else {
            Duration::ZERO
        },
        detect,
        listen_random_ports: if sender {
            0
        } else {
            (b.listen_random_ports.max(0) as usize).min(MAX_LISTEN_RANDOM_PORTS)
        },
        range_targets,
        random_ports: (b.send_random_ports.max(0) as usize).min(MAX_RANDOM_PORTS),
        candidate_ips,
        ttl: b.ttl.clamp(0, 255) as u32,
        read_timeout: if b.read_timeout > 0 {
            Duration::from_millis(b.read_timeout.min(600_000) as u64)
        } else {
            DEFAULT_READ_TIMEOUT
        },
    }
}

/// frp's `NewTransactionID`: unix seconds followed by 8 random hex digits.
pub fn new_transaction_id() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{now}{:08x}", rand::random::<u32>())
}

/// One detect message from `sock` to `to`, with the plan's TTL (restored afterwards).
async fn send_sid(
    sock: &UdpSocket,
    sid: &str,
    tid: &str,
    to: SocketAddr,
    key: &CryptoKey,
    ttl: u32,
) {
    let nonce = "0".repeat(rand::rng().random_range(0..20));
    let m = NatHoleSid {
        transaction_id: tid.to_string(),
        sid: sid.to_string(),
        response: false,
        nonce,
    };
    let buf = encode(&m, key);
    let sref = socket2::SockRef::from(sock);
    let original = if ttl > 0 {
        match sref.ttl_v4() {
            Ok(o) => {
                if let Err(e) = sref.set_ttl_v4(ttl) {
                    trace!("set ttl error {e}");
                }
                Some(o)
            }
            Err(e) => {
                trace!("get ttl error {e}");
                return;
            }
        }
    } else {
        None
    };
    trace!(
        "send sid message from {:?} to {to}{}",
        sock.local_addr().ok(),
        if ttl > 0 {
            format!(" with ttl {ttl}")
        } else {
            String::new()
        }
    );
    if let Err(e) = sock.send_to(&buf, to).await {
        trace!("send sid message to {to} error: {e}");
    }
    if let Some(o) = original {
        let _ = sref.set_ttl_v4(o);
    }
}

/// Waits on one socket for a valid detect message with `sid`; answers a first detect message
/// unless we are the sender. Returns the peer's address.
async fn wait_detect(
    sock: &UdpSocket,
    sid: &str,
    key: &CryptoKey,
    sender: bool,
    tag: &str,
) -> std::io::Result<SocketAddr> {
    let mut buf = vec![0u8; READ_BUF];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier sends (a guessed port that is closed).
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(e) => return Err(e),
        };
        debug!(
            "{tag}get udp message local {:?}, from {from}",
            sock.local_addr().ok()
        );
        let mut m = match decode(&buf[..n], key) {
            Ok(m) => m,
            Err(e) => {
                warn!("{tag}decode sid message error: {e}");
                continue;
            }
        };
        if m.sid != sid {
            warn!(
                "{tag}get sid message with wrong sid: {}, expect: {sid}",
                m.sid
            );
            continue;
        }
        if !m.response {
            if sender {
                continue;
            }
            m.response = true;
            let _ = sock.send_to(&encode(&m, key), from).await;
        }
        return Ok(from);
    }
}

/// frp's `MakeHole`: punches from `listen` (and, as receiver, extra sockets) and returns the
/// socket that heard the peer, with the peer's address. `tag` prefixes log lines ("[name] ").
pub async fn make_hole(
    listen: UdpSocket,
    m: &NatHoleResp,
    key: &CryptoKey,
    tag: &str,
) -> Result<(UdpSocket, SocketAddr), PunchError> {
    let p = plan(m);
    let tid = new_transaction_id();
    let mut socks = vec![listen];
    if p.sender {
        if !p.send_delay.is_zero() {
            tokio::time::sleep(p.send_delay).await;
        }
    } else {
        for _ in 0..p.listen_random_ports {
            match UdpSocket::bind(("0.0.0.0", 0)).await {
                Ok(s) => socks.push(s),
                Err(e) => warn!("{tag}listen random udp addr error: {e}"),
            }
        }
    }
    for to in &p.detect {
        for s in &socks {
            send_sid(s, &m.sid, &tid, *to, key, p.ttl).await;
        }
    }
    if !p.range_targets.is_empty() {
        for s in &socks {
            for to in &p.range_targets {
                send_sid(s, &m.sid, &tid, *to, key, p.ttl).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    let random = async {
        if p.random_ports > 0 {
            join_all(socks.iter().map(|s| async {
                let mut used = std::collections::HashSet::new();
                for _ in 0..p.random_ports {
                    let port = (0..10)
                        .map(|_| rand::rng().random_range(1024u16..65535))
                        .find(|port| used.insert(*port));
                    let Some(port) = port else { continue };
                    for ip in &p.candidate_ips {
                        send_sid(s, &m.sid, &tid, SocketAddr::new(*ip, port), key, p.ttl).await;
                        tokio::time::sleep(Duration::from_millis(15)).await;
                    }
                }
            }))
            .await;
        }
        std::future::pending::<()>().await
    };
    let waits = select_ok(socks.iter().enumerate().map(|(i, s)| {
        Box::pin(async move {
            wait_detect(s, &m.sid, key, p.sender, tag)
                .await
                .map(|a| (i, a))
        })
    }));
    let won = tokio::time::timeout(p.read_timeout, async {
        tokio::select! {
            r = waits => r.map(|(r, _)| r),
            _ = random => unreachable!("pending"),
        }
    })
    .await;
    match won {
        Ok(Ok((i, raddr))) => {
            let sock = socks.swap_remove(i);
            info!(
                "{tag}nat hole: peer {raddr} answered on {:?}",
                sock.local_addr().ok()
            );
            Ok((sock, raddr))
        }
        Ok(Err(e)) => Err(PunchError::Io(e)),
        Err(_) => Err(PunchError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{NatHoleDetectBehavior, PortsRange};

    fn key() -> CryptoKey {
        CryptoKey::derive(b"sk")
    }

    fn sid(s: &str, response: bool) -> NatHoleSid {
        NatHoleSid {
            transaction_id: "1700000000abcdef01".into(),
            sid: s.into(),
            response,
            nonce: "000".into(),
        }
    }

    #[test]
    fn codec_round_trips_and_rejects_forgeries() {
        let k = key();
        let m = sid("s1", true);
        let d = encode(&m, &k);
        assert_eq!(decode(&d, &k).unwrap(), m);
        // Another key: garbage.
        assert!(decode(&d, &CryptoKey::derive(b"other")).is_err());
        // Short, empty, flipped bits in the header.
        assert_eq!(decode(&d[..5], &k), Err(CodecError::Short(5)));
        assert!(decode(&[], &k).is_err());
        let mut bad = d.clone();
        bad[16] ^= 0xff;
        assert!(decode(&bad, &k).is_err());
        // Truncated body.
        assert!(decode(&d[..d.len() - 3], &k).is_err());
        // Another message type, correctly encrypted.
        let other = crypto::encode_oneshot(
            &msg::encode_v1(&Message::NatHoleReport(msg::NatHoleReport {
                sid: "s1".into(),
                success: true,
            })),
            &k,
        );
        assert_eq!(decode(&other, &k), Err(CodecError::WrongType('6')));
        // A huge length field.
        let mut frame = vec![b'5'];
        frame.extend_from_slice(&(1i64 << 40).to_be_bytes());
        assert!(decode(&crypto::encode_oneshot(&frame, &k), &k).is_err());
    }

    /// The frame is frp's: type '5', big-endian i64 length, Go's JSON field names.
    #[test]
    fn datagram_plaintext_is_frps_json() {
        let k = key();
        let d = encode(&sid("abc", false), &k);
        let plain = crypto::decode_oneshot(&d, &k).unwrap();
        assert_eq!(plain[0], b'5');
        let json = std::str::from_utf8(&plain[9..]).unwrap();
        assert!(json.contains("\"sid\":\"abc\""), "{json}");
        assert!(json.contains("\"transaction_id\""), "{json}");
    }

    fn resp(role: &str) -> NatHoleResp {
        NatHoleResp {
            sid: "s".into(),
            candidate_addrs: vec!["1.1.1.1:100".into(), "1.1.1.1:101".into()],
            assisted_addrs: vec!["192.168.1.2:100".into()],
            detect_behavior: NatHoleDetectBehavior {
                role: role.into(),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn plan_follows_frps_behavior() {
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        // Sender: assisted, then candidates.
        let p = plan(&resp(ROLE_SENDER));
        assert!(p.sender);
        assert_eq!(
            p.detect,
            vec![s("192.168.1.2:100"), s("1.1.1.1:100"), s("1.1.1.1:101")]
        );
        assert_eq!(p.read_timeout, DEFAULT_READ_TIMEOUT);
        // Receiver: candidates only, unless ranges are given.
        let mut r = resp(ROLE_RECEIVER);
        r.detect_behavior.ttl = 7;
        r.detect_behavior.read_timeout = 300;
        r.detect_behavior.listen_random_ports = 100_000;
        let p = plan(&r);
        assert!(!p.sender);
        assert_eq!(p.detect, vec![s("1.1.1.1:100"), s("1.1.1.1:101")]);
        assert_eq!(p.ttl, 7);
        assert_eq!(p.read_timeout, Duration::from_millis(300));
        assert_eq!(p.listen_random_ports, MAX_LISTEN_RANDOM_PORTS);
        r.detect_behavior.candidate_ports = vec![PortsRange { from: 200, to: 202 }];
        let p = plan(&r);
        assert!(p.detect.is_empty());
        assert_eq!(p.candidate_ips, vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            p.range_targets,
            vec![s("1.1.1.1:200"), s("1.1.1.1:201"), s("1.1.1.1:202")]
        );
        // A sender delays; a hostile plan is capped.
        let mut r = resp(ROLE_SENDER);
        r.detect_behavior.send_delay_ms = 5000;
        r.detect_behavior.send_random_ports = 1_000_000;
        r.detect_behavior.listen_random_ports = 5;
        r.detect_behavior.candidate_ports = vec![
            PortsRange {
                from: 0,
                to: 1_000_000
            };
            4
        ];
        r.candidate_addrs.push("not-an-address".into());
        r.candidate_addrs.push("[::1]:5".into());
        let p = plan(&r);
        assert_eq!(p.send_delay, Duration::from_secs(5));
        assert_eq!(p.random_ports, MAX_RANDOM_PORTS);
        assert_eq!(
            p.listen_random_ports, 0,
            "only receivers listen on extra ports"
        );
        assert_eq!(p.range_targets.len(), MAX_RANGE_PORTS);
        assert_eq!(p.detect.len(), 3);
    }

    #[test]
    fn transaction_ids_look_like_frps() {
        let t = new_transaction_id();
        assert_eq!(t.len(), 18, "{t}");
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(t, new_transaction_id());
    }

    async fn pair_resp(sock: &UdpSocket, peer: &UdpSocket, role: &str, sid: &str) -> NatHoleResp {
        let _ = sock;
        NatHoleResp {
            sid: sid.into(),
            candidate_addrs: vec![peer.local_addr().unwrap().to_string()],
            detect_behavior: NatHoleDetectBehavior {
                role: role.into(),
                read_timeout: 3000,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn two_sides_punch_on_localhost() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let ra = pair_resp(&a, &b, ROLE_SENDER, "sid1").await;
        let rb = pair_resp(&b, &a, ROLE_RECEIVER, "sid1").await;
        let k = key();
        let (x, y) = tokio::join!(make_hole(a, &ra, &k, ""), make_hole(b, &rb, &k, ""));
        let (xs, xpeer) = x.unwrap();
        let (ys, ypeer) = y.unwrap();
        assert_eq!(xpeer, b_addr);
        assert_eq!(ypeer, a_addr);
        assert_eq!(xs.local_addr().unwrap(), a_addr);
        assert_eq!(ys.local_addr().unwrap(), b_addr);
    }

    #[tokio::test]
    async fn wrong_key_wrong_sid_and_garbage_end_in_a_timeout() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let attacker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut r = pair_resp(&a, &attacker, ROLE_RECEIVER, "sid1").await;
        r.detect_behavior.read_timeout = 800;
        let a_addr = a.local_addr().unwrap();
        let flood = async {
            for i in 0..200u32 {
                let d = match i % 3 {
                    0 => b"garbage".to_vec(),
                    1 => encode(&sid("sid1", false), &CryptoKey::derive(b"wrong")),
                    _ => encode(&sid("other-sid", false), &key()),
                };
                let _ = attacker.send_to(&d, a_addr).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let started = std::time::Instant::now();
        let k = key();
        let (res, _) = tokio::join!(make_hole(a, &r, &k, ""), flood);
        let e = res.unwrap_err();
        assert_eq!(e.to_string(), "wait detect message timeout");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
