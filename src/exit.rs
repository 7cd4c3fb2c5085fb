//! Exit statuses and how failures are printed: one set of codes for every command, one error
//! prefix (`e2image-rs: error: `), and with `--json` a JSON object on standard output, both
//! written through `sys::report`.

use crate::sys::report;
pub use crate::sys::status::{EXIT_FAILED, EXIT_OK, EXIT_USAGE, EXIT_WARNINGS};

/// Wrong arguments: found while making the plan, or later (e.g. a cluster size too small for
/// the filesystem found in SOURCE). `main` maps it to exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Prints a failure (and, with `json`, a JSON object saying it); returns its exit status:
/// 2 for usage errors found late ([`UsageError`]), 1 otherwise.
pub fn fail(e: &anyhow::Error, json: bool) -> i32 {
    let code = if e.downcast_ref::<UsageError>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    };
    print_error(&error_text(e), code, json);
    code
}

/// Prints a usage error followed by `usage` (one or more lines); returns 2.
pub fn usage_error(msg: &str, json: bool, usage: &str) -> i32 {
    print_error(msg, EXIT_USAGE, json);
    report::stderr(&format!("{usage}\n"));
    EXIT_USAGE
}

/// `e2image-rs: error: MSG` on stderr, and with `json` `{"error", "exit_status"}` on stdout
/// ([`report::ErrorReport`]).
pub fn print_error(msg: &str, code: i32, json: bool) {
    report::error(msg);
    if json {
        report::json(&report::ErrorReport {
            error: msg,
            exit_status: code,
        });
    }
}

/// An error and its causes on one line, leaving out a cause whose text the line already holds
/// (an I/O error quoted by its context is not repeated).
pub fn error_text(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let c = cause.to_string();
        if c.is_empty() || text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(28);
        let e = anyhow::Error::new(io).context(format!(
            "write error at byte 5: {}",
            std::io::Error::from_raw_os_error(28)
        ));
        let t = error_text(&e);
        assert_eq!(t.matches("os error 28").count(), 1, "{t}");
    }
}
