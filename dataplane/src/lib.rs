//! The data plane: moves tunnel bytes between the two ends of a *pair* once the control plane
//! has matched them (frps: user connection ↔ work connection; frpc: work connection ↔ local
//! service).
//!
//! # Layout
//! - [`transform`]: the [`Transform`] trait — a sans-IO byte transform (decrypt, decompress, …)
//!   applied to the bytes that flow through one side of a pair.
//! - [`relay`]: [`Pair`], [`Side`], [`Endpoint`], the hand-off API the control plane calls,
//!   plus the tokio relay loop with backpressure, half-close propagation and byte counters.
//! - [`engine`]: [`Engine`], which runs plain TCP pairs on thread-per-core io_uring or epoll
//!   event loops (zero-copy splice through pooled pipes when no transform applies) and every
//!   other pair on tokio.
//! - [`limit`]: [`RateLimiter`], the lock-free token bucket behind `bandwidthLimit`, consulted
//!   once per chunk by every engine.
//! - [`sys`]: the small, tested wrappers around every system call the engines make.
//!
//! The control plane never touches a pair's bytes after the hand-off.

pub mod engine;
pub mod limit;
pub mod relay;
pub mod sys;
pub mod transform;
pub mod trim;

#[cfg(test)]
mod testutil;

pub use engine::{Engine, EngineConfig, EngineKind, EngineStats};
pub use limit::{Grant, RateLimiter};
pub use relay::{
    AsyncStream, AsyncWriteHalf, Chunk, ChunkRead, Counters, Endpoint, Filled, HostedRelay, Pair,
    ReadInto, RelayHost, Side, SplitTls, TlsParts,
};
pub use transform::{Transform, TransformError};
