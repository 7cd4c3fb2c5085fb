//! The one way the binary prints. Reports (text or JSON) go to standard output through
//! [`text`], [`line`] and [`json`]; notes, warnings and errors go to standard error through
//! [`note`], [`warning`] and [`error`]; `-p`'s phases and bars are [`phase`] and [`Progress`]
//! (`super::progress`).
//!
//! Standard output may be a pipe whose reader is gone (`e2image-rs snapshots IMG | head -1`).
//! The first failed write (EPIPE, or any other error, which is then reported once on stderr)
//! marks standard output failed: nothing more is written to it, and [`exit_status`] turns a
//! run that would have exited 0 or 3 into 1. Nothing panics and the work is not cut short:
//! every command prints its report before its work starts or after it is committed, never in
//! between, so a failed write never stops a change half-way. Writes to standard error ignore
//! their failures (a closed stderr loses the messages, not the run).

use serde::Serialize;
use std::io::{ErrorKind, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// Standard output could not be written: nothing more goes to it.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);
/// A progress bar may be on screen.
pub(super) static PROGRESS_SHOWN: AtomicBool = AtomicBool::new(false);

/// Clears a progress bar line and shows the cursor again, when a bar may be on screen (an
/// interrupted run, before its last message).
pub fn restore_terminal() {
    let err = std::io::stderr();
    if PROGRESS_SHOWN.load(Ordering::SeqCst) && err.is_terminal() {
        let _ = (&err).write_all(b"\r\x1b[2K\x1b[?25h");
    }
}

/// Writes `s` to standard output as it is (the caller gives the newlines) and flushes; does
/// nothing once standard output has failed.
pub fn text(s: &str) {
    if STDOUT_FAILED.load(Ordering::SeqCst) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        STDOUT_FAILED.store(true, Ordering::SeqCst);
        if e.kind() != ErrorKind::BrokenPipe {
            error(&format!("cannot write to standard output: {e}"));
        }
    }
}

/// Writes `s` and a newline to standard output (see [`text`]).
pub fn line(s: &str) {
    text(&format!("{s}\n"));
}

/// Writes `doc` to standard output as pretty-printed JSON and a newline (see [`text`]).
pub fn json<T: Serialize + ?Sized>(doc: &T) {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => line(&s),
        Err(e) => error(&format!("cannot encode the JSON report: {e}")),
    }
}

/// True once a write to standard output failed.
pub fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::SeqCst)
}

/// The exit status of a run that would exit with `code`: 1 instead of 0 or 3 when its report
/// could not be written to standard output.
pub fn exit_status(code: i32) -> i32 {
    use super::status::{EXIT_FAILED, EXIT_OK, EXIT_WARNINGS};
    if stdout_failed() && (code == EXIT_OK || code == EXIT_WARNINGS) {
        EXIT_FAILED
    } else {
        code
    }
}

/// Writes `s` to standard error as it is, ignoring failures.
pub fn stderr(s: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(s.as_bytes()).and_then(|()| err.flush());
}

/// `e2image-rs: note: MSG` on standard error.
pub fn note(msg: &str) {
    stderr(&format!("e2image-rs: note: {msg}\n"));
}

/// `e2image-rs: warning: MSG` on standard error.
pub fn warning(msg: &str) {
    stderr(&format!("e2image-rs: warning: {msg}\n"));
}

/// `e2image-rs: error: MSG` on standard error.
pub fn error(msg: &str) {
    stderr(&format!("e2image-rs: error: {msg}\n"));
}

/// The JSON document of a failure: `{"error": MESSAGE, "exit_status": N}`.
#[derive(Debug, Serialize)]
pub struct ErrorReport<'a> {
    /// The message (as printed on stderr after `e2image-rs: error: `).
    pub error: &'a str,
    /// The exit status.
    pub exit_status: i32,
}

pub use super::progress::{phase, Progress};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_stdout_fails_only_clean_runs() {
        assert_eq!(exit_status(0), 0);
        STDOUT_FAILED.store(true, Ordering::SeqCst);
        assert_eq!(exit_status(0), 1);
        assert_eq!(exit_status(3), 1);
        assert_eq!(exit_status(2), 2);
        assert_eq!(exit_status(130), 130);
        STDOUT_FAILED.store(false, Ordering::SeqCst);
    }

    #[test]
    fn error_documents() {
        let doc = ErrorReport {
            error: "no",
            exit_status: 1,
        };
        assert_eq!(
            serde_json::to_string(&doc).unwrap(),
            r#"{"error":"no","exit_status":1}"#
        );
    }
}
