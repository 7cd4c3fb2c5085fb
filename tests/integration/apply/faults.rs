//! Crash safety of `e2image-rs apply`, by fault injection: the process stops (an injected
//! error, an abort, or a torn write or discard: part of it reaches the target, ending inside a
//! block, then an abort) right after its k-th write to the target (discards included) or to
//! the patch state, for every k of an apply that writes and discards. After each stop:
//! `--resume` gives exactly TO's target (byte for byte, the whole target, as a clean apply
//! leaves it), `--undo` exactly FROM's; a stop inside a `--resume` or an `--undo` is finished
//! by running it again. On an image file and on a loop device (BLKZEROOUT discards).

use super::builder::make_delta;
use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::Output;

/// Runs `e2image-rs apply ARGS`, stopping after write `k` of `fault` as it says.
fn apply_faulty(args: &[&dyn AsRef<std::ffi::OsStr>], fault: Option<(u64, Stop)>) -> Output {
    run_faulty("apply", args, fault)
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An apply scenario: the delta, FROM's image, and TO's target after a clean apply.
struct Case {
    dir: PathBuf,
    delta: PathBuf,
    old: PathBuf,
    new_sha: [u8; 32],
    old_sha: [u8; 32],
    /// Apply through a loop device over the target file.
    device: bool,
}

impl Case {
    fn new(dir: &Path, delta: PathBuf, old: PathBuf, device: bool) -> Case {
        let mut c = Case {
            dir: dir.to_path_buf(),
            delta,
            old_sha: sha256(&old),
            old,
            new_sha: [0; 32],
            device,
        };
        let (t, p) = c.fresh("clean");
        c.on_target(&t, |dev| {
            ok(
                &apply_faulty(&[&c.delta, &dev, &"--patch", &p], None),
                "clean apply",
            )
        });
        c.new_sha = sha256(&t);
        assert_ne!(c.new_sha, c.old_sha);
        c
    }

    /// A fresh copy of FROM and a patch path that does not exist.
    fn fresh(&self, name: &str) -> (PathBuf, PathBuf) {
        let t = sparse_copy(&self.old, &self.dir.join(format!("{name}.img")));
        let p = self.dir.join(format!("{name}.patch"));
        let _ = std::fs::remove_file(&p);
        (t, p)
    }

    /// Runs `f` with the target as the run names it: the file, or a loop device over it.
    fn on_target<T>(&self, t: &Path, f: impl FnOnce(&Path) -> T) -> T {
        if !self.device {
            return f(t);
        }
        let lo = Loop::attach(t).expect("a loop device");
        let r = f(Path::new(&lo.dev));
        let _ = sh("blockdev", &[&"--flushbufs", &lo.dev]);
        drop(lo);
        r
    }

    /// Starts an apply that stops after write `k`; returns (target, patch), or None when it
    /// finished before write `k`.
    fn interrupted(&self, k: u64, stop: Stop) -> Option<(PathBuf, PathBuf)> {
        let (t, p) = self.fresh("t");
        let o = self.on_target(&t, |dev| {
            apply_faulty(&[&self.delta, &dev, &"--patch", &p], Some((k, stop)))
        });
        if o.status.success() {
            assert_eq!(sha256(&t), self.new_sha);
            return None;
        }
        if stop == Stop::Error {
            assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
            let e = stderr(&o);
            assert!(
                e.contains("e2image-rs apply --resume") || e.contains("untouched"),
                "{e}"
            );
        }
        Some((t, p))
    }

    /// Finishes `goal` (`--resume` or `--undo`) on a target left by a stop.
    fn finish(&self, goal: &str, p: &Path, t: &Path, fault: Option<(u64, Stop)>) -> Output {
        self.on_target(t, |dev| apply_faulty(&[&goal, &p, &dev], fault))
    }

    /// After a stop at write `k`: resume gives TO, undo gives FROM; a stop inside the resume
    /// or the undo is finished by running it again.
    fn check_point(&self, k: u64, stop: Stop) -> bool {
        let Some((t, p)) = self.interrupted(k, stop) else {
            return false;
        };
        let (t2, p2) = (
            sparse_copy(&t, &self.dir.join("t2.img")),
            sparse_copy(&p, &self.dir.join("t2.patch")),
        );
        ok(&self.finish("--resume", &p, &t, None), "resume");
        assert_eq!(
            sha256(&t),
            self.new_sha,
            "--resume after a stop ({stop:?}) at write {k}"
        );
        ok(&self.finish("--undo", &p2, &t2, None), "undo");
        assert_eq!(
            sha256(&t2),
            self.old_sha,
            "--undo after a stop ({stop:?}) at write {k}"
        );
        for (goal, sha) in [("--resume", self.new_sha), ("--undo", self.old_sha)] {
            let Some((t, p)) = self.interrupted(k, stop) else {
                continue;
            };
            let o = self.finish(goal, &p, &t, Some((2, Stop::nth(k + 1))));
            if !o.status.success() {
                ok(&self.finish(goal, &p, &t, None), goal);
            }
            assert_eq!(
                sha256(&t),
                sha,
                "{goal} interrupted after a stop ({stop:?}) at write {k}"
            );
        }
        true
    }

    /// Every write, in turn.
    fn every_write(&self) -> u64 {
        let mut k = 1;
        while self.check_point(k, Stop::nth(k)) {
            k += 1;
        }
        k - 1
    }
}

/// b → c with file data: directory and inode-table writes, and the discard of the deleted
/// file's blocks; on an image file (holes punched).
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn every_write_of_an_apply_with_discards() {
    if skip() {
        return;
    }
    every_write_of_the_bc_delta(&scratch("apf-file"), false);
}

/// The chain's b → c delta with file data, applied onto b (a loop device over it when
/// `on_device`), stopped at every write in turn.
fn every_write_of_the_bc_delta(dir: &Path, on_device: bool) {
    let [_a, b, c] = chain(dir);
    let d = dir.join("bc.qcow2");
    make_delta(&b, &c, true, &d);
    let case = Case::new(dir, d, b, on_device);
    let n = case.every_write();
    eprintln!("{n} writes, each a stop point");
    assert!(n > 5, "only {n} writes: the apply is too small to test");
}

/// An 8 MiB file deleted (8 MiB discarded, in 1 MiB pieces) and another written (8 MiB of
/// new data), on an image file: every write a stop point.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn every_write_of_a_larger_apply() {
    if skip() {
        return;
    }
    let dir = scratch("apf-large");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut g = Xorshift::new(0x2545_f491_4f6c_dd1d);
    let mut rnd = |n: usize| g.bytes(n);
    std::fs::write(src.join("old.bin"), rnd(8 << 20)).unwrap();
    std::fs::write(src.join("keep.bin"), rnd(1 << 20)).unwrap();
    let a = dir.join("a.img");
    mkfs_from(&src, &a, "64M");
    let b = sparse_copy(&a, &dir.join("b.img"));
    let new = dir.join("new.bin");
    std::fs::write(&new, rnd(8 << 20)).unwrap();
    debugfs_w(
        &b,
        &[&format!("write {} /new.bin", new.display()), "rm /old.bin"],
    );
    let d = dir.join("ab.qcow2");
    make_delta(&a, &b, true, &d);
    let case = Case::new(&dir, d, a, false);
    let n = case.every_write();
    eprintln!("{n} writes, each a stop point");
    assert!(n > 15, "only {n} writes: the apply is too small to test");
}

/// The same on a loop device (BLKZEROOUT discards, torn ones included).
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn every_write_of_an_apply_on_a_block_device() {
    if skip() {
        return;
    }
    let dir = scratch("apf-dev");
    let probe = dir.join("probe.img");
    std::fs::write(&probe, vec![0u8; 1 << 20]).unwrap();
    if Loop::attach(&probe).is_none() {
        skipped("cannot set up a loop device here");
        return;
    }
    every_write_of_the_bc_delta(&dir, true);
}

/// An apply stopped part-way leaves the target marked with its patch: another apply, or a
/// rollback, onto it is refused, naming the patch; the patch finishes with either command.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn part_way_targets_name_their_patch() {
    if skip() {
        return;
    }
    let dir = scratch("apf-partway");
    let [_a, b, c] = chain(&dir);
    let d = dir.join("bc.qcow2");
    make_delta(&b, &c, true, &d);
    let t = sparse_copy(&b, &dir.join("t.img"));
    let p = dir.join("a.patch");
    let o = apply_faulty(&[&d, &t, &"--patch", &p], Some((4, Stop::Error)));
    let e = stderr(&o);
    assert_eq!(code(&o), 1, "{e}");
    assert!(
        e.contains("part-way") && e.contains("e2image-rs apply --resume"),
        "{e}"
    );
    let o = sh("dumpe2fs", &[&"-h", &t]);
    assert!(stdout(&o).contains("e2image-rs apply: "), "{}", stdout(&o));
    let before = sha256(&t);
    let e = stderr(&apply_faulty(&[&d, &t, &"--patch", &dir.join("p2")], None));
    assert!(
        e.contains("part-way through the apply of patch") && e.contains("a.patch"),
        "{e}"
    );
    let q = dir.join("c.qcow2");
    expect(&[&"-Q", &c, &q], 0);
    let e = stderr(&expect(
        &[&"rollback", &q, &t, &"--patch", &dir.join("p3")],
        1,
    ));
    assert!(e.contains("part-way through the apply of patch"), "{e}");
    assert!(e.contains("e2image-rs apply --resume PATCH"), "{e}");
    assert_eq!(sha256(&t), before);
    let o = expect(&[&"rollback", &"--resume", &p, &t], 0);
    assert!(
        stdout(&o).contains("holds the delta's TO state"),
        "{}",
        stdout(&o)
    );
    assert_eq!(fsck(&t), fsck(&c));
}
