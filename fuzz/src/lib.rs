//! Helpers shared by the fuzz targets.

/// A current-thread tokio runtime whose clock is paused: timers fire as soon as every task
/// waits, so a target can exercise deadlines without spending wall time on them.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime")
}
