//! Gives freed heap memory back to the kernel after a burst (glibc's allocator keeps it).
//!
//! glibc returns memory to the kernel only from the top of each arena: after thousands of
//! clients or connections come and go, the pages they used stay resident though free. A
//! thread checks the allocator every [`CHECK_EVERY`]; when a large free amount
//! ([`MIN_FREE`], and a quarter of what is in use) has stayed free across two checks in a row,
//! it calls `malloc_trim(0)`, which returns every free page of every arena. Memory that churns
//! (freed and reused at once) is left alone: trimming it would only cost page faults.
//!
//! `FRP_HEAP_TRIM=0` turns it off. Other C libraries: nothing is started.

use std::time::Duration;

/// How often the allocator is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// Free heap below this is not worth a trim.
pub const MIN_FREE: usize = 8 * 1024 * 1024;

/// Whether `free` bytes free beside `used` in use are worth trimming.
pub fn worth_trimming(free: usize, used: usize) -> bool {
    free >= MIN_FREE && free >= used / 4
}

/// Starts the trimming thread (once per process; later calls do nothing). Returns whether
/// one runs.
pub fn start() -> bool {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if std::env::var("FRP_HEAP_TRIM").is_ok_and(|v| v == "0") || !supported() {
        return false;
    }
    let mut started = false;
    STARTED.call_once(|| {
        started = std::thread::Builder::new()
            .name("heap-trim".into())
            .stack_size(64 * 1024)
            .spawn(run)
            .is_ok();
    });
    started
}

fn run() {
    let mut armed = false;
    loop {
        std::thread::sleep(CHECK_EVERY);
        let Some((free, used)) = heap() else {
            return;
        };
        if !worth_trimming(free, used) {
            armed = false;
            continue;
        }
        if armed {
            trim();
            armed = false;
        } else {
            armed = true;
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn supported() -> bool {
    true
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn supported() -> bool {
    false
}

/// (free, in use) bytes of the heap arenas (mmapped chunks are given back when freed and not
/// counted).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn heap() -> Option<(usize, usize)> {
    // SAFETY: mallinfo2 takes no arguments and returns a plain struct (glibc ≥ 2.33).
    let mi = unsafe { libc::mallinfo2() };
    Some((mi.fordblks, mi.uordblks))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn heap() -> Option<(usize, usize)> {
    None
}

/// Returns the free pages of every arena to the kernel.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn trim() {
    // SAFETY: malloc_trim takes a plain integer and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_large_lasting_free_memory_is_trimmed() {
        assert!(!worth_trimming(MIN_FREE - 1, 0));
        assert!(worth_trimming(MIN_FREE, 4 * MIN_FREE));
        assert!(!worth_trimming(MIN_FREE, 4 * MIN_FREE + 4));
    }

    /// Freed memory in the middle of the heap comes back to the kernel after a trim.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn trim_gives_free_pages_back() {
        // Many small blocks (below the mmap threshold), every other one kept so that the
        // freed ones cannot merge into the top of the heap.
        let mut blocks: Vec<Vec<u8>> = (0..4096).map(|_| vec![1u8; 16 * 1024]).collect();
        let kept: Vec<Vec<u8>> = blocks.iter_mut().step_by(2).map(std::mem::take).collect();
        drop(blocks);
        let (free, _) = heap().unwrap();
        assert!(free >= 24 * 1024 * 1024, "{free}");
        let before = crate::sys::rss_bytes().unwrap();
        trim();
        let after = crate::sys::rss_bytes().unwrap();
        assert!(
            after + 16 * 1024 * 1024 <= before,
            "RSS {before} before the trim, {after} after"
        );
        drop(kept);
    }
}
