//! Messages an e2image user understands:
//! - e2image options not implemented yet say so (and `-I` points to rollback); a missing mode,
//!   an unknown subcommand and an invalid `--cluster-size` are usage errors (exit 2);
//! - one prefix everywhere (`e2image-rs: error: `), rollback included;
//! - `--json` on a failed run still prints a JSON object with the error and exit status;
//! - `snapshots` on a raw ext image says what it is and how to export it;
//! - errors never repeat their cause's text nor show temporary names ("No space left on
//!   device" once; "File too large" with the size the filesystem claims);
//! - rollback reports agree with themselves (blocks to write = blocks written; a second run
//!   says the target already holds the state; the undo-file line names the real target);
//! - a rollback onto a target that an interrupted one left part-way is refused, naming it;
//! - the progress bar names the state it copies and ends with a summary line; rollback's and
//!   apply's `-p` count the bytes written to the target;
//! - a report into a closed pipe ends in exit status 1, never a panic (`pipe`); every JSON
//!   document follows one convention, and prune refuses what is not an archive (`json`).

mod json;
mod pipe;

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn usage_errors_say_what_is_wrong() {
    let dir = scratch("msg-usage");
    let img = small_image(&dir);
    let out = dir.join("out.qcow2");
    for (args, says) in [
        (vec!["-I", "x", "y"], "e2image-rs rollback"),
        (vec!["-I", "x", "y"], "crash-safely, through a patch file"),
        (vec!["-Q", "-o", "x1", "x", "y"], "is not a number of bytes"),
        (
            vec!["-Q", "-O", "512", "x", "y"],
            "-O DST_OFFSET places a raw image",
        ),
        (vec!["-Q", "-s", "-d", "x", "y"], "add --allow-data"),
        (vec!["-r", "-c", "x", "y"], "OUT y does not exist"),
        (vec!["-r", "-n", "x", "y"], "-n goes with -r -c"),
        (vec!["-Q", "-n", "x", "y"], "-n goes with -r -c"),
        (vec!["-r", "-c", "x", "-"], "not standard output"),
        (vec!["x", "y"], "one of -Q or -r is required"),
        (
            vec!["snapshot", "x.qcow2"],
            "unknown subcommand \"snapshot\"",
        ),
        (vec!["rolback"], "unknown subcommand \"rolback\""),
        (
            vec!["-Q", "--cluster-size", "3000", "x", "y"],
            "power of two",
        ),
        (
            vec!["-Q", "--cluster-size", "256", "x", "y"],
            "power of two",
        ),
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let o = expect(&a, 2);
        let e = stderr(&o);
        assert!(e.starts_with("e2image-rs: error: "), "{args:?}: {e}");
        assert!(e.contains(says), "{args:?}: {e}");
        assert!(!e.contains("use '-- "), "{args:?}: {e}");
    }
    // A subcommand missing an argument says what is missing, never "unknown subcommand".
    for (args, says) in [
        (vec!["prune", "--keep-last", "1"], "<ARCHIVE>"),
        (vec!["snapshots"], "<IMAGE>"),
        (vec!["rollback"], "<IMAGE>"),
        (vec!["apply"], "<DELTA>"),
        (vec!["rollback", "--resume", "P"], "<IMAGE>"),
        (vec!["apply", "--undo", "P"], "<DELTA>"),
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let e = stderr(&expect(&a, 2));
        assert!(!e.contains("unknown subcommand"), "{args:?}: {e}");
        assert!(
            e.contains("required arguments were not provided"),
            "{args:?}: {e}"
        );
        assert!(e.contains(says), "{args:?}: {e}");
    }
    // The patch commands' own forms, validated once for both.
    for cmd in ["rollback", "apply"] {
        let e = stderr(&expect(&[&cmd, &"--resume", &"P", &"x", &"y"], 2));
        assert!(e.contains("takes TARGET only"), "{cmd}: {e}");
        let e = stderr(&expect(&[&cmd, &"x", &"y"], 2));
        assert!(e.contains("--patch PATCH is required"), "{cmd}: {e}");
    }
    // Rollback usage errors carry the same prefix.
    let o = expect(&[&"rollback", &img], 2);
    assert!(
        stderr(&o).starts_with("e2image-rs: error: "),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
}

#[test]
fn json_failures_are_json() {
    let dir = scratch("msg-json");
    let o = expect(&[&"-Q", &"--json", &dir.join("missing"), &dir.join("o")], 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_status"], 1);
    assert!(v["error"].as_str().unwrap().contains("missing"));
    let o = expect(&[&"--json", &"x", &"y"], 2);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_status"], 2);
    let o = expect(&[&"snapshots", &"--json", &dir.join("missing")], 1);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_status"], 1);
}

#[test]
fn snapshots_of_a_raw_image_says_what_it_is() {
    let dir = scratch("msg-snapshots");
    let img = small_image(&dir);
    let o = expect(&[&"snapshots", &img], 1);
    let e = stderr(&o);
    assert!(e.contains("not a QCOW2 image"), "{e}");
    assert!(e.contains("ext4 filesystem; export it with -Q"), "{e}");
}

/// Mounts a tmpfs of `size` on `dir`; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn write_errors_are_said_once_without_temporary_names() {
    let dir = scratch("msg-enospc");
    let img = small_image(&dir);
    let Some(full) = Tmpfs::mount(&dir.join("small"), "1M") else {
        skipped("cannot mount a tmpfs here");
        return;
    };
    let out = full.0.join("out.qcow2");
    let o = expect(&[&"-Q", &"-d", &img, &out], 1);
    let e = stderr(&o);
    assert_eq!(e.matches("No space left on device").count(), 1, "{e}");
    assert_eq!(e.matches("os error 28").count(), 1, "{e}");
    assert!(!e.contains(".tmp"), "{e}");
    assert!(std::fs::read_dir(&full.0).unwrap().next().is_none());
    // A raw image larger than the process may write: the size the filesystem claims.
    let b = bin();
    let script = format!(
        "trap '' XFSZ; ulimit -f 1024; exec {} -r {} {}",
        b.display(),
        img.display(),
        dir.join("big.raw").display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("16 MiB (16777216 bytes)"),
        "{}",
        stderr(&o)
    );
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert!(!stderr(&o).contains(".tmp"), "{}", stderr(&o));
}

#[test]
fn rollback_reports_agree_with_themselves() {
    if skip() {
        return;
    }
    let dir = scratch("msg-rollback");
    let img = small_image(&dir);
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let t = sparse_copy(&img, &dir.join("t.img"));
    debugfs_w(&t, &["mkdir /new1", "mkdir /new2"]);
    let (p, u) = (dir.join("r.patch"), dir.join("r.e2undo"));
    let dry = stdout(&expect(&[&"rollback", &q, &t, &"--dry-run", &"--json"], 0));
    let dry: serde_json::Value = serde_json::from_str(&dry).unwrap();
    assert_eq!(dry["dry_run"], true, "{dry}");
    let to_write = dry["blocks_written"].as_u64().expect("blocks_written");
    let o = expect(
        &[&"rollback", &q, &t, &"--patch", &p, &"--undo-file", &u],
        0,
    );
    let out = stdout(&o);
    let last = out.lines().last().unwrap_or_default();
    assert!(last.contains("rolled back to"), "{out}");
    let written = number_before(last, " blocks (").expect(&out);
    assert_eq!(to_write, written, "{dry}\n{out}");
    // The text gives sizes with units: "(28 KiB to write".
    assert!(out.contains("iB to write"), "{out}");
    // The undo-file line comes after the header and names the real target.
    let header = out.find("rollback of").unwrap();
    let undo = out.find("undo file").unwrap();
    assert!(undo > header, "{out}");
    assert!(
        out.contains(&format!("e2undo {} {}", u.display(), t.display())),
        "{out}"
    );
    // Resuming a finished rollback says there was nothing to do.
    let o = expect(&[&"rollback", &"--resume", &p, &t], 0);
    assert!(stdout(&o).contains("already holds"), "{}", stdout(&o));
    assert!(!stdout(&o).contains("was done, now done"));
}

/// The number just before `tail` in `text` (e.g. "7 blocks (").
fn number_before(text: &str, tail: &str) -> Option<u64> {
    let end = text.find(tail)?;
    let start = text[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    text[start..end].parse().ok()
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (a rollback stopped part-way)"
)]
fn part_way_targets_name_their_patch() {
    let dir = scratch("msg-partway");
    let img = small_image(&dir);
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let t = sparse_copy(&img, &dir.join("t.img"));
    debugfs_w(&t, &["mkdir /new1"]);
    let p = dir.join("r.patch");
    let o = Command::new(bin())
        .args(["rollback"])
        .arg(&q)
        .arg(&t)
        .arg("--patch")
        .arg(&p)
        .env("E2IMAGE_RS_FAULT_AFTER_WRITES", "3")
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("part-way"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--resume"), "{}", stderr(&o));
    // Another rollback onto it is refused, naming the patch that finishes it.
    let before = sha256(&t);
    let e = stderr(&expect(
        &[&"rollback", &q, &t, &"--patch", &dir.join("p2")],
        1,
    ));
    assert!(e.contains("part-way through the rollback of patch"), "{e}");
    assert!(e.contains("r.patch"), "{e}");
    assert_eq!(sha256(&t), before);
    // A damaged patch: the message says the target is part-way and what can still help.
    let mut bytes = read(&p);
    bytes[2000] ^= 0xff;
    let bad = dir.join("bad.patch");
    std::fs::write(&bad, &bytes).unwrap();
    let e = stderr(&expect(&[&"rollback", &"--resume", &bad, &t], 1));
    assert!(e.contains("corrupt") && e.contains("part-way"), "{e}");
    assert!(e.contains("e2undo") && e.contains("e2fsck"), "{e}");
    assert_eq!(sha256(&t), before);
    expect(&[&"rollback", &"--resume", &p, &t], 0);
    assert_eq!(fsck(&t), 0);
}

#[test]
fn progress_names_each_state() {
    // script(1) gives the progress bar a terminal to be shown on.
    if !require(&["script"]) {
        return;
    }
    let dir = scratch("msg-progress");
    let [a, _b, c] = chain(&dir);
    let out = dir.join("out.qcow2");
    let log = dir.join("typescript");
    let cmd = format!(
        "{} -Q -p --snapshot {} {} {}",
        bin().display(),
        a.display(),
        c.display(),
        out.display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd])
        .arg(&log)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let seen = String::from_utf8_lossy(&read(&log)).into_owned();
    assert!(seen.contains("state 1/2: current"), "{seen}");
    assert!(seen.contains("state 2/2: a.img"), "{seen}");
    assert!(seen.contains("copied in"), "{seen}");
}

#[test]
fn apply_and_rollback_progress_count_the_bytes_written() {
    if !have("script") || !have_oracles() {
        skipped("script(1), e2fsprogs or qemu-img missing: no terminal to show a bar on");
        return;
    }
    let dir = scratch("msg-progress-patch");
    let [a, b, _c] = chain(&dir);
    let d = dir.join("ab.qcow2");
    expect(&[&"-Q", &"--base", &a, &b, &d], 0);
    let q = dir.join("b.qcow2");
    expect(&[&"-Q", &b, &q], 0);
    let (ta, tr) = (
        sparse_copy(&a, &dir.join("ta.img")),
        sparse_copy(&a, &dir.join("tr.img")),
    );
    let b = bin();
    for (cmd, label) in [
        (
            format!(
                "{} apply -p {} {} --patch {}",
                b.display(),
                d.display(),
                ta.display(),
                dir.join("a.patch").display()
            ),
            format!("apply: applying the patch to {}", ta.display()),
        ),
        (
            format!(
                "{} rollback -p --force {} {} --patch {}",
                b.display(),
                q.display(),
                tr.display(),
                dir.join("r.patch").display()
            ),
            format!("rollback: applying the patch to {}", tr.display()),
        ),
    ] {
        let log = dir.join("typescript");
        let o = Command::new("script")
            .args(["-qec", &cmd])
            .arg(&log)
            .output()
            .unwrap();
        assert_eq!(code(&o), 0, "{cmd}: {}", stderr(&o));
        let seen = String::from_utf8_lossy(&read(&log)).into_owned();
        assert!(seen.contains(&label), "{seen}");
        assert!(seen.contains("iB written in"), "{seen}");
    }
}
