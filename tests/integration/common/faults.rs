//! Fault injection for the commands that write a target in place (rollback, apply): the
//! hooks of `src/patching/engine.rs`, compiled in with the cargo feature `fault-injection`.

use super::{bin, stderr};
use std::process::{Command, Output};

/// How an injected fault stops the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// An I/O error: the process reports it and exits 1.
    Error,
    /// `abort()` right after the write.
    Abort,
    /// The write reaches the target only in part (ending inside a block, on a sector
    /// boundary), then `abort()`: a power cut in the middle of a write.
    Torn,
}

impl Stop {
    /// The three kinds in turn, for `k` = 1, 2, 3, ...
    pub fn nth(k: u64) -> Stop {
        [Stop::Error, Stop::Abort, Stop::Torn][(k % 3) as usize]
    }
}

/// Runs `e2image-rs SUBCOMMAND ARGS`, stopping after write `k` of `fault` as it says. Never
/// a panic.
pub fn run_faulty(
    subcommand: &str,
    args: &[&dyn AsRef<std::ffi::OsStr>],
    fault: Option<(u64, Stop)>,
) -> Output {
    let mut c = Command::new(bin());
    c.arg(subcommand);
    for a in args {
        c.arg(a);
    }
    if let Some((k, stop)) = fault {
        c.env("E2IMAGE_RS_FAULT_AFTER_WRITES", k.to_string());
        match stop {
            Stop::Error => {}
            Stop::Abort => {
                c.env("E2IMAGE_RS_FAULT_ABORT", "1");
            }
            Stop::Torn => {
                c.env("E2IMAGE_RS_FAULT_TORN", "1");
            }
        }
    }
    let o = c.output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    o
}
