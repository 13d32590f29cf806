//! The hand-off API between control plane and data plane, and the relay loop.
//!
//! (Skeleton: the relay loop is being implemented.)

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::transform::Transform;

/// Any byte stream the relay can drive: a TLS stream, a yamux stream, a test duplex.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// One end of a pair.
pub enum Endpoint {
    /// A plain TCP socket: the engine may move its bytes without copying them (splice).
    Tcp(tokio::net::TcpStream),
    /// Anything else (TLS, yamux stream, …): bytes are copied.
    Stream(Box<dyn AsyncStream>),
}

/// One side of a pair: the endpoint, the bytes already read from it, and the transforms that
/// apply to bytes read from it (`inbound`, e.g. decrypt then decompress) and to bytes written
/// to it (`outbound`, e.g. compress then encrypt).
pub struct Side {
    pub endpoint: Endpoint,
    /// Bytes the control plane already read from this endpoint, still in wire form (they go
    /// through `inbound` first, like any other bytes read from it).
    pub prefix: Bytes,
    pub inbound: Vec<Box<dyn Transform>>,
    pub outbound: Vec<Box<dyn Transform>>,
}

impl Side {
    /// A side with no pending bytes and no transforms.
    pub fn plain(endpoint: Endpoint) -> Self {
        Side {
            endpoint,
            prefix: Bytes::new(),
            inbound: Vec::new(),
            outbound: Vec::new(),
        }
    }
}

/// Byte counters shared with the control plane (metrics, dashboard). Updated with relaxed
/// atomics once per chunk, never per byte.
#[derive(Debug, Default)]
pub struct Counters {
    /// Plaintext bytes read from side `a` and delivered to side `b`.
    pub a_to_b: AtomicU64,
    /// Plaintext bytes read from side `b` and delivered to side `a`.
    pub b_to_a: AtomicU64,
}

/// A matched pair of endpoints handed to the data plane.
pub struct Pair {
    pub a: Side,
    pub b: Side,
    pub counters: Option<Arc<Counters>>,
}

/// Engine settings (the `[dataplane]` table of frps.toml / frpc.toml).
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Number of core threads; 0 = one per CPU.
    pub threads: usize,
}

/// The relay engine. Cheap to clone; `spawn` hands a pair over for good.
#[derive(Clone)]
pub struct Engine {
    _cfg: Arc<EngineConfig>,
}
