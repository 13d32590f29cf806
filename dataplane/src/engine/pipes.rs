//! A core's bounded pool of pipes for splicing.
//!
//! A flow takes a pipe only when it has bytes to move and gives it back (empty) as soon as its
//! source runs dry, so idle pairs hold none. At most `limit` pipes exist per core; when none is
//! free, or the kernel refuses a new one (fd limits, `pipe-user-pages-soft`, memory), the flow
//! copies through the core's buffer instead.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;

use super::core::CoreStats;
use crate::sys;

/// Below this capacity a pipe costs more syscalls than it saves: treat it as a refusal.
/// (An unprivileged user over `pipe-user-pages-soft` gets one-page pipes.)
const MIN_PIPE: usize = 16 * 1024;

/// A non-blocking pipe owned by one flow at a time.
#[derive(Debug)]
pub(crate) struct Pipe {
    pub read: OwnedFd,
    pub write: OwnedFd,
    /// Capacity in bytes: the most one splice into it moves.
    pub cap: usize,
}

impl Pipe {
    /// Creates a pipe and asks for `size` bytes of capacity; a refused resize keeps the
    /// kernel's default size (counted in `pipe_errors`).
    pub fn create(size: usize, stats: &CoreStats) -> io::Result<Pipe> {
        let (read, write) = sys::pipe()?;
        let cap = match sys::set_pipe_size(write.as_fd(), size) {
            Ok(cap) => cap,
            Err(e) => {
                stats.pipe_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, size, "dataplane: F_SETPIPE_SZ refused; default size kept");
                sys::pipe_size(write.as_fd())?
            }
        };
        Ok(Pipe { read, write, cap })
    }
}

pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// Pipes in existence (free or held), at most `limit`.
    live: usize,
    limit: usize,
    size: usize,
    /// The kernel refused the last creation: don't retry until a pipe comes back or dies.
    refused: bool,
}

impl PipePool {
    pub fn new(limit: usize, size: usize) -> PipePool {
        PipePool {
            free: Vec::new(),
            live: 0,
            limit,
            size,
            refused: false,
        }
    }

    /// Whether this pool can ever hand out a pipe.
    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    /// A free pipe, a new one, or `None` (the flow copies instead).
    pub fn take(&mut self, stats: &CoreStats) -> Option<Pipe> {
        if let Some(pipe) = self.free.pop() {
            stats.pipes_in_use.fetch_add(1, Ordering::Relaxed);
            return Some(pipe);
        }
        if self.live >= self.limit || self.refused {
            stats.pipe_pool_misses.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        match Pipe::create(self.size, stats) {
            Ok(pipe) if pipe.cap >= MIN_PIPE => {
                self.live += 1;
                stats.pipes_created.fetch_add(1, Ordering::Relaxed);
                stats.pipes_in_use.fetch_add(1, Ordering::Relaxed);
                Some(pipe)
            }
            Ok(small) => {
                tracing::debug!(
                    cap = small.cap,
                    "dataplane: kernel gave a tiny pipe (pipe-user-pages-soft?); copying instead"
                );
                self.refused = true;
                stats.pipe_pool_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "dataplane: pipe creation refused; copying instead");
                self.refused = true;
                stats.pipe_errors.fetch_add(1, Ordering::Relaxed);
                stats.pipe_pool_misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Gives back a pipe: kept when empty, closed when it still holds bytes (an aborted flow).
    pub fn put(&mut self, pipe: Pipe, empty: bool, stats: &CoreStats) {
        stats.pipes_in_use.fetch_sub(1, Ordering::Relaxed);
        self.refused = false;
        if empty {
            self.free.push(pipe);
        } else {
            self.live -= 1;
            drop(pipe);
        }
    }

    #[cfg(test)]
    pub fn free_count(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_is_bounded_and_reuses_pipes() {
        let stats = CoreStats::default();
        let mut pool = PipePool::new(2, 128 * 1024);
        let p1 = pool.take(&stats).expect("first pipe");
        assert!(p1.cap >= 128 * 1024, "cap {}", p1.cap);
        let p2 = pool.take(&stats).expect("second pipe");
        assert!(pool.take(&stats).is_none(), "limit is 2");
        assert_eq!(stats.pipe_pool_misses.load(Ordering::Relaxed), 1);
        assert_eq!(stats.pipes_in_use.load(Ordering::Relaxed), 2);
        pool.put(p1, true, &stats);
        assert_eq!(pool.free_count(), 1);
        let again = pool.take(&stats).expect("reused");
        assert_eq!(
            stats.pipes_created.load(Ordering::Relaxed),
            2,
            "no new pipe"
        );
        // A pipe returned with bytes in it is closed, which frees room for a new one.
        pool.put(again, false, &stats);
        assert_eq!(pool.free_count(), 0);
        assert!(pool.take(&stats).is_some());
        assert_eq!(stats.pipes_created.load(Ordering::Relaxed), 3);
        pool.put(p2, true, &stats);
    }

    #[test]
    fn disabled_pool_never_hands_out_a_pipe() {
        let stats = CoreStats::default();
        let mut pool = PipePool::new(0, 64 * 1024);
        assert!(!pool.enabled());
        assert!(pool.take(&stats).is_none());
        assert_eq!(stats.pipes_created.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn tiny_pipes_count_as_refused() {
        // One-page pipes are what an unprivileged user over pipe-user-pages-soft gets.
        let stats = CoreStats::default();
        let mut pool = PipePool::new(4, 4096);
        assert!(pool.take(&stats).is_none(), "a 4 KiB pipe is refused");
        assert_eq!(stats.pipe_pool_misses.load(Ordering::Relaxed), 1);
        assert_eq!(stats.pipes_created.load(Ordering::Relaxed), 0);
        // Refused: no new attempt (no syscall storm) until a pipe comes back.
        assert!(pool.take(&stats).is_none());
        assert_eq!(stats.pipe_pool_misses.load(Ordering::Relaxed), 2);
    }
}
