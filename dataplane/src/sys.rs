//! Thin, tested wrappers around the Linux system calls the engines use.
//!
//! Every `unsafe` call into libc or io_uring in this crate lives here, behind a function that
//! takes owned or borrowed file descriptors and returns `io::Result`. The engines above never
//! see a raw errno or a raw pointer.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Turns a libc return value (`-1` + errno on failure) into an `io::Result`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Same as [`cvt`] for calls returning `ssize_t`.
fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Retries a call interrupted by a signal.
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// eventfd
// ---------------------------------------------------------------------------------------------

/// A non-blocking eventfd used to wake a core thread.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes no pointers; on success it returns a fresh fd that we own.
    let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds one to an eventfd's counter (wakes whoever polls it).
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live local u64 to a valid fd.
    let n =
        retry(|| cvt_size(unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) }));
    match n {
        Ok(_) => Ok(()),
        // The counter is saturated: the reader is going to wake anyway.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads and resets an eventfd's counter; `Ok(0)` when it was already zero.
pub fn eventfd_drain(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live local u64 from a valid fd.
    let n =
        retry(|| cvt_size(unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) }));
    match n {
        Ok(_) => Ok(v),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------------------------
// epoll
// ---------------------------------------------------------------------------------------------

/// An epoll instance.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// One readiness event: the token given at registration and the `EPOLL*` bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub token: u64,
    pub events: u32,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: no pointers; returns a fresh fd we own.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
        Ok(Epoll {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Registers `fd` for `events` (`EPOLLIN | EPOLLET | …`), reported with `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live local; both fds are valid for the call.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })?;
        Ok(())
    }

    /// Removes `fd` (closing the fd also removes it when it has no duplicates).
    pub fn delete(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: a null event pointer is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        cvt(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Waits up to `timeout` (`None` = forever) and replaces `out`'s contents with the events.
    /// `out`'s capacity (at least 1) bounds how many are returned.
    pub fn wait(&self, out: &mut Vec<Event>, timeout: Option<Duration>) -> io::Result<()> {
        let cap = out.capacity().max(1);
        let mut raw: Vec<libc::epoll_event> = Vec::with_capacity(cap);
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
        // SAFETY: `raw` has room for `cap` events; the kernel writes at most `cap` of them and
        // returns how many, which we then mark initialized.
        let n = match cvt(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), raw.as_mut_ptr(), cap as i32, ms)
        }) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        // SAFETY: the kernel initialized the first `n <= cap` entries.
        unsafe { raw.set_len(n) };
        out.clear();
        out.extend(raw.iter().map(|e| Event {
            token: e.u64,
            events: e.events,
        }));
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// pipes and splice
// ---------------------------------------------------------------------------------------------

/// A non-blocking pipe: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a live array of two ints, as pipe2 requires.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) })?;
    // SAFETY: both fds were just created by the kernel and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Asks for a pipe capacity of `size` bytes (`F_SETPIPE_SZ`) and returns what the kernel set.
/// Fails with EPERM above `pipe-max-size` or over `pipe-user-pages-hard`, EBUSY when the pipe
/// holds more than `size`.
pub fn set_pipe_size(fd: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
    // SAFETY: F_SETPIPE_SZ takes an int argument; no pointers.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, size) })? as usize)
}

/// The pipe's capacity in bytes (`F_GETPIPE_SZ`).
pub fn pipe_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument.
    Ok(cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETPIPE_SZ) })? as usize)
}

/// `splice(2)` of up to `len` bytes from `from` to `to` (one of them a pipe), never blocking
/// on the pipe (`SPLICE_F_NONBLOCK`; the sockets are non-blocking themselves).
/// `Ok(0)` from a socket means EOF.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    retry(|| {
        // SAFETY: null offsets are valid (pipes and sockets have no offset); fds are valid.
        cvt_size(unsafe {
            libc::splice(
                from.as_raw_fd(),
                std::ptr::null_mut(),
                to.as_raw_fd(),
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
            )
        })
    })
}

// ---------------------------------------------------------------------------------------------
// sockets
// ---------------------------------------------------------------------------------------------

/// `recv(2)` into `buf`; `Ok(0)` means EOF.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is a live, writable slice of `buf.len()` bytes.
        cvt_size(unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) })
    })
}

/// `send(2)` of `buf` without raising SIGPIPE on a closed peer.
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: `buf` is a live slice of `buf.len()` bytes.
        cvt_size(unsafe {
            libc::send(
                fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        })
    })
}

/// Half-closes a socket: the peer reads EOF, this side can still read.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: no pointers; the fd is valid.
    cvt(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) })?;
    Ok(())
}

/// Sets or clears `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL takes no argument.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    let new = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        // SAFETY: F_SETFL takes an int argument.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, new) })?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// process and thread state
// ---------------------------------------------------------------------------------------------

/// Blocks SIGPIPE in the calling thread: `splice(2)` into a socket whose peer is gone raises it
/// (there is no `MSG_NOSIGNAL` for splice). A blocked SIGPIPE stays pending on the thread and
/// harms nothing; the call still fails with EPIPE.
pub fn block_sigpipe() -> io::Result<()> {
    // SAFETY: `set` is a live local sigset_t, initialized by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// User and system CPU time used by the whole process so far.
pub fn process_cpu_time() -> io::Result<(Duration, Duration)> {
    // SAFETY: `usage` is a live local that getrusage fills in.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        cvt(libc::getrusage(libc::RUSAGE_SELF, &mut usage))?;
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Ok((tv(usage.ru_utime), tv(usage.ru_stime)))
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (what Go programs, frp's included, do at
/// start): a server with thousands of clients needs more descriptors than the usual 1024.
/// Returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: `lim` is a live local that getrlimit fills in and setrlimit reads.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        cvt(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            cvt(libc::setrlimit(libc::RLIMIT_NOFILE, &lim))?;
        }
        Ok(lim.rlim_cur as u64)
    }
}

/// Resident set size of this process in bytes (from `/proc/self/statm`).
pub fn rss_bytes() -> io::Result<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad /proc/self/statm"))?;
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Ok(pages * page.max(4096) as usize)
}

/// `/proc/sys/kernel/io_uring_disabled`: `None` when the file does not exist (kernels before
/// 6.6 have no such switch).
pub fn io_uring_disabled_sysctl() -> Option<u32> {
    parse_sysctl(&std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok()?)
}

fn parse_sysctl(text: &str) -> Option<u32> {
    text.trim().parse().ok()
}

// ---------------------------------------------------------------------------------------------
// io_uring
// ---------------------------------------------------------------------------------------------

/// A small wrapper around an `io_uring` instance with the few operations the engine uses.
pub mod uring {
    use super::*;
    use io_uring::{IoUring, opcode, types};

    /// A completion: the request's user data, its result (`-errno` on failure) and whether
    /// more completions will follow for it (multishot).
    #[derive(Debug, Clone, Copy)]
    pub struct Completion {
        pub user_data: u64,
        pub result: i32,
        pub more: bool,
    }

    pub struct Ring {
        ring: IoUring,
        level: SetupLevel,
    }

    /// How the kernel runs a ring's completion work (see [`Ring::new`]).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum SetupLevel {
        /// `COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER | DEFER_TASKRUN` (Linux 6.1+).
        Deferred,
        /// `COOP_TASKRUN | TASKRUN_FLAG` (Linux 5.19+).
        Cooperative,
        /// No flags.
        Plain,
    }

    impl Ring {
        /// `io_uring_setup` with `entries` submission slots. ENOSYS (no io_uring in the kernel)
        /// and EPERM (seccomp, `io_uring_disabled`) come back as they are.
        ///
        /// The ring is set up for one thread: completions' task work runs only when that thread
        /// enters the kernel, never by interrupting it (`COOP_TASKRUN`, Linux 5.19, with
        /// `TASKRUN_FLAG` so a non-blocking reap still sees pending work), and on 6.1+ it is
        /// deferred to the wait itself (`SINGLE_ISSUER | DEFER_TASKRUN`). Without these, every
        /// readiness event of a multishot poll interrupts the core thread (measured: redis
        /// `-c 64` through the engine at 0.8× epoll's rate, at par with them). **A ring must only
        /// be submitted to from the thread that created it** (others get `EEXIST`). Older
        /// kernels reject the flags with `EINVAL`; then fewer or none are used.
        pub fn new(entries: u32) -> io::Result<Ring> {
            let mut last = None;
            for level in [
                SetupLevel::Deferred,
                SetupLevel::Cooperative,
                SetupLevel::Plain,
            ] {
                match Self::with_level(entries, level) {
                    Ok(ring) => return Ok(ring),
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
                    Err(e) => return Err(e),
                }
            }
            Err(last.expect("at least one level was tried"))
        }

        /// `io_uring_setup` with exactly the flags of `level`.
        pub fn with_level(entries: u32, level: SetupLevel) -> io::Result<Ring> {
            let mut builder = IoUring::builder();
            if level != SetupLevel::Plain {
                builder.setup_coop_taskrun().setup_taskrun_flag();
            }
            if level == SetupLevel::Deferred {
                builder.setup_single_issuer().setup_defer_taskrun();
            }
            Ok(Ring {
                ring: builder.build(entries)?,
                level,
            })
        }

        /// The flags the ring was set up with.
        pub fn level(&self) -> SetupLevel {
            self.level
        }

        /// Whether the kernel knows the opcodes the engine needs (poll with multishot arrived
        /// with the probe interface's era; splice for the measurements).
        pub fn supports_engine_ops(&self) -> io::Result<bool> {
            let mut probe = io_uring::Probe::new();
            self.ring.submitter().register_probe(&mut probe)?;
            Ok(probe.is_supported(opcode::PollAdd::CODE)
                && probe.is_supported(opcode::PollRemove::CODE))
        }

        /// Whether multishot polls work (Linux 5.13+; older kernels fail them with EINVAL):
        /// arms one on a signalled eventfd and checks that it fires and stays armed.
        pub fn supports_multishot_poll(&mut self) -> io::Result<bool> {
            const PROBE: u64 = u64::MAX - 7;
            let fd = eventfd()?;
            eventfd_signal(fd.as_fd())?;
            self.push_poll(fd.as_fd(), libc::EPOLLIN as u32, true, PROBE)?;
            let mut out = Vec::new();
            let mut first = None;
            while first.is_none() {
                self.submit_and_wait(1)?;
                self.reap(&mut out);
                first = out.iter().find(|c| c.user_data == PROBE).copied();
            }
            let c = first.expect("loop ends with a completion");
            let ok = c.result > 0 && c.more;
            if c.more {
                // Disarm it before the eventfd goes away; wait for both completions.
                self.push_poll_remove(PROBE, PROBE - 1)?;
                let mut pending = 2;
                while pending > 0 {
                    self.submit_and_wait(1)?;
                    self.reap(&mut out);
                    pending -= out
                        .iter()
                        .filter(|c| c.user_data == PROBE - 1 || (c.user_data == PROBE && !c.more))
                        .count();
                }
            }
            Ok(ok)
        }

        fn push(&mut self, entry: io_uring::squeue::Entry) -> io::Result<()> {
            loop {
                // SAFETY: every entry built by this module references only file descriptors
                // (no buffers), or buffers the caller keeps alive until completion (see
                // `push_recv` / `push_send`); a stale fd yields EBADF, never memory unsafety.
                let pushed = unsafe { self.ring.submission().push(&entry) };
                match pushed {
                    Ok(()) => return Ok(()),
                    Err(_) => {
                        // Queue full: hand what we have to the kernel and retry.
                        self.ring.submit()?;
                    }
                }
            }
        }

        /// Arms a poll on `fd` for `events` (`EPOLLIN | EPOLLET | …`); `multishot` keeps it
        /// armed across events (Linux 5.13+).
        pub fn push_poll(
            &mut self,
            fd: BorrowedFd<'_>,
            events: u32,
            multishot: bool,
            user_data: u64,
        ) -> io::Result<()> {
            let e = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), events)
                .multi(multishot)
                .build()
                .user_data(user_data);
            self.push(e)
        }

        /// Cancels the poll armed with `target`; the removal itself completes with
        /// `user_data`.
        pub fn push_poll_remove(&mut self, target: u64, user_data: u64) -> io::Result<()> {
            self.push(opcode::PollRemove::new(target).build().user_data(user_data))
        }

        /// `IORING_OP_SPLICE` of up to `len` bytes (one side must be a pipe). The kernel
        /// always runs it on an io-wq worker thread.
        pub fn push_splice(
            &mut self,
            from: BorrowedFd<'_>,
            to: BorrowedFd<'_>,
            len: u32,
            user_data: u64,
        ) -> io::Result<()> {
            let e = opcode::Splice::new(
                types::Fd(from.as_raw_fd()),
                -1,
                types::Fd(to.as_raw_fd()),
                -1,
                len,
            )
            .flags(libc::SPLICE_F_MOVE)
            .build()
            .user_data(user_data);
            self.push(e)
        }

        /// `IORING_OP_RECV` into `buf`.
        ///
        /// # Safety
        /// `buf` must stay alive and untouched until this request's completion is reaped.
        pub unsafe fn push_recv(
            &mut self,
            fd: BorrowedFd<'_>,
            buf: &mut [u8],
            user_data: u64,
        ) -> io::Result<()> {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let e = opcode::Recv::new(types::Fd(fd.as_raw_fd()), buf.as_mut_ptr(), len)
                .build()
                .user_data(user_data);
            self.push(e)
        }

        /// `IORING_OP_SEND` of `buf` (with `MSG_NOSIGNAL`).
        ///
        /// # Safety
        /// `buf` must stay alive and untouched until this request's completion is reaped.
        pub unsafe fn push_send(
            &mut self,
            fd: BorrowedFd<'_>,
            buf: &[u8],
            user_data: u64,
        ) -> io::Result<()> {
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let e = opcode::Send::new(types::Fd(fd.as_raw_fd()), buf.as_ptr(), len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(user_data);
            self.push(e)
        }

        /// Whether `io_uring_enter` takes a timeout (`IORING_FEAT_EXT_ARG`, Linux 5.11+); the
        /// engine's timers need it.
        pub fn supports_wait_timeout(&self) -> bool {
            self.ring.params().is_feature_ext_arg()
        }

        /// Submits the queued requests and waits for at least `want` completions or until
        /// `timeout` has passed (needs [`Ring::supports_wait_timeout`]).
        pub fn submit_and_wait_timeout(
            &mut self,
            want: usize,
            timeout: std::time::Duration,
        ) -> io::Result<()> {
            let ts = types::Timespec::from(timeout);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.submitter().submit_with_args(want, &args) {
                Ok(_) => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::ETIME) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
                Err(e) => Err(e),
            }
        }

        /// Submits the queued requests and waits for at least `want` completions.
        pub fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
            match self.ring.submit_and_wait(want) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
                // EBUSY: the completion queue overflowed; reap, then submit again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(()),
                Err(e) => Err(e),
            }
        }

        /// Moves every available completion into `out` (replacing its contents).
        pub fn reap(&mut self, out: &mut Vec<Completion>) {
            out.clear();
            out.extend(self.ring.completion().map(|c| Completion {
                user_data: c.user_data(),
                result: c.result(),
                more: io_uring::cqueue::more(c.flags()),
            }));
        }
    }
}

#[cfg(test)]
mod tests;
