//! The relay engine: thread-per-core event loops (io_uring or epoll) for plain TCP pairs, the
//! tokio relay for everything else.
//!
//! `Engine::new` starts `threads` core threads. Each core owns the pairs it is given for their
//! whole life: their sockets, their state, the pipes of its [`pipes::PipePool`]. A pair whose
//! two endpoints are [`Endpoint::Tcp`] is turned into raw non-blocking fds and sent to the
//! least-loaded core over a channel, followed by an eventfd wake-up. A pair with an
//! [`Endpoint::Stream`] side (TLS, yamux) stays on the caller's tokio runtime and runs
//! [`relay`](crate::relay::relay) there.
//!
//! See `dataplane/README.md` for the design and the measurements behind the defaults.

mod core;
mod pair;
mod pipes;

#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::task::{Context, Poll};

use crate::relay::{Endpoint, Pair, Side, relay};
use crate::sys;
use crate::transform::Transform;

use self::core::{CoreShared, Incoming};

/// Which engine moves the bytes of plain TCP pairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    /// io_uring when the kernel offers it and allows it, epoll otherwise.
    #[default]
    Auto,
    /// io_uring readiness (multishot poll) + `splice(2)`/`recv`/`send` on core threads. Falls
    /// back to epoll (with a warning) when io_uring cannot be set up.
    IoUring,
    /// epoll (edge-triggered) + `splice(2)`/`recv`/`send` on core threads.
    Epoll,
    /// One tokio task per pair on the caller's runtime: the original relay, kept as a
    /// baseline.
    Tokio,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Auto => "auto",
            EngineKind::IoUring => "io_uring",
            EngineKind::Epoll => "epoll",
            EngineKind::Tokio => "tokio",
        })
    }
}

/// Default number of pipes each core may own.
pub const DEFAULT_PIPE_POOL_SIZE: usize = 64;
/// Default capacity asked of each pooled pipe (`F_SETPIPE_SZ`).
pub const DEFAULT_PIPE_SIZE: usize = 1024 * 1024;

/// Engine settings (the `[dataplane]` table of frps.toml / frpc.toml).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Number of core threads; 0 = one per CPU.
    pub threads: usize,
    /// Which engine to run (default: [`EngineKind::Auto`]).
    pub engine: EngineKind,
    /// Pipes per core for zero-copy splicing; 0 disables splicing (every pair copies).
    pub pipe_pool_size: usize,
    /// Capacity asked of each pipe, in bytes (rounded up to a power-of-two number of pages by
    /// the kernel; kept at the kernel's default when the request is refused).
    pub pipe_size: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            threads: 0,
            engine: EngineKind::Auto,
            pipe_pool_size: DEFAULT_PIPE_POOL_SIZE,
            pipe_size: DEFAULT_PIPE_SIZE,
        }
    }
}

/// Totals over all cores, for tests, metrics and the README's measurements. Pairs run by the
/// tokio relay count only in `tokio_pairs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Pairs handed to core threads.
    pub pairs_started: u64,
    /// Pairs currently owned by core threads.
    pub pairs_live: u64,
    /// Core pairs that ended on an error (reset, transform error, …).
    pub pairs_failed: u64,
    /// Pairs run as tokio tasks (a `Stream` side, or [`EngineKind::Tokio`]).
    pub tokio_pairs: u64,
    /// Bytes moved socket → pipe → socket without a copy through user space.
    pub splice_bytes: u64,
    /// Wire bytes written from user-space buffers (prefixes, transformed data, pool misses).
    pub copy_bytes: u64,
    /// Times a flow wanted a pipe and got none (pool empty or pipe creation refused) and
    /// copied instead.
    pub pipe_pool_misses: u64,
    /// Pipes created (all cores, since start).
    pub pipes_created: u64,
    /// Pipe creations or resizes the kernel refused (EMFILE, ENOMEM, EPERM, …).
    pub pipe_errors: u64,
    /// Pipes currently held by flows.
    pub pipes_in_use: u64,
}

/// Why [`choose_engine`] chose what it chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineChoice {
    pub kind: EngineKind,
    pub reason: String,
}

/// Picks the engine to run from the configured one, the `io_uring_disabled` sysctl (`None`:
/// the file does not exist) and the result of trying `io_uring_setup`. Pure, so the fallback
/// rules are unit-tested with simulated failures.
pub fn choose_engine(
    requested: EngineKind,
    disabled_sysctl: Option<u32>,
    probe: impl FnOnce() -> io::Result<()>,
) -> EngineChoice {
    let choice = |kind, reason: String| EngineChoice { kind, reason };
    match requested {
        EngineKind::Tokio => return choice(EngineKind::Tokio, "configured".into()),
        EngineKind::Epoll => return choice(EngineKind::Epoll, "configured".into()),
        EngineKind::IoUring | EngineKind::Auto => {}
    }
    let why = if requested == EngineKind::IoUring {
        "configured"
    } else {
        "available"
    };
    if let Some(n @ 1..) = disabled_sysctl {
        return choice(
            EngineKind::Epoll,
            format!("io_uring disabled by kernel.io_uring_disabled = {n}"),
        );
    }
    match probe() {
        Ok(()) => choice(EngineKind::IoUring, why.into()),
        Err(e) => {
            let reason = match e.raw_os_error() {
                Some(libc::ENOSYS) => "io_uring not supported by this kernel (ENOSYS)".into(),
                Some(libc::EPERM) => "io_uring forbidden (EPERM: seccomp or sysctl)".into(),
                _ => format!("io_uring setup failed: {e}"),
            };
            choice(EngineKind::Epoll, reason)
        }
    }
}

/// Tries to set up a small ring and checks the opcodes the engine needs.
fn probe_io_uring() -> io::Result<()> {
    let mut ring = sys::uring::Ring::new(8)?;
    if ring.supports_engine_ops()? && ring.supports_multishot_poll()? {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(libc::ENOSYS))
    }
}

/// The relay engine. Cheap to clone; `spawn` hands a pair over for good.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: EngineConfig,
    kind: EngineKind,
    cores: Vec<CoreHandle>,
    next: AtomicUsize,
    tokio_pairs: AtomicU64,
}

struct CoreHandle {
    tx: mpsc::Sender<Incoming>,
    shared: Arc<CoreShared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channels tells each core to exit once its last pair is done; the wake
        // makes it notice.
        for core in self.cores.drain(..) {
            let CoreHandle { tx, shared } = core;
            drop(tx);
            if let Err(e) = sys::eventfd_signal(shared.wake.as_fd()) {
                tracing::warn!(error = %e, "dataplane: cannot wake a core to stop it");
            }
        }
    }
}

impl Engine {
    /// Starts the engine: picks the kind (logged once, at info level, with the reason) and
    /// starts the core threads.
    pub fn new(cfg: EngineConfig) -> Engine {
        let choice = choose_engine(cfg.engine, sys::io_uring_disabled_sysctl(), probe_io_uring);
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let (kind, reason, cores) = match choice.kind {
            EngineKind::Tokio => (EngineKind::Tokio, choice.reason, Vec::new()),
            EngineKind::IoUring => match start_cores(&cfg, threads, EngineKind::IoUring) {
                Ok(cores) => (EngineKind::IoUring, choice.reason, cores),
                Err(e) => {
                    tracing::warn!(error = %e, "dataplane: io_uring core setup failed; using epoll");
                    start_or_tokio(&cfg, threads, format!("io_uring ring setup failed: {e}"))
                }
            },
            _ => start_or_tokio(&cfg, threads, choice.reason),
        };
        if cfg.engine == EngineKind::IoUring && kind != EngineKind::IoUring {
            tracing::warn!(%reason, "dataplane: io_uring was configured but is not available");
        }
        tracing::info!(
            engine = %kind,
            threads = cores.len(),
            pipe_pool_size = cfg.pipe_pool_size,
            pipe_size = cfg.pipe_size,
            %reason,
            "dataplane engine started"
        );
        Engine {
            inner: Arc::new(Inner {
                cfg,
                kind,
                cores,
                next: AtomicUsize::new(0),
                tokio_pairs: AtomicU64::new(0),
            }),
        }
    }

    /// The settings this engine was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.cfg
    }

    /// The engine actually running plain TCP pairs (never [`EngineKind::Auto`]).
    pub fn kind(&self) -> EngineKind {
        self.inner.kind
    }

    /// Totals over all cores.
    pub fn stats(&self) -> EngineStats {
        let mut s = EngineStats {
            tokio_pairs: self.inner.tokio_pairs.load(Ordering::Relaxed),
            ..EngineStats::default()
        };
        for core in &self.inner.cores {
            core.shared.stats.add_to(&mut s);
            s.pairs_live += core.shared.live.load(Ordering::Relaxed) as u64;
        }
        s
    }

    /// Hands `pair` to the data plane. The pair lives until both directions end or one fails;
    /// its outcome is logged at debug level (and visible through `pair.counters`).
    ///
    /// Cheap and non-blocking. Pairs of two plain TCP sockets go to a core thread and need no
    /// runtime; other pairs run as a tokio task and must be spawned from within a tokio
    /// runtime.
    pub fn spawn(&self, pair: Pair) {
        if self.inner.cores.is_empty() {
            return self.spawn_tokio(pair);
        }
        let Pair {
            a,
            b,
            counters,
            limiter,
        } = pair;
        // A core carries plain TCP sockets and TLS over them; a pair with any other side
        // (a yamux stream, a QUIC stream, TLS over a proxy tunnel) stays on tokio whole.
        let on_core = |e: &Endpoint| matches!(e, Endpoint::Tcp(_) | Endpoint::Tls(_));
        if !(on_core(&a.endpoint) && on_core(&b.endpoint)) {
            return self.spawn_tokio(Pair {
                a,
                b,
                counters,
                limiter,
            });
        }
        match (CoreSide::take(a), CoreSide::take(b)) {
            (Ok(a), Ok(b)) => self.spawn_core(Incoming {
                a,
                b,
                counters,
                limiter,
            }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(error = %e, "dataplane: cannot take over a TCP socket; pair closed");
            }
        }
    }

    fn spawn_core(&self, incoming: Incoming) {
        let cores = &self.inner.cores;
        // Least loaded, ties broken round robin.
        let start = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let core = (0..cores.len())
            .map(|i| &cores[(start + i) % cores.len()])
            .min_by_key(|c| c.shared.load())
            .expect("at least one core");
        core.shared.queued.fetch_add(1, Ordering::Relaxed);
        if core.tx.send(incoming).is_err() {
            core.shared.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("dataplane: core thread is gone; pair closed");
            return;
        }
        if let Err(e) = sys::eventfd_signal(core.shared.wake.as_fd()) {
            tracing::error!(error = %e, "dataplane: cannot wake core thread");
        }
    }

    /// Pairs with a non-TCP side run on tokio: inside the task their side's reader comes
    /// from when it offers to host them (a yamux session's driver), else as a task of their
    /// own.
    fn spawn_tokio(&self, pair: Pair) {
        self.inner.tokio_pairs.fetch_add(1, Ordering::Relaxed);
        let host = [&pair.a, &pair.b]
            .into_iter()
            .find_map(|side| match &side.endpoint {
                Endpoint::Halves { read, .. } => read.relay_host(),
                _ => None,
            });
        match host {
            Some(host) => {
                if let Err(relay) = host.host(Box::pin(LogOutcome(relay(pair)))) {
                    tokio::spawn(relay);
                }
            }
            None => {
                tokio::spawn(LogOutcome(relay(pair)));
            }
        }
    }
}

/// Logs how the relay ended (a wrapper, not an async block: it adds no state to the task).
struct LogOutcome(crate::relay::Relay);

impl Future for LogOutcome {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|outcome| outcome.log())
    }
}

fn start_or_tokio(
    cfg: &EngineConfig,
    threads: usize,
    reason: String,
) -> (EngineKind, String, Vec<CoreHandle>) {
    match start_cores(cfg, threads, EngineKind::Epoll) {
        Ok(cores) => (EngineKind::Epoll, reason, cores),
        Err(e) => {
            tracing::error!(error = %e, "dataplane: epoll core setup failed; using the tokio relay");
            (
                EngineKind::Tokio,
                format!("epoll core setup failed: {e}"),
                Vec::new(),
            )
        }
    }
}

/// Starts the core threads. Each creates its own poller (an io_uring ring is set up for the
/// one thread that submits to it, see `sys::uring::Ring::new`) and reports back before this
/// returns, so a setup failure is an error here; cores already started then see their channel
/// close and exit.
fn start_cores(
    cfg: &EngineConfig,
    threads: usize,
    kind: EngineKind,
) -> io::Result<Vec<CoreHandle>> {
    let mut cores = Vec::with_capacity(threads);
    for i in 0..threads {
        let shared = Arc::new(CoreShared::new(sys::eventfd()?));
        let (tx, rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let core_shared = shared.clone();
        let core_cfg = cfg.clone();
        std::thread::Builder::new()
            .name(format!("dp-core-{i}"))
            .spawn(move || {
                let poller = match kind {
                    EngineKind::IoUring => core::Poller::uring(),
                    _ => core::Poller::epoll(),
                };
                match poller {
                    Ok(poller) => {
                        let _ = ready_tx.send(Ok(()));
                        core::Core::new(poller, rx, core_shared, &core_cfg).run();
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })?;
        ready_rx.recv().map_err(|_| {
            io::Error::other(format!("dataplane core thread {i} exited during setup"))
        })??;
        cores.push(CoreHandle { tx, shared });
    }
    Ok(cores)
}

fn tcp_into_fd(tcp: tokio::net::TcpStream) -> io::Result<OwnedFd> {
    // The cores depend on non-blocking sockets: `into_std` documents that it returns the
    // socket in non-blocking mode (tokio never clears O_NONBLOCK), so no extra `ioctl` per
    // socket here (two per pair, measured in the new-connection path).
    Ok(OwnedFd::from(tcp.into_std()?))
}

/// One side of a pair as a core owns it.
pub(crate) struct CoreSide {
    pub fd: OwnedFd,
    pub prefix: bytes::Bytes,
    pub inbound: Vec<Box<dyn Transform>>,
    pub outbound: Vec<Box<dyn Transform>>,
    pub initial_write: bytes::Bytes,
    /// TLS over the socket: `inbound[0]` opens its records (the prefix, already
    /// opened, skips it) and the last of `outbound` seals them.
    pub tls: bool,
}

impl CoreSide {
    /// Takes a [`Endpoint::Tcp`] or [`Endpoint::Tls`] side over.
    fn take(side: Side) -> io::Result<Self> {
        let Side {
            endpoint,
            prefix,
            mut inbound,
            mut outbound,
            initial_write,
        } = side;
        match endpoint {
            Endpoint::Tcp(tcp) => Ok(CoreSide {
                fd: tcp_into_fd(tcp)?,
                prefix,
                inbound,
                outbound,
                initial_write,
                tls: false,
            }),
            Endpoint::Tls(stream) => {
                let crate::relay::TlsParts {
                    io: tcp,
                    opened,
                    owed,
                    open,
                    mut seal,
                } = stream.into_parts();
                let fd = tcp_into_fd(tcp)?;
                // Read ahead by the control plane first, then what the layer opened after.
                let prefix = match (prefix.is_empty(), opened.is_empty()) {
                    (_, true) => prefix,
                    (true, false) => opened,
                    (false, false) => [&prefix[..], &opened[..]].concat().into(),
                };
                // What the layer owes the socket, then the side's first words, sealed.
                let mut first = owed.to_vec();
                if !initial_write.is_empty() {
                    seal.transform(&initial_write, &mut first)
                        .map_err(io::Error::other)?;
                }
                inbound.insert(0, open);
                outbound.push(seal);
                Ok(CoreSide {
                    fd,
                    prefix,
                    inbound,
                    outbound,
                    initial_write: first.into(),
                    tls: true,
                })
            }
            Endpoint::Stream(_) | Endpoint::Halves { .. } => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "not a TCP socket",
            )),
        }
    }
}
