//! tcpMux: yamux compatible with fatedier/yamux (hashicorp/yamux protocol v0), spec §2.4.
//!
//! - [`connection`]: the sans-IO session core ([`Connection`]): frames in, frames out, events,
//!   no sockets and no clock. Two cores can be paired in memory for tests.
//! - [`driver`]: the tokio driver: [`session`] spawns one task that owns the socket and the
//!   core; [`Session`], [`Incoming`] and [`Stream`] are handles sharing the core with it.
//! - `frame`: the 12-byte header.
//!
//! frpc is the yamux client (odd stream ids), frps the server (even ids); both use
//! [`Config::frp`].
//!
//! Differences from the Go library, none of which a Go peer can trip over:
//! - incoming streams are ACKed when their SYN arrives, not on `Accept`;
//! - `Session::close` sends GoAway(normal) before closing the socket; protocol errors on
//!   version/type send GoAway(protocol error) too (Go just drops the connection);
//! - a dropped stream behaves as a closed TCP socket: FIN, or RST when it held unread data
//!   or data arrives for it afterwards (Go buffers that data until the window is full and
//!   sends RST after its 5-minute `StreamCloseTimeout`); a relay that fails resets its
//!   streams; there is no 75 s `StreamOpenTimeout` (an unACKed open just waits);
//! - the driver ends the session when the socket accepts no byte for
//!   `connection_write_timeout` (Go fails the individual write instead);
//! - each side's first frame is a ping with the opaque value "frpu" (`0x66727075`), which a
//!   Go peer simply answers. It tells another frp-uring that our FIN is a half-close (we go
//!   on reading); from a peer that never sent it (Go), a FIN means `Stream.Close`, after
//!   which Go reads nothing more, so our writes to that stream fail at once (as frp's join
//!   would close both ends) instead of filling Go's window and stalling for its 5-minute
//!   close timeout;
//! - keepalive pings are spaced `keepalive_interval` from the previous ping, not from its
//!   answer; there are no per-stream read/write deadlines.

pub mod connection;
pub mod driver;
mod frame;

use std::io;
use std::time::Duration;

pub use connection::{Connection, Event, Received};
pub use driver::{Acceptor, Incoming, Session, Stream, StreamReadHalf, session};
pub use frame::{
    GO_AWAY_INTERNAL_ERROR, GO_AWAY_NORMAL, GO_AWAY_PROTOCOL_ERROR, INITIAL_STREAM_WINDOW,
};

/// Which side of the session we are: the client opens odd stream ids, the server even ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Client,
    Server,
}

/// Session settings (Go's `yamux.Config`, minus what is not implemented).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Incoming streams not yet accepted beyond this are reset. Also bounds how many opened
    /// streams may await their ACK at once.
    pub accept_backlog: usize,
    /// Ping the peer this often; `None` disables keepalive.
    pub keepalive_interval: Option<Duration>,
    /// A keepalive ping unanswered for this long ends the session ("keepalive timeout"); the
    /// driver also ends it when the socket accepts no bytes for this long.
    pub connection_write_timeout: Duration,
    /// Receive window per stream (at least [`INITIAL_STREAM_WINDOW`]).
    pub max_stream_window: u32,
}

impl Config {
    /// frp's settings: backlog 256, write timeout 10 s, 6 MiB windows, keepalive every
    /// `keepalive_secs` (`transport.tcpMuxKeepaliveInterval`; ≤ 0 disables it).
    pub fn frp(keepalive_secs: i64) -> Self {
        Config {
            accept_backlog: 256,
            keepalive_interval: (keepalive_secs > 0)
                .then(|| Duration::from_secs(keepalive_secs as u64)),
            connection_write_timeout: Duration::from_secs(10),
            max_stream_window: 6 * 1024 * 1024,
        }
    }
}

impl Default for Config {
    /// frp's defaults (keepalive every 30 s).
    fn default() -> Self {
        Config::frp(30)
    }
}

/// Everything that can go wrong in a yamux session or stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamuxError {
    #[error("yamux: protocol error: invalid version {0}")]
    InvalidVersion(u8),
    #[error("yamux: protocol error: invalid message type {0}")]
    InvalidMessageType(u8),
    #[error(
        "yamux: peer exceeded stream receive window (stream {stream}: {len} bytes sent, {window} allowed)"
    )]
    RecvWindowExceeded { stream: u32, window: u32, len: u32 },
    #[error("yamux: protocol error: duplicate stream {0} opened by peer")]
    DuplicateStream(u32),
    #[error("yamux: protocol error: unexpected FIN on stream {0}")]
    UnexpectedFin(u32),
    #[error("yamux: keepalive timeout")]
    KeepaliveTimeout,
    #[error("yamux: connection write timeout (peer accepted no data for too long)")]
    WriteTimeout,
    #[error("yamux: session closed")]
    SessionClosed,
    #[error("yamux: connection closed by peer")]
    ConnectionEof,
    #[error("yamux: i/o error: {message}")]
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    #[error("yamux: peer sent GoAway, not accepting new streams")]
    RemoteGoAway,
    #[error("yamux: peer reported a protocol error (GoAway)")]
    RemoteProtocolError,
    #[error("yamux: peer reported an internal error (GoAway)")]
    RemoteInternalError,
    #[error("yamux: peer sent unexpected GoAway code {0}")]
    UnexpectedGoAway(u32),
    #[error("yamux: stream reset")]
    StreamReset,
    #[error("yamux: stream closed for writing")]
    StreamClosed,
    #[error("yamux: stream closed by peer")]
    PeerClosed,
    #[error("yamux: stream ids exhausted")]
    StreamsExhausted,
    #[error("yamux: unknown stream {0}")]
    UnknownStream(u32),
}

impl YamuxError {
    pub(crate) fn io(err: &io::Error) -> Self {
        YamuxError::Io {
            kind: err.kind(),
            message: err.to_string(),
        }
    }

    /// A normal end of session (not worth a warning).
    pub fn is_normal_close(&self) -> bool {
        matches!(self, YamuxError::SessionClosed | YamuxError::ConnectionEof)
    }
}

impl From<YamuxError> for io::Error {
    fn from(err: YamuxError) -> io::Error {
        let kind = match &err {
            YamuxError::Io { kind, .. } => *kind,
            YamuxError::StreamReset => io::ErrorKind::ConnectionReset,
            YamuxError::StreamClosed | YamuxError::PeerClosed => io::ErrorKind::BrokenPipe,
            YamuxError::KeepaliveTimeout | YamuxError::WriteTimeout => io::ErrorKind::TimedOut,
            YamuxError::ConnectionEof => io::ErrorKind::UnexpectedEof,
            YamuxError::InvalidVersion(_)
            | YamuxError::InvalidMessageType(_)
            | YamuxError::RecvWindowExceeded { .. }
            | YamuxError::DuplicateStream(_)
            | YamuxError::UnexpectedFin(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::ConnectionAborted,
        };
        io::Error::new(kind, err)
    }
}
