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
