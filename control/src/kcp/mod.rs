//! KCP, frp's `transport.protocol = "kcp"` / `kcpBindPort`, interoperable with kcp-go v5 as
//! frp configures it (spec §2.1): no kcp-go encryption, FEC 10+3, stream mode, write delay,
//! NoDelay(1, 20, 2, 1), MTU 1350, windows 128/512 (frpc) and 1024/1024 (frps).
//!
//! - [`segment`]: the 24-byte segment header.
//! - [`core`]: the ARQ state machine (sans-IO).
//! - [`fec`]: kcp-go's FEC packet format and Reed–Solomon recovery (sans-IO).
//! - [`session`]: KCP + FEC as one sans-IO session; the listener's datagram classifier.
//! - [`stream`]: the tokio driver: [`KcpStream`] (AsyncRead/AsyncWrite), [`dial`] and
//!   [`KcpListener`].
//!
//! KCP has no FIN: a session ends when its stream is dropped (after up to
//! [`stream::LINGER`] to get queued data acknowledged), when a segment was retransmitted 20
//! times (kcp-go's dead link), or, on the client, when the socket reports an error
//! (ICMP port unreachable). A peer that vanishes silently is noticed by the layers above
//! (yamux keepalive, frp heartbeats), exactly as with kcp-go.

pub mod core;
pub mod fec;
pub mod segment;
pub mod session;
pub mod stream;

pub use stream::{KcpListener, KcpStream, dial, over_connected};
