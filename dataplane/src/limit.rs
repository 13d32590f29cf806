//! A lock-free token bucket for `transport.bandwidthLimit` (spec §6.3).
//!
//! frp uses `golang.org/x/time/rate` with `rate = burst = limit` bytes per second, one limiter
//! per proxy shared by every connection of the proxy and by both directions. [`RateLimiter`]
//! keeps the same model in one atomic: the instant at which the bucket is (or was) empty, in
//! nanoseconds since the limiter was made. Tokens at time `t` are
//! `min(burst, (t - empty_at) × rate)`; taking `n` tokens moves `empty_at` forward by
//! `n / rate`. A compare-and-swap per *chunk* is the only synchronisation — there is no lock and
//! nothing per byte.
//!
//! Two ways to take tokens:
//! - [`RateLimiter::acquire`] (stream relays): grants *up to* what is wanted from what is there
//!   now, so the caller caps its next read at the grant and gives back what it did not read
//!   ([`RateLimiter::refund`]); when less than a minimum is available it says how long to wait.
//!   Reads never exceed the tokens, so the limit holds at small rates too.
//! - [`RateLimiter::reserve`] (message-based users such as udp proxies): takes exactly `n`,
//!   possibly into debt, and says how long to wait before going on — Go's `WaitN`.
//!
//! Every method has an `_at` twin taking the current time explicitly, for tests with a fake
//! clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

const NANOS: u128 = 1_000_000_000;

/// What [`RateLimiter::acquire`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    /// This many bytes may be read now (at least 1 when something was wanted, at most what
    /// was wanted).
    Bytes(usize),
    /// Too few tokens: try again after this long.
    Wait(Duration),
}

/// A token bucket shared by all the pairs of one proxy. See the module docs.
#[derive(Debug)]
pub struct RateLimiter {
    rate: u64,
    burst: u64,
    burst_ns: i64,
    /// Grants smaller than this (unless less is wanted) wait instead: about 10 ms of tokens,
    /// so a throttled flow wakes up at most ~100 times a second.
    min_grant: u64,
    origin: Instant,
    /// Nanoseconds since `origin` at which the bucket is empty; later than now = debt.
    empty_at: AtomicI64,
}

impl RateLimiter {
    /// `bytes_per_sec` with a burst of the same size, as frp's `rate.NewLimiter(limit, limit)`.
    /// The bucket starts full. A rate of 0 is treated as 1 byte/s (callers skip the limiter
    /// for "unlimited").
    pub fn new(bytes_per_sec: u64) -> RateLimiter {
        RateLimiter::with_burst(bytes_per_sec, bytes_per_sec)
    }

    /// A limiter with an explicit bucket size (≥ 1).
    pub fn with_burst(bytes_per_sec: u64, burst: u64) -> RateLimiter {
        let rate = bytes_per_sec.max(1);
        let burst = burst.max(1);
        let burst_ns = cost_ns(burst, rate);
        RateLimiter {
            rate,
            burst,
            burst_ns,
            min_grant: (rate / 100).clamp(1, burst),
            origin: Instant::now(),
            empty_at: AtomicI64::new(-burst_ns),
        }
    }

    /// Bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Bucket size in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// The limiter's clock: time since it was made.
    pub fn now(&self) -> Duration {
        self.origin.elapsed()
    }

    /// Up to `want` bytes now, or how long to wait for some. See [`Grant`].
    pub fn acquire(&self, want: usize) -> Grant {
        self.acquire_at(want, self.now())
    }

    /// [`RateLimiter::acquire`] at time `now` (on the limiter's clock).
    pub fn acquire_at(&self, want: usize, now: Duration) -> Grant {
        if want == 0 {
            return Grant::Bytes(0);
        }
        let now = now.as_nanos() as i64;
        let want = want as u64;
        let need = want.min(self.min_grant);
        let mut cur = self.empty_at.load(Ordering::Acquire);
        loop {
            // A bucket never holds more than `burst`.
            let base = cur.max(now - self.burst_ns);
            let avail = if now > base {
                tokens(now - base, self.rate).min(self.burst)
            } else {
                0
            };
            if avail < need {
                let ready = base + cost_ns(need, self.rate);
                return Grant::Wait(Duration::from_nanos((ready - now).max(1) as u64));
            }
            let take = want.min(avail);
            let next = base + cost_ns(take, self.rate);
            match self.empty_at.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Grant::Bytes(take as usize),
                Err(v) => cur = v,
            }
        }
    }

    /// Gives back `n` tokens of a grant that was not used (a read returned less).
    pub fn refund(&self, n: usize) {
        if n > 0 {
            let ns = (n as u128 * NANOS / self.rate as u128) as i64;
            self.empty_at.fetch_sub(ns, Ordering::AcqRel);
        }
    }

    /// Takes exactly `n` tokens, going into debt if needed; returns how long the caller must
    /// wait before it may go on (zero when the tokens were there).
    pub fn reserve(&self, n: usize) -> Duration {
        self.reserve_at(n, self.now())
    }

    /// [`RateLimiter::reserve`] at time `now` (on the limiter's clock).
    pub fn reserve_at(&self, n: usize, now: Duration) -> Duration {
        if n == 0 {
            return Duration::ZERO;
        }
        let now = now.as_nanos() as i64;
        let cost = cost_ns(n as u64, self.rate);
        let mut cur = self.empty_at.load(Ordering::Acquire);
        loop {
            let base = cur.max(now - self.burst_ns);
            let next = base + cost;
            match self.empty_at.compare_exchange_weak(
                cur,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Duration::from_nanos((next - now).max(0) as u64),
                Err(v) => cur = v,
            }
        }
    }
}

/// Nanoseconds that `n` tokens take to accrue (rounded up).
fn cost_ns(n: u64, rate: u64) -> i64 {
    (n as u128 * NANOS)
        .div_ceil(rate as u128)
        .min(i64::MAX as u128 / 4) as i64
}

/// Tokens accrued in `ns` nanoseconds (rounded down).
fn tokens(ns: i64, rate: u64) -> u64 {
    (ns as u128 * rate as u128 / NANOS).min(u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn starts_full_then_refills_at_the_rate() {
        let l = RateLimiter::new(MIB);
        assert_eq!(l.acquire_at(usize::MAX, ms(0)), Grant::Bytes(MIB as usize));
        // Empty: the next grant needs ~10 ms of tokens.
        let Grant::Wait(w) = l.acquire_at(64 * 1024, ms(0)) else {
            panic!("bucket should be empty")
        };
        assert!(w >= ms(9) && w <= ms(11), "{w:?}");
        // After 500 ms, half a second's worth.
        assert_eq!(
            l.acquire_at(usize::MAX, ms(500)),
            Grant::Bytes(MIB as usize / 2)
        );
        // Never more than the burst, however long it idles.
        assert_eq!(
            l.acquire_at(usize::MAX, ms(60_000)),
            Grant::Bytes(MIB as usize)
        );
    }

    #[test]
    fn grants_are_capped_by_what_is_there_and_refunds_come_back() {
        let l = RateLimiter::with_burst(1000, 1000);
        assert_eq!(l.acquire_at(600, ms(0)), Grant::Bytes(600));
        assert_eq!(l.acquire_at(600, ms(0)), Grant::Bytes(400));
        l.refund(300);
        assert_eq!(l.acquire_at(600, ms(0)), Grant::Bytes(300));
        // 1000 B/s: 10 tokens (the minimum grant) take 10 ms.
        assert_eq!(l.acquire_at(600, ms(0)), Grant::Wait(ms(10)));
        assert_eq!(l.acquire_at(600, ms(10)), Grant::Bytes(10));
    }

    #[test]
    fn a_small_rate_holds_over_a_simulated_minute() {
        // 1 KiB/s fed by a reader that always wants 16 KiB and sleeps exactly as told.
        let l = RateLimiter::new(1024);
        let mut now = Duration::ZERO;
        let mut moved = 0u64;
        while now < Duration::from_secs(60) {
            match l.acquire_at(16 * 1024, now) {
                Grant::Bytes(n) => {
                    assert!(n <= 1024, "a grant never exceeds the burst");
                    moved += n as u64;
                }
                Grant::Wait(w) => now += w,
            }
        }
        // burst + 60 s × rate, give or take one minimum grant.
        let want = 1024 + 60 * 1024;
        assert!(moved.abs_diff(want) <= 16, "moved {moved}, want ~{want}");
    }

    #[test]
    fn reserve_goes_into_debt_like_wait_n() {
        let l = RateLimiter::new(1000);
        assert_eq!(l.reserve_at(1000, ms(0)), Duration::ZERO);
        assert_eq!(l.reserve_at(500, ms(0)), ms(500));
        // Still in debt at 200 ms: the next 100 bytes are due at 600 ms.
        assert_eq!(l.reserve_at(100, ms(200)), ms(400));
        assert!(matches!(l.acquire_at(10, ms(590)), Grant::Wait(_)));
        assert_eq!(l.acquire_at(10, ms(610)), Grant::Bytes(10));
    }

    #[test]
    fn an_echo_through_one_limiter_pays_for_both_directions() {
        // frp's e2e "Proxy Bandwidth Limit by Client": 50 KiB up and the same 50 KiB echoed
        // back through a 10 KiB/s proxy. One bucket of 10 KiB (rate = burst = the limit,
        // starting full) for both directions: 100 KiB − 10 KiB of burst take 9 s, which frp's
        // spec requires to be over 8 s. Simulated with a reader that always wants 64 KiB.
        let l = RateLimiter::new(10 * 1024);
        assert_eq!(l.burst(), 10 * 1024);
        let mut now = Duration::ZERO;
        for _direction in 0..2 {
            let mut left = 50 * 1024usize;
            while left > 0 {
                match l.acquire_at(left.min(64 * 1024), now) {
                    Grant::Bytes(n) => {
                        assert!(n <= 10 * 1024, "no grant beyond the bucket");
                        left -= n;
                    }
                    Grant::Wait(w) => now += w,
                }
            }
        }
        let secs = now.as_secs_f64();
        assert!((8.95..=9.05).contains(&secs), "took {secs} s");
    }

    #[test]
    fn shared_by_threads_without_losing_tokens() {
        let l = std::sync::Arc::new(RateLimiter::with_burst(1_000_000, 1_000_000));
        let at = ms(0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let mut got = 0u64;
                    while let Grant::Bytes(n) = l.acquire_at(1000, at) {
                        got += n as u64;
                    }
                    got
                })
            })
            .collect();
        let total: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(total, 1_000_000, "exactly the bucket, no more, no less");
    }
}
