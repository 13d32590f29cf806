//! frp's control plane: wire messages and codecs, authentication, crypto streams, config,
//! TLS and yamux session setup, and the frps/frpc runtimes (login, heartbeats, proxy
//! registration, work-connection pools).
//!
//! # Layout
//! - [`msg`]: the 18 frp messages with Go's exact JSON shapes, and the v1 codec (sans-IO).
//! - [`wire_v2`]: wire protocol v2 (sans-IO): magic, frames, the v2 codec, the Hello exchange
//!   and the control channel's AEAD key schedule.
//! - [`auth`]: token auth — `privilege_key = md5_hex(token + timestamp)`, constant-time checks.
//! - [`crypto`]: AES-128-CFB streams (control channel and `useEncryption`) and snappy framing
//!   (`useCompression`), as sans-IO [`dataplane::Transform`]s.
//! - [`yamux`]: tcpMux — a sans-IO yamux core compatible with fatedier/yamux, and its tokio driver.
//! - [`config`]: frps.toml / frpc.toml (TOML, YAML, JSON), strict parsing, templating, defaults.
//! - [`tls`]: rustls client/server configs, the self-signed certificate, frp's first-byte rules.
//! - [`kcp`]: the KCP transport (kcp-go v5 compatible, FEC 10+3): sans-IO segment, ARQ and
//!   FEC cores, and the tokio stream, dialer and listener.
//! - [`transport`]: dialing frps and accepting on `bindPort` (sniffing, TLS, tcpMux) down to
//!   *logical connections*.
//! - [`layered`]: an async stream seen through a work connection's encryption/compression
//!   layers (frps' HTTP vhost speaks HTTP through it).
//! - [`msgconn`]: a logical connection that reads and writes frp messages in wire protocol v1
//!   or v2, encrypted or not.
//! - [`handshake`]: the opening exchange of a logical connection on both sides: v1/v2
//!   detection, the v2 Hello exchange, Login/LoginResp, switching the control channel's cipher.
//! - [`log`]: frp-shaped log lines on the console or in a file.
//! - [`proxy_protocol`]: the PROXY protocol v1/v2 headers frpc writes to local services.
//! - [`server`]: the frps runtime. [`client`]: the frpc runtime.
//! - [`listen`]: TCP listeners with Go's backlog and error words.
//! - [`web`]: the `webServer` plumbing (hyper, Basic auth, frp's JSON responses) shared by
//!   [`admin`] (frpc's admin API, `frpc reload|status|stop`) and [`dashboard`] (frps'
//!   dashboard API, web page and Prometheus `/metrics`).

pub mod admin;
pub mod auth;
pub mod client;
pub mod config;
pub mod crypto;
pub mod dashboard;
pub mod handshake;
pub mod kcp;
pub mod layered;
pub mod listen;
pub mod log;
pub mod msg;
pub mod msgconn;
pub mod proxy_protocol;
pub mod server;
pub mod tls;
pub mod transport;
pub mod web;
pub mod wire_v2;
pub mod yamux;

#[cfg(test)]
pub(crate) mod test_alloc;

/// The frp version this implementation speaks and reports (Login.version, LoginResp.version).
pub const FRP_VERSION: &str = "0.70.0";
