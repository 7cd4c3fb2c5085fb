//! Reports written into a closed pipe (`e2image-rs snapshots IMG | head -1`): standard output
//! is a pipe whose read end is closed before the run starts, so its first write fails with
//! EPIPE. Every command then exits with status 1, quietly (no panic, no backtrace), and a
//! command that changes something has done all of it first: an export's image is complete, an
//! apply's or rollback's target holds the new state and its patch says "done".

use crate::common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs e2image-rs with `args`, its standard output a pipe nobody reads any more.
fn into_closed_pipe(args: &[&dyn AsRef<OsStr>]) -> Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let mut c = Command::new(bin());
    for a in args {
        c.arg(a);
    }
    c.stdout(writer).stderr(Stdio::piped()).output().unwrap()
}

/// `args` into a closed pipe: exit status 1, no panic, no backtrace, no "Broken pipe" message.
fn fails_quietly(args: &[&dyn AsRef<OsStr>]) -> Output {
    let o = into_closed_pipe(args);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{shown:?}: {e}");
    for bad in ["panicked", "RUST_BACKTRACE", "Broken pipe"] {
        assert!(!e.contains(bad), "{shown:?}: {e}");
    }
    o
}

/// An archive of states a and b of one filesystem, and the chain's images; b an hour
/// younger than a where the test clock is compiled in (`fault-injection`).
fn archive(dir: &Path) -> (std::path::PathBuf, [std::path::PathBuf; 3]) {
    let [a, b, c] = chain(dir);
    let q = dir.join("arch.qcow2");
    for (now, src, args) in [
        ("1800000000", &a, vec!["-Q", "--name", "a"]),
        ("1800003600", &b, vec!["-Q", "--append", "--name", "b"]),
    ] {
        let o = Command::new(bin())
            .args(args)
            .arg(src)
            .arg(&q)
            .env("E2IMAGE_RS_TEST_NOW", now)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
    }
    (q, [a, b, c])
}

#[test]
fn reports_into_a_closed_pipe_exit_1_without_a_panic() {
    if !have_oracles() {
        skipped("e2fsprogs or qemu-img missing");
        return;
    }
    let dir = scratch("pipe-reports");
    let (q, [a, b, c]) = archive(&dir);
    let before = sha256(&q);
    fails_quietly(&[&"snapshots", &q]);
    fails_quietly(&[&"snapshots", &"--json", &q]);
    fails_quietly(&[&"prune", &q, &"--keep-last", &"1", &"--dry-run"]);
    fails_quietly(&[&"prune", &q, &"--keep-last", &"1", &"--dry-run", &"--json"]);
    assert_eq!(sha256(&q), before, "a dry run changes nothing");
    let t = sparse_copy(&c, &dir.join("t.img"));
    fails_quietly(&[&"rollback", &q, &t, &"--snapshot", &"a", &"--dry-run"]);
    fails_quietly(&[
        &"rollback",
        &q,
        &t,
        &"--snapshot",
        &"a",
        &"--dry-run",
        &"--json",
    ]);
    let d = dir.join("ab.qcow2");
    expect(&[&"-Q", &"-d", &"--base", &a, &b, &d], 0);
    let ta = sparse_copy(&a, &dir.join("ta.img"));
    fails_quietly(&[&"apply", &d, &ta, &"--dry-run"]);
    fails_quietly(&[&"apply", &d, &ta, &"--dry-run", &"--json"]);
    assert_eq!(sha256(&ta), sha256(&a), "a dry run writes nothing");
    // Failures with --json: the error document cannot be written either; still 1.
    fails_quietly(&[&"snapshots", &"--json", &dir.join("missing.qcow2")]);
    // A usage error keeps its status 2, quietly too.
    let o = into_closed_pipe(&[&"--json", &"x", &"y"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

#[test]
fn work_is_committed_before_its_report_is_lost() {
    if !have_oracles() {
        skipped("e2fsprogs or qemu-img missing");
        return;
    }
    let dir = scratch("pipe-committed");
    let (q, [a, b, c]) = archive(&dir);
    // An export with --json: the image is complete under its name.
    let out = dir.join("out.qcow2");
    fails_quietly(&[&"-Q", &"--json", &c, &out]);
    assert_qemu_check(&out);
    let again = dir.join("again.qcow2");
    expect(&[&"-Q", &c, &again], 0);
    assert_qemu_identical(&out, &again);
    // A real apply with --json: the target holds TO exactly as after a run whose report
    // was read, and its patch is done (resuming it writes nothing).
    let d = dir.join("ab.qcow2");
    expect(&[&"-Q", &"-d", &"--base", &a, &b, &d], 0);
    let (t1, t2) = (
        sparse_copy(&a, &dir.join("t1.img")),
        sparse_copy(&a, &dir.join("t2.img")),
    );
    let (p1, p2) = (dir.join("t1.patch"), dir.join("t2.patch"));
    fails_quietly(&[&"apply", &d, &t1, &"--patch", &p1, &"--json"]);
    expect(&[&"apply", &d, &t2, &"--patch", &p2], 0);
    assert_eq!(sha256(&t1), sha256(&t2), "the apply was finished");
    assert_eq!(fsck(&t1), 0);
    let o = expect(&[&"apply", &"--resume", &p1, &t1], 0);
    assert!(stdout(&o).contains("already holds"), "{}", stdout(&o));
    expect(&[&"apply", &"--undo", &p1, &t1], 0);
    assert_eq!(
        sha256(&t1),
        sha256(&a),
        "the patch is whole: --undo gives FROM back"
    );
    // A real rollback, text and JSON.
    for json in [false, true] {
        let t = sparse_copy(&c, &dir.join("r.img"));
        let p = dir.join(format!("r-{json}.patch"));
        let mut args: Vec<&dyn AsRef<OsStr>> = vec![
            &"rollback",
            &q,
            &t,
            &"--snapshot",
            &"b",
            &"--patch",
            &p,
            &"--force",
        ];
        if json {
            args.push(&"--json");
        }
        fails_quietly(&args);
        let o = expect(&[&"rollback", &"--resume", &p, &t], 0);
        assert!(stdout(&o).contains("already holds"), "{}", stdout(&o));
    }
    // A real prune: the states are gone although the report was lost.
    // (a and b may carry the same second, and the state the active layer shows is kept: the
    // dry run says how many stay.)
    let pruned = sparse_copy(&q, &dir.join("pruned.qcow2"));
    let o = expect(
        &[
            &"prune",
            &pruned,
            &"--keep-last",
            &"1",
            &"--dry-run",
            &"--json",
        ],
        0,
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let states = plan["states"].as_array().unwrap();
    let stay = states.iter().filter(|s| s["kept"] == true).count();
    fails_quietly(&[&"prune", &pruned, &"--keep-last", &"1"]);
    assert_qemu_check(&pruned);
    assert_eq!(
        snapshot_list(&pruned)["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        stay
    );
    if cfg!(feature = "fault-injection") {
        assert_eq!(stay, 1, "{plan}");
    }
}

#[test]
fn a_closed_stderr_loses_the_messages_not_the_run() {
    let dir = scratch("pipe-stderr");
    let img = small_image(&dir);
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    // An error (a raw image is not a QCOW2 image), said only on the closed stderr.
    let o = Command::new(bin())
        .arg("snapshots")
        .arg(&img)
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    // The JSON error still reaches stdout.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(bin())
        .args(["snapshots", "--json"])
        .arg(&img)
        .stderr(writer)
        .output()
        .unwrap();
    assert_eq!(code(&o), 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_status"], 1, "{v}");
}
