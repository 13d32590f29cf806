//! PROXY protocol headers frpc writes to the local service (`transport.proxyProtocolVersion`,
//! spec §8 item 7 and §9), encoded with the `ppp` crate the way frp's go-proxyproto does:
//!
//! - `"v1"`: `PROXY TCP4|TCP6 src dst sport dport\r\n`; v1 has no UDP, so a datagram gets
//!   `PROXY UNKNOWN\r\n` (go-proxyproto's v1 output for UDP addresses);
//! - anything else: v2, command PROXY, STREAM (tcp) or DGRAM (udp), IPv4 or IPv6.
//!
//! Mixed families (an IPv4 user reaching an IPv6 service) are written as IPv6 with the IPv4
//! address mapped.

use std::net::SocketAddr;

use ppp::v2::{Builder, Command, Protocol, Version};

/// Which transport the header describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Stream,
    Datagram,
}

/// Encoding the header failed (only possible for absurd TLV sizes, which are never written).
#[derive(Debug, thiserror::Error)]
#[error("build PROXY protocol header: {0}")]
pub struct HeaderError(#[from] std::io::Error);

/// The header for a connection (or the first datagram of a mapping) from `src` (the user) to
/// `dst` (frps' socket for tcp, the local service for udp).
pub fn header(
    version: &str,
    src: SocketAddr,
    dst: SocketAddr,
    transport: Transport,
) -> Result<Vec<u8>, HeaderError> {
    let (src, dst) = same_family(src, dst);
    if version == "v1" {
        let text = match transport {
            Transport::Stream => ppp::v1::Addresses::from((src, dst)).to_string(),
            Transport::Datagram => ppp::v1::Addresses::Unknown.to_string(),
        };
        return Ok(text.into_bytes());
    }
    let protocol = match transport {
        Transport::Stream => Protocol::Stream,
        Transport::Datagram => Protocol::Datagram,
    };
    Ok(Builder::with_addresses(Version::Two | Command::Proxy, protocol, (src, dst)).build()?)
}

fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        other => other,
    };
    match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V6(_)) | (SocketAddr::V6(_), SocketAddr::V4(_)) => {
            (v6(src), v6(dst))
        }
        same => same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_text() {
        let h = header(
            "v1",
            addr("1.2.3.4:5678"),
            addr("127.0.0.1:6000"),
            Transport::Stream,
        )
        .unwrap();
        assert_eq!(h, b"PROXY TCP4 1.2.3.4 127.0.0.1 5678 6000\r\n");
    }

    #[test]
    fn v1_udp_is_unknown() {
        let h = header(
            "v1",
            addr("1.2.3.4:5678"),
            addr("127.0.0.1:53"),
            Transport::Datagram,
        )
        .unwrap();
        assert_eq!(h, b"PROXY UNKNOWN\r\n");
    }

    #[test]
    fn v2_tcp4_bytes_match_go_proxyproto() {
        // go-proxyproto's HeaderProxyFromAddrs(2, 1.2.3.4:5678, 127.0.0.1:6000).Format()
        let h = header(
            "v2",
            addr("1.2.3.4:5678"),
            addr("127.0.0.1:6000"),
            Transport::Stream,
        )
        .unwrap();
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        want.extend_from_slice(&[0x21, 0x11, 0, 12, 1, 2, 3, 4, 127, 0, 0, 1, 0x16, 0x2e]);
        want.extend_from_slice(&6000u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn v2_udp6_and_any_other_version_string_means_v2() {
        let h = header(
            "",
            addr("[::1]:1000"),
            addr("[::2]:2000"),
            Transport::Datagram,
        )
        .unwrap();
        assert_eq!(h[12], 0x21);
        assert_eq!(h[13], 0x22, "AF_INET6 | DGRAM");
        let parsed = ppp::v2::Header::try_from(h.as_slice()).unwrap();
        assert_eq!(
            parsed.addresses,
            ppp::v2::Addresses::from((addr("[::1]:1000"), addr("[::2]:2000")))
        );
    }

    #[test]
    fn mixed_families_are_mapped_to_v6() {
        let h = header("v1", addr("1.2.3.4:1"), addr("[::1]:2"), Transport::Stream).unwrap();
        assert_eq!(h, b"PROXY TCP6 ::ffff:1.2.3.4 ::1 1 2\r\n");
    }
}
