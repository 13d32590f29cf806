//! STUN discovery for xtcp (frp's `pkg/nathole/discovery.go` and `classify.go`): one UDP socket
//! sends plain Binding requests to `natHoleStunServer`, reads the mapped address (XOR-MAPPED
//! over MAPPED) and the server's other address (OTHER-ADDRESS over RFC 3489's
//! CHANGED-ADDRESS), then asks that other address too. The two mapped addresses tell the NAT's
//! type: the same → EasyNAT, else HardNAT with the behaviour of what changed.
//!
//! Unlike frp, which keeps each read's 3 s deadline, a request waits 3 s in all: datagrams
//! from elsewhere or for another transaction are skipped without extending the wait.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{MappedAddress, XorMappedAddress};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::OtherAddress;
use stun_codec::{Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId};
use tokio::net::UdpSocket;

/// How long one Binding request waits for its response (frp: 3 s).
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(3);
/// RFC 3489's CHANGED-ADDRESS (frp reads it like OTHER-ADDRESS).
const ATTR_CHANGED_ADDRESS: u16 = 0x0005;

stun_codec::define_attribute_enums!(
    Attribute,
    AttributeDecoder,
    AttributeEncoder,
    [MappedAddress, XorMappedAddress, OtherAddress]
);

/// Why discovery failed. The texts follow frp's where it has them.
#[derive(Debug, thiserror::Error)]
pub enum StunError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("address {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error("wait response from stun server timeout")]
    Timeout,
    #[error("invalid stun response from {from}: {reason}")]
    Decode { from: SocketAddr, reason: String },
    #[error("no external address found")]
    NoExternalAddress,
}

/// What one Binding response said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BindingResponse {
    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS.
    pub external: Option<SocketAddr>,
    /// OTHER-ADDRESS, else CHANGED-ADDRESS.
    pub other: Option<SocketAddr>,
}

/// A Binding request with `id`.
pub fn binding_request(id: [u8; 12]) -> Vec<u8> {
    let msg = Message::<Attribute>::new(MessageClass::Request, BINDING, TransactionId::new(id));
    MessageEncoder::new()
        .encode_into_bytes(msg)
        .unwrap_or_default()
}

/// The first line of a bytecodec error (its Display appends a trace).
fn short(e: &bytecodec::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Parses a Binding response. `Ok(None)`: a well-formed STUN message for another transaction.
pub fn parse_response(data: &[u8], id: [u8; 12]) -> Result<Option<BindingResponse>, String> {
    let msg = MessageDecoder::<Attribute>::new()
        .decode_from_bytes(data)
        .map_err(|e| short(&e))?
        .map_err(|broken| short(broken.error()))?;
    if msg.transaction_id().as_bytes() != &id {
        return Ok(None);
    }
    let mut r = BindingResponse::default();
    if let Some(a) = msg.get_attribute::<MappedAddress>() {
        r.external = Some(a.address());
    }
    if let Some(a) = msg.get_attribute::<XorMappedAddress>() {
        r.external = Some(a.address());
    }
    if let Some(raw) = msg
        .unknown_attributes()
        .find(|a| stun_codec::Attribute::get_type(*a).as_u16() == ATTR_CHANGED_ADDRESS)
        && let Some(addr) = parse_address(raw.value())
    {
        r.other = Some(addr);
    }
    if let Some(a) = msg.get_attribute::<OtherAddress>() {
        r.other = Some(a.address());
    }
    Ok(Some(r))
}

/// A MAPPED-ADDRESS-shaped value: 0, family (1 IPv4, 2 IPv6), port, address.
fn parse_address(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip = match (v.get(1)?, v.len()) {
        (1, 8) => IpAddr::V4(Ipv4Addr::new(v[4], v[5], v[6], v[7])),
        (2, 20) => {
            let b: [u8; 16] = v[4..20].try_into().ok()?;
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Resolves `host:port` to an IPv4 address (frp resolves with "udp4").
pub async fn resolve_v4(addr: &str) -> Result<SocketAddr, StunError> {
    let found = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| StunError::Resolve {
            addr: addr.to_string(),
            reason: e.to_string(),
        })?;
    let all: Vec<SocketAddr> = found.collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .copied()
        .ok_or_else(|| StunError::Resolve {
            addr: addr.to_string(),
            reason: "no suitable address found".into(),
        })
}

/// One Binding transaction on `sock` with `server`.
pub async fn request(sock: &UdpSocket, server: SocketAddr) -> Result<BindingResponse, StunError> {
    let id: [u8; 12] = rand::random();
    sock.send_to(&binding_request(id), server).await?;
    let deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
    let mut buf = vec![0u8; 1500];
    loop {
        let (n, from) = match tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Err(StunError::Timeout),
        };
        if from != server {
            continue;
        }
        match parse_response(&buf[..n], id) {
            Ok(Some(r)) => return Ok(r),
            Ok(None) => continue,
            Err(reason) => return Err(StunError::Decode { from, reason }),
        }
    }
}

/// frp's `discoverFromStunServer`: the mapped address seen by `server`, then the one seen by
/// its other address when it names one.
pub async fn discover_from(sock: &UdpSocket, server: &str) -> Result<Vec<String>, StunError> {
    let first = request(sock, resolve_v4(server).await?).await?;
    let external = first.external.ok_or(StunError::NoExternalAddress)?;
    let mut addrs = vec![external.to_string()];
    let Some(other) = first.other else {
        return Ok(addrs);
    };
    let second = request(sock, other).await?;
    if let Some(e) = second.external {
        addrs.push(e.to_string());
    }
    Ok(addrs)
}

/// frp's `Discover`: binds `local` (or a random IPv4 port) and asks every server. Returns
/// the external addresses and the socket (its local address is what frp reports).
pub async fn discover(
    servers: &[String],
    local: Option<&str>,
) -> Result<(Vec<String>, UdpSocket), StunError> {
    let bind: SocketAddr = match local {
        Some(l) if !l.is_empty() => resolve_v4(l).await?,
        _ => (Ipv4Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).await?;
    let mut addrs = Vec::new();
    for s in servers {
        addrs.extend(discover_from(&sock, s).await?);
    }
    Ok((addrs, sock))
}

pub const EASY_NAT: &str = "EasyNAT";
pub const HARD_NAT: &str = "HardNAT";

/// frp's `NatFeature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatFeature {
    pub nat_type: &'static str,
    pub behavior: &'static str,
    pub ports_difference: i64,
    pub regular_ports_change: bool,
    pub public_network: bool,
}

/// frp's `ClassifyNATFeature`.
pub fn classify(addresses: &[String], local_ips: &[String]) -> Result<NatFeature, String> {
    if addresses.len() <= 1 {
        return Err("not enough addresses".into());
    }
    let mut public_network = false;
    let (mut ip_changed, mut port_changed) = (false, false);
    let mut base: Option<(String, u16)> = None;
    let (mut port_min, mut port_max) = (0i64, 0i64);
    for a in addresses {
        let (ip, port) = split_host_port(a)?;
        if local_ips.contains(&ip) {
            public_network = true;
        }
        match &base {
            None => {
                port_min = port as i64;
                port_max = port as i64;
                base = Some((ip, port));
            }
            Some((bip, bport)) => {
                port_min = port_min.min(port as i64);
                port_max = port_max.max(port as i64);
                ip_changed |= *bip != ip;
                port_changed |= *bport != port;
            }
        }
    }
    let (nat_type, behavior) = match (ip_changed, port_changed) {
        (true, true) => (HARD_NAT, "BehaviorBothChanged"),
        (true, false) => (HARD_NAT, "BehaviorIPChanged"),
        (false, true) => (HARD_NAT, "BehaviorPortChanged"),
        (false, false) => (EASY_NAT, "BehaviorNoChange"),
    };
    let mut f = NatFeature {
        nat_type,
        behavior,
        ports_difference: 0,
        regular_ports_change: false,
        public_network,
    };
    if behavior == "BehaviorPortChanged" {
        f.ports_difference = port_max - port_min;
        f.regular_ports_change = (1..=5).contains(&f.ports_difference);
    }
    Ok(f)
}

/// Go's `net.SplitHostPort` plus a numeric port.
fn split_host_port(a: &str) -> Result<(String, u16), String> {
    let (host, port) = a
        .rsplit_once(':')
        .ok_or_else(|| format!("address {a}: missing port in address"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("strconv.Atoi: parsing \"{port}\": invalid syntax"))?;
    Ok((host.to_string(), port))
}

/// frp's `ListLocalIPsForNatHole`: up to `max` IPv4 addresses of this host's interfaces,
/// neither loopback nor link-local.
pub fn local_ips_for_nat_hole(max: usize) -> Vec<String> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    ifaces
        .iter()
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_link_local() => Some(v4.to_string()),
            _ => None,
        })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: [u8; 12], attrs: Vec<Attribute>) -> Vec<u8> {
        let mut m = Message::<Attribute>::new(
            MessageClass::SuccessResponse,
            BINDING,
            TransactionId::new(id),
        );
        for a in attrs {
            m.add_attribute(a);
        }
        MessageEncoder::new().encode_into_bytes(m).unwrap()
    }

    #[test]
    fn binding_request_is_a_plain_rfc5389_request() {
        let req = binding_request([7; 12]);
        assert_eq!(req.len(), 20, "header only, no attributes");
        assert_eq!(&req[0..2], &[0x00, 0x01]);
        assert_eq!(&req[4..8], &[0x21, 0x12, 0xa4, 0x42], "magic cookie");
        assert_eq!(&req[8..20], &[7; 12]);
    }

    #[test]
    fn xor_mapped_wins_over_mapped_and_other_over_changed() {
        let id = [1; 12];
        let mapped: SocketAddr = "1.2.3.4:1000".parse().unwrap();
        let xor: SocketAddr = "5.6.7.8:2000".parse().unwrap();
        let other: SocketAddr = "9.9.9.9:3479".parse().unwrap();
        let data = response(
            id,
            vec![
                MappedAddress::new(mapped).into(),
                XorMappedAddress::new(xor).into(),
                OtherAddress::new(other).into(),
            ],
        );
        let r = parse_response(&data, id).unwrap().unwrap();
        assert_eq!(r.external, Some(xor));
        assert_eq!(r.other, Some(other));
        // MAPPED alone is used.
        let data = response(id, vec![MappedAddress::new(mapped).into()]);
        let r = parse_response(&data, id).unwrap().unwrap();
        assert_eq!(
            r,
            BindingResponse {
                external: Some(mapped),
                other: None
            }
        );
    }

    #[test]
    fn changed_address_of_rfc3489_servers_is_read() {
        let id = [2; 12];
        let mut data = response(
            id,
            vec![MappedAddress::new("1.2.3.4:1000".parse().unwrap()).into()],
        );
        // Append CHANGED-ADDRESS (0x0005) 10.0.0.2:3479 and fix the length.
        data.extend_from_slice(&[0x00, 0x05, 0x00, 0x08, 0x00, 0x01, 0x0d, 0x97, 10, 0, 0, 2]);
        let len = (data.len() - 20) as u16;
        data[2..4].copy_from_slice(&len.to_be_bytes());
        let r = parse_response(&data, id).unwrap().unwrap();
        assert_eq!(r.other, Some("10.0.0.2:3479".parse().unwrap()));
    }

    #[test]
    fn garbage_and_other_transactions() {
        let id = [3; 12];
        assert!(parse_response(b"", id).is_err());
        assert!(parse_response(b"hello, this is not stun at all", id).is_err());
        assert!(parse_response(&[0u8; 19], id).is_err());
        // Header claims more attribute bytes than there are.
        let mut d = response(id, vec![]);
        d[3] = 40;
        assert!(parse_response(&d, id).is_err());
        // A valid response for another transaction is skipped, not an error.
        let d = response(
            [4; 12],
            vec![MappedAddress::new("1.2.3.4:1".parse().unwrap()).into()],
        );
        assert_eq!(parse_response(&d, id).unwrap(), None);
        assert_eq!(parse_address(&[0, 1, 0]), None);
        assert_eq!(parse_address(&[0, 9, 0, 1, 1, 2, 3, 4]), None);
    }

    #[test]
    fn classify_follows_frp() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let f = classify(&s(&["1.1.1.1:100", "1.1.1.1:100"]), &[]).unwrap();
        assert_eq!((f.nat_type, f.behavior), (EASY_NAT, "BehaviorNoChange"));
        assert!(!f.public_network);
        let f = classify(&s(&["1.1.1.1:100", "1.1.1.1:103"]), &s(&["1.1.1.1"])).unwrap();
        assert_eq!((f.nat_type, f.behavior), (HARD_NAT, "BehaviorPortChanged"));
        assert_eq!(f.ports_difference, 3);
        assert!(f.regular_ports_change);
        assert!(f.public_network);
        let f = classify(&s(&["1.1.1.1:100", "1.1.1.1:200"]), &[]).unwrap();
        assert!(!f.regular_ports_change);
        let f = classify(&s(&["1.1.1.1:100", "2.2.2.2:100"]), &[]).unwrap();
        assert_eq!(f.behavior, "BehaviorIPChanged");
        let f = classify(&s(&["1.1.1.1:100", "2.2.2.2:101"]), &[]).unwrap();
        assert_eq!(f.behavior, "BehaviorBothChanged");
        assert_eq!(
            classify(&s(&["1.1.1.1:100"]), &[]).unwrap_err(),
            "not enough addresses"
        );
        assert!(classify(&s(&["1.1.1.1", "1.1.1.1:1"]), &[]).is_err());
    }

    /// A STUN server on 127.0.0.1 answering from `main` and naming `other` as its other
    /// address; `other` answers too (with its own mapped view).
    async fn serve(sock: UdpSocket, other: Option<SocketAddr>, garbage: bool) {
        let mut buf = vec![0u8; 1500];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                return;
            };
            let Ok(Ok(req)) = MessageDecoder::<Attribute>::new().decode_from_bytes(&buf[..n])
            else {
                continue;
            };
            if garbage {
                let _ = sock.send_to(b"\x01\x01garbage", from).await;
                continue;
            }
            let mut attrs: Vec<Attribute> = vec![XorMappedAddress::new(from).into()];
            if let Some(o) = other {
                attrs.push(OtherAddress::new(o).into());
            }
            let resp = response(*req.transaction_id().as_bytes(), attrs);
            let _ = sock.send_to(&resp, from).await;
        }
    }

    #[tokio::test]
    async fn discover_asks_the_other_address_too() {
        let main = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let second = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let main_addr = main.local_addr().unwrap();
        let second_addr = second.local_addr().unwrap();
        tokio::spawn(serve(main, Some(second_addr), false));
        tokio::spawn(serve(second, None, false));
        let (addrs, sock) = discover(&[main_addr.to_string()], Some("127.0.0.1:0"))
            .await
            .unwrap();
        let me = sock.local_addr().unwrap().to_string();
        assert_eq!(addrs, vec![me.clone(), me]);
        let f = classify(&addrs, &[]).unwrap();
        assert_eq!(f.nat_type, EASY_NAT);
    }

    #[tokio::test]
    async fn garbage_silence_and_no_address_are_clear_errors() {
        // Garbage.
        let g = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let g_addr = g.local_addr().unwrap();
        tokio::spawn(serve(g, None, true));
        let e = discover(&[g_addr.to_string()], None).await.unwrap_err();
        assert!(matches!(e, StunError::Decode { .. }), "{e}");
        // Silence.
        let quiet = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let q_addr = quiet.local_addr().unwrap();
        let t = std::time::Instant::now();
        let e = discover(&[q_addr.to_string()], None).await.unwrap_err();
        assert_eq!(e.to_string(), "wait response from stun server timeout");
        assert!(t.elapsed() < Duration::from_secs(10));
        drop(quiet);
        // A response without a mapped address.
        let bare = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b_addr = bare.local_addr().unwrap();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 1500];
            while let Ok((n, from)) = bare.recv_from(&mut buf).await {
                let id: [u8; 12] = buf[8..20].try_into().unwrap();
                let _ = n;
                let _ = bare.send_to(&response(id, vec![]), from).await;
            }
        });
        let e = discover(&[b_addr.to_string()], None).await.unwrap_err();
        assert_eq!(e.to_string(), "no external address found");
        let e = discover(&["no-port".to_string()], None).await.unwrap_err();
        assert!(e.to_string().starts_with("address no-port: "), "{e}");
    }
}
