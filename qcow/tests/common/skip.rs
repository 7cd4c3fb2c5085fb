//! Tools (QEMU's), and skipping a test visibly (fatal under `CI=true` when a tool is missing):
//! the workspace's one implementation (`tests/support/skip.rs`), plus [`QEMU`] and
//! [`require_qemu!`](crate::require_qemu).

#[path = "../../../tests/support/skip.rs"]
mod imp;
pub use imp::*;

/// QEMU's tools, the oracles of most tests here.
pub const QEMU: [&str; 2] = ["qemu-img", "qemu-io"];

/// Returns early from a test (after a visible skip line; a panic under `CI=true`) when
/// `qemu-img` or `qemu-io` is missing: `require(&QEMU)`.
#[macro_export]
macro_rules! require_qemu {
    () => {
        if !$crate::common::require(&$crate::common::QEMU) {
            return;
        }
    };
}
