//! Tools, the e2fsprogs corpus, and skipping a test visibly (or failing it under CI): the one
//! implementation every test crate of the workspace includes (`#[path]`) in its
//! `common::skip` (`tests/integration/common/skip.rs`, `ext/tests/integration/common/skip.rs`,
//! `qcow/tests/common/skip.rs`), which add their own tool lists.
//!
//! A test that cannot run here returns early after one of these calls. Each writes one line,
//! `SKIPPED <test>: <why>`, to the process's stderr handle (`std::io::stderr().write_all`),
//! which libtest's output capture does not intercept (it captures only `print!`/`eprint!`):
//! the line shows in `cargo test` output even for a passing test, so a run without a tool
//! cannot be mistaken for a run with it.
//!
//! Under `CI=true` (`.ci/run` sets it; CI installs every tool the tests use) a missing tool
//! ([`require`], [`require_for`]), a missing oracle ability ([`skip_missing`]) or a
//! missing corpus ([`shared_corpus`]) panics instead, so the test fails. What the machine
//! does not allow ([`skipped`]: not root, no loop devices, no mounts, mknod refused) stays a
//! visible skip even under CI.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// True if `tool` can be started (found on PATH). Says nothing when it cannot: tests that
/// need it call [`require`].
pub fn have(tool: &str) -> bool {
    static SEEN: Mutex<BTreeMap<String, bool>> = Mutex::new(BTreeMap::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    *seen.entry(tool.to_string()).or_insert_with(|| {
        Command::new(tool).arg("--version").output().is_ok()
            || Command::new(tool).arg("-V").output().is_ok()
    })
}

/// True under `CI=true` (or `CI=1`): missing tools and a missing corpus are then fatal.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// True if every one of `tools` runs. Otherwise reports the skip of the calling test naming
/// the missing ones (panics under `CI=true`) and returns false: the caller returns.
#[track_caller]
pub fn require(tools: &[&str]) -> bool {
    require_part(None, tools)
}

/// [`require`] for a part of a test (`part` names it): false means the caller leaves that
/// part out and goes on.
#[track_caller]
pub fn require_for(part: &str, tools: &[&str]) -> bool {
    require_part(Some(part), tools)
}

/// Reports that something an oracle must provide is missing (`what`, e.g. a debugfs without
/// journal commands): a visible skip, or a panic under `CI=true`. The caller returns.
#[track_caller]
pub fn skip_missing(what: &str) {
    if ci() {
        panic!("{}: {what}; CI=true makes this fatal", test_name());
    }
    report(&format!("SKIPPED {}: {what}", test_name()));
}

/// Reports that (part of) a test was skipped because of the machine (`why`: not root, no
/// loop devices, no mounts, mknod refused): always a visible skip, never fatal, not even
/// under `CI=true`.
pub fn skipped(why: &str) {
    report(&format!("SKIPPED {}: {why}", test_name()));
}

/// The e2fsprogs test-suite images, `../shared/corpus/e2fsprogs` beside the checkout
/// (relative to the workspace root: the directory of `Cargo.lock`, this crate's or its
/// parent). When absent: a visible skip and `None` (the caller returns), or a panic under
/// `CI=true`.
#[track_caller]
pub fn shared_corpus() -> Option<PathBuf> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = match manifest.join("Cargo.lock").exists() {
        true => manifest,
        false => manifest.join(".."),
    };
    let root = root.canonicalize().unwrap_or(root);
    let beside = root
        .parent()
        .unwrap_or(&root)
        .join("shared/corpus/e2fsprogs");
    if beside.is_dir() {
        return Some(beside);
    }
    skip_missing(&format!(
        "the e2fsprogs corpus ../shared/corpus/e2fsprogs ({}) is absent (docs/testing.md \
         says how to get it)",
        beside.display()
    ));
    None
}

#[track_caller]
fn require_part(part: Option<&str>, tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools.iter().copied().filter(|t| !have(t)).collect();
    if missing.is_empty() {
        return true;
    }
    let what = format!("{} not installed", missing.join(", "));
    let test = match part {
        Some(p) => format!("{} ({p})", test_name()),
        None => test_name(),
    };
    if ci() {
        panic!("{test}: {what}; CI=true makes a missing tool fatal");
    }
    report(&format!("SKIPPED {test}: {what}"));
    false
}

/// The running test's name (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string()
}

/// Writes `line` once per process to the stderr handle, past libtest's capture.
fn report(line: &str) {
    use std::io::Write;
    static SHOWN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if SHOWN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(line.to_string())
    {
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    }
}
