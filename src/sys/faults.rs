//! Test hooks, compiled in only with the cargo feature `fault-injection` (the tests enable it;
//! release builds never read these variables).
//!
//! `E2IMAGE_RS_FAULT_STALL_MS=n` sleeps n milliseconds at each [`stall`] point (before each
//! copy batch of an export, before each write of a rollback), so that a test can signal or
//! race a run while it is in the middle of its work. The rollback engine's own write-count
//! faults are in `rollback::engine`.

/// Sleeps as `E2IMAGE_RS_FAULT_STALL_MS` says (test builds only).
pub fn stall() {
    if cfg!(feature = "fault-injection") {
        let ms = std::env::var("E2IMAGE_RS_FAULT_STALL_MS").ok();
        if let Some(ms) = ms.and_then(|v| v.parse().ok()) {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}
