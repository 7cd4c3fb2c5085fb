//! The skip helper itself (`common::skip`): a skip is shown past libtest's output capture,
//! and `CI=true` turns a missing tool into a failure naming it. The test binary runs itself
//! on the ignored child below, once without and once with `CI=true`.

use crate::common::*;
use std::process::Command;

/// A tool no machine has.
const ABSENT: &str = "e2image-rs-test-no-such-tool";

/// Child half of [`a_missing_tool_is_a_visible_skip_or_fatal_under_ci`].
#[test]
#[ignore = "run in a child process by a_missing_tool_is_a_visible_skip_or_fatal_under_ci"]
fn child_requiring_an_absent_tool() {
    if !require(&[ABSENT]) {
        return;
    }
    unreachable!("{ABSENT} found");
}

/// Runs the child test (captured, as `cargo test` runs it), `CI` set to `ci` or removed.
fn run_child(ci: Option<&str>) -> std::process::Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args([
        "--ignored",
        "--exact",
        "skips::child_requiring_an_absent_tool",
    ]);
    match ci {
        Some(v) => c.env("CI", v),
        None => c.env_remove("CI"),
    };
    c.output().unwrap()
}

#[test]
fn a_missing_tool_is_a_visible_skip_or_fatal_under_ci() {
    let line = format!("SKIPPED skips::child_requiring_an_absent_tool: {ABSENT} not installed");
    let o = run_child(None);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains(&line), "not shown: {}", stderr(&o));
    assert!(stdout(&o).contains("1 passed"), "{}", stdout(&o));
    let o = run_child(Some("true"));
    assert_ne!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains(&format!(
            "{ABSENT} not installed; CI=true makes a missing tool fatal"
        )),
        "{}",
        stdout(&o)
    );
    assert!(stdout(&o).contains("1 failed"), "{}", stdout(&o));
}
