//! The exit statuses, one set for every command (printing them is `crate::exit`'s).

/// Exit status: done completely.
pub const EXIT_OK: i32 = 0;
/// Exit status: failed or refused; nothing left under OUT (rollback: the message says where
/// the target stands).
pub const EXIT_FAILED: i32 = 1;
/// Exit status: usage error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status: exported, but corrupt or unreadable parts were skipped and reported.
pub const EXIT_WARNINGS: i32 = 3;
