//! The data plane: moves tunnel bytes between the two ends of a *pair* once the control plane
//! has matched them (frps: user connection ↔ work connection; frpc: work connection ↔ local
//! service).
//!
//! # Layout
//! - [`transform`]: the [`Transform`] trait — a sans-IO byte transform (decrypt, decompress, …)
//!   applied to the bytes that flow through one side of a pair.
//! - [`relay`]: [`Pair`], [`Side`], [`Endpoint`] and [`Engine`], the hand-off API the control
//!   plane calls, plus the relay loop with backpressure, half-close propagation and byte counters.
//!
//! The control plane never touches a pair's bytes after the hand-off.

pub mod relay;
pub mod transform;

pub use relay::{AsyncStream, Counters, Endpoint, Engine, EngineConfig, Pair, Side};
pub use transform::{Transform, TransformError};
