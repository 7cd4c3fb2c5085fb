//! Rollback and apply refuse a target whose journal needs recovery (mounting it would replay
//! the journal over the blocks they write) unless `--force`, saying how to replay it first.

use super::{dirty, unavailable};
use crate::common::{code, expect, run, scratch, sh, sha256, sparse_copy, stderr};

#[test]
fn rollback_and_apply_refuse_a_target_whose_journal_needs_recovery() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-targets");
    let d = dirty(&dir, "t", &["-t", "ext4", "-b", "4096"], "64M", "-c");
    // An image of the replayed state (same filesystem), and a delta from it to a later state.
    let arch = dir.join("arch.qcow2");
    expect(&[&"-Q", &"-d", &d.oracle, &arch], 0);
    let later = sparse_copy(&d.oracle, &dir.join("later.img"));
    crate::common::debugfs_w(&later, &["mkdir /later"]);
    let delta = dir.join("delta.qcow2");
    expect(&[&"-Q", &"-d", &"--base", &d.oracle, &later, &delta], 0);
    let target = sparse_copy(&d.img, &dir.join("target.img"));
    let before = sha256(&target);
    for (what, input) in [("rollback", &arch), ("apply", &delta)] {
        let patch = dir.join(format!("{what}.patch"));
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> =
            vec![&what, input, &target, &"--patch", &patch];
        let o = run(&a);
        assert_eq!(code(&o), 1, "{what}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("journal needs recovery"), "{what}: {e}");
        assert!(e.contains("e2fsck -E journal_only"), "{what}: {e}");
        assert!(!patch.exists(), "{what}: no patch is left");
        assert_eq!(sha256(&target), before, "{what}: the target was written");
        // A dry run says so and writes nothing (apply's then finds that the unreplayed
        // target does not hold FROM).
        a.push(&"--dry-run");
        let o = run(&a);
        assert_eq!(
            code(&o),
            if what == "apply" { 1 } else { 0 },
            "{}",
            stderr(&o)
        );
        assert!(stderr(&o).contains("will be refused"), "{}", stderr(&o));
        assert_eq!(sha256(&target), before);
    }
    // --force rolls back anyway; replayed first (e2fsck), no --force is needed.
    let patch = dir.join("forced.patch");
    let o = run(&[&"rollback", &arch, &target, &"--patch", &patch, &"--force"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("--force: going on"), "{}", stderr(&o));
    let replayed = sparse_copy(&d.img, &dir.join("replayed.img"));
    let o = sh("e2fsck", &[&"-E", &"journal_only", &"-y", &replayed]);
    assert!(code(&o) <= 1, "{}", String::from_utf8_lossy(&o.stdout));
    expect(
        &[
            &"rollback",
            &arch,
            &replayed,
            &"--patch",
            &dir.join("clean.patch"),
        ],
        0,
    );
    d.assert_unchanged();
}
