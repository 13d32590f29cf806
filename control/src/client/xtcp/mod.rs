//! xtcp, frpc side (frp's `client/proxy/xtcp.go`, `client/visitor/xtcp.go`, `pkg/nathole`):
//! frps only introduces the proxy owner and the visitor; both discover their public
//! addresses with STUN ([`stun`]), exchange them through frps (`NatHoleVisitor` /
//! `NatHoleClient` → `NatHoleResp`, [`transporter`]), punch ([`punch`]) and then talk
//! directly over the punched UDP socket ([`tunnel`]: QUIC, or KCP + yamux).

pub mod punch;
pub mod stun;
pub mod transporter;
pub mod tunnel;

pub use transporter::Transporter;
pub mod proxy;
pub mod visitor;

use std::time::Duration;

use tokio::net::UdpSocket;

use crate::msg::{Message, NatHoleDetectBehavior, NatHoleResp};

/// How long frpc waits for frps' NatHoleResp (frp: 5 s).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// frp lists at most this many local addresses as assisted addresses.
const MAX_ASSISTED: usize = 10;

/// frp's `PrepareResult`: this side's STUN view and the socket it was seen from.
pub struct Prepared {
    pub addrs: Vec<String>,
    pub assisted: Vec<String>,
    pub sock: UdpSocket,
    pub nat_type: &'static str,
    pub behavior: &'static str,
}

/// frp's `Prepare`: STUN discovery, NAT classification and the assisted (local) addresses.
pub async fn prepare(stun_server: &str, disable_assisted: bool) -> Result<Prepared, String> {
    let (addrs, sock) = stun::discover(&[stun_server.to_string()], None)
        .await
        .map_err(|e| format!("discover error: {e}"))?;
    if addrs.len() < 2 {
        return Err("discover error: not enough addresses".into());
    }
    let local_ips = stun::local_ips_for_nat_hole(MAX_ASSISTED);
    let feature = stun::classify(&addrs, &local_ips)
        .map_err(|e| format!("classify nat feature error: {e}"))?;
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let assisted = if disable_assisted {
        Vec::new()
    } else {
        local_ips.iter().map(|ip| format!("{ip}:{port}")).collect()
    };
    Ok(Prepared {
        addrs,
        assisted,
        sock,
        nat_type: feature.nat_type,
        behavior: feature.behavior,
    })
}

/// [`prepare`] as both ends of a punch run it, with frp's log lines; `None` once the failure
/// is logged. `tag` prefixes the lines (`[run id] [name] `).
pub async fn prepare_logged(
    tag: &str,
    stun_server: &str,
    nat_traversal: Option<&crate::config::NatTraversalConfig>,
) -> Option<Prepared> {
    tracing::trace!("{tag}nathole prepare start");
    let disable_assisted = nat_traversal.is_some_and(|n| n.disable_assisted_addrs);
    match prepare(stun_server, disable_assisted).await {
        Ok(p) => {
            tracing::info!(
                "{tag}nathole prepare success, nat type: {}, behavior: {}, addresses: {}, assistedAddresses: {}",
                p.nat_type,
                p.behavior,
                go_list(&p.addrs),
                go_list(&p.assisted)
            );
            Some(p)
        }
        Err(e) => {
            tracing::warn!("{tag}nathole prepare error: {e}");
            None
        }
    }
}

/// frp's `ExchangeInfo`: sends `m` and waits for its NatHoleResp.
pub async fn exchange_info(
    t: &Transporter,
    lane: &str,
    m: Message,
    timeout: Duration,
) -> Result<NatHoleResp, String> {
    let resp = t
        .request(m, lane, timeout)
        .await
        .map_err(|e| format!("get natHoleRespMsg error: {e}"))?;
    if !resp.error.is_empty() {
        return Err(format!("natHoleRespMsg get error info: {}", resp.error));
    }
    if resp.candidate_addrs.is_empty() {
        return Err("natHoleRespMsg get empty candidate addresses".into());
    }
    Ok(resp)
}

/// Go's `%v` of a `[]string`.
pub fn go_list(v: &[String]) -> String {
    format!("[{}]", v.join(" "))
}

/// Go's `%+v` of frp's `NatHoleDetectBehavior`.
pub fn go_behavior(b: &NatHoleDetectBehavior) -> String {
    let ports: Vec<String> = b
        .candidate_ports
        .iter()
        .map(|p| format!("{{From:{} To:{}}}", p.from, p.to))
        .collect();
    format!(
        "{{Role:{} Mode:{} TTL:{} SendDelayMs:{} ReadTimeoutMs:{} CandidatePorts:[{}] SendRandomPorts:{} ListenRandomPorts:{}}}",
        b.role,
        b.mode,
        b.ttl,
        b.send_delay_ms,
        b.read_timeout,
        ports.join(" "),
        b.send_random_ports,
        b.listen_random_ports
    )
}

/// The NatHoleResp log line both sides write.
pub fn log_resp(tag: &str, r: &NatHoleResp) {
    tracing::info!(
        "{tag}get natHoleRespMsg, sid [{}], protocol [{}], candidate address {}, assisted address {}, detectBehavior: {}",
        r.sid,
        r.protocol,
        go_list(&r.candidate_addrs),
        go_list(&r.assisted_addrs),
        go_behavior(&r.detect_behavior)
    );
}

/// frp's default `natHoleStunServer`.
pub const DEFAULT_STUN_SERVER: &str = "stun.easyvoip.com:3478";

/// `frpc nathole discover`: frp's report of what STUN says about this host's NAT, one line
/// each, or the error line frp prints before exiting 1.
pub async fn discover_report(stun_server: &str, local_addr: &str) -> Result<String, String> {
    if stun_server.is_empty() {
        return Err("nat_hole_stun_server can not be empty".into());
    }
    let local = (!local_addr.is_empty()).then_some(local_addr);
    let (addrs, sock) = stun::discover(&[stun_server.to_string()], local)
        .await
        .map_err(|e| format!("discover error: {e}"))?;
    if addrs.len() < 2 {
        return Err(format!(
            "discover error: can not get enough addresses, need 2, got: {}",
            go_list(&addrs)
        ));
    }
    let local_ips = stun::local_ips_for_nat_hole(MAX_ASSISTED);
    let f = stun::classify(&addrs, &local_ips)
        .map_err(|e| format!("classify nat feature error: {e}"))?;
    let local = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    Ok(format!(
        "STUN server: {stun_server}\nYour NAT type is: {}\nBehavior is: {}\nExternal address is: {}\nLocal address is: {local}\nPublic Network: {}\n",
        f.nat_type,
        f.behavior,
        go_list(&addrs),
        f.public_network
    ))
}
