//! Running the e2image-rs binary under test and other commands, and reading their output.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the e2image-rs binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2image-rs"))
}

/// Runs e2image-rs with `args`.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(bin());
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

/// Runs e2image-rs with `args`, expecting exit status `want` (else panics with its stderr).
pub fn expect(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> Output {
    let o = run(args);
    assert_eq!(code(&o), want, "{}", stderr(&o));
    o
}

/// Runs `e2image-rs SUBCOMMAND ARGS`, expecting exit status `want` (else panics with the
/// arguments, stdout and stderr); never a panic of the tool.
pub fn expect_sub(subcommand: &str, args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> Output {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&subcommand];
    a.extend_from_slice(args);
    let o = run(&a);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    assert_eq!(
        code(&o),
        want,
        "{subcommand} {shown:?}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    o
}

/// The stderr of an output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stdout of an output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Exit code of an output, panicking with its stderr on a signal.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", String::from_utf8_lossy(&o.stderr)))
}

/// Runs a command and returns its output.
pub fn sh(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(prog);
    for a in args {
        c.arg(a);
    }
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// Runs e2image-rs with `--json` and `args`, which must succeed; returns the summary.
pub fn export_json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json"];
    a.extend_from_slice(args);
    let o = run(&a);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// `e2image-rs snapshots --json IMAGE`, parsed.
pub fn snapshot_list(q: &Path) -> serde_json::Value {
    let o = Command::new(bin())
        .args(["snapshots", "--json"])
        .arg(q)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}
