//! Crash safety of `e2image-rs rollback`, by fault injection: the process stops (an injected
//! error, an abort, or a torn write: part of the write reaches the target, ending inside a
//! block, then an abort) right after its k-th write to the target or the patch state, for every
//! k of a small rollback and at chosen and random points of a large one. After each stop:
//! - `--resume` gives exactly the new state (byte for byte, the whole target);
//! - `--undo` instead gives exactly the old state;
//! - a stop inside a `--resume` or an `--undo` is finished the same way;
//! - a patch with a flipped byte anywhere (header, state record, data, tables) or cut short is
//!   refused before anything is written.

use crate::common::*;
use std::path::PathBuf;
use std::process::Output;

/// Runs `e2image-rs rollback ARGS`, stopping after write `k` of `fault` as it says.
fn rollback_faulty(args: &[&dyn AsRef<std::ffi::OsStr>], fault: Option<(u64, Stop)>) -> Output {
    run_faulty("rollback", args, fault)
}

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what}: {:?}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A rollback scenario: image, target before, and the target after a clean rollback.
struct Case {
    dir: PathBuf,
    image: PathBuf,
    old: PathBuf,
    new_sha: [u8; 32],
    old_sha: [u8; 32],
    snapshot: String,
}

impl Case {
    fn new(dir: PathBuf, image: PathBuf, old: PathBuf, snapshot: &str) -> Case {
        let t = sparse_copy(&old, &dir.join("clean.img"));
        let p = dir.join("clean.patch");
        let _ = std::fs::remove_file(&p);
        ok(
            &rollback_faulty(
                &[&image, &t, &"--snapshot", &snapshot, &"--patch", &p],
                None,
            ),
            "clean rollback",
        );
        Case {
            new_sha: sha256(&t),
            old_sha: sha256(&old),
            dir,
            image,
            old,
            snapshot: snapshot.into(),
        }
    }

    /// Starts a rollback that stops after write `k`; returns (target, patch), or None when the
    /// rollback finished before write `k`.
    fn interrupted(&self, k: u64, stop: Stop) -> Option<(PathBuf, PathBuf)> {
        let t = sparse_copy(&self.old, &self.dir.join("t.img"));
        let p = self.dir.join("t.patch");
        let _ = std::fs::remove_file(&p);
        let o = rollback_faulty(
            &[
                &self.image,
                &t,
                &"--snapshot",
                &self.snapshot,
                &"--patch",
                &p,
            ],
            Some((k, stop)),
        );
        if o.status.success() {
            assert_eq!(sha256(&t), self.new_sha);
            return None;
        }
        if stop == Stop::Error {
            assert_eq!(
                o.status.code(),
                Some(1),
                "{}",
                String::from_utf8_lossy(&o.stderr)
            );
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("--resume") || e.contains("untouched"), "{e}");
        }
        Some((t, p))
    }

    /// After a stop at write `k`: resume gives new, undo gives old, from the same point; a stop
    /// inside the resume or the undo is finished by running it again.
    fn check_point(&self, k: u64, stop: Stop) -> bool {
        let Some((t, p)) = self.interrupted(k, stop) else {
            return false;
        };
        let (t2, p2) = (
            sparse_copy(&t, &self.dir.join("t2.img")),
            sparse_copy(&p, &self.dir.join("t2.patch")),
        );
        ok(&rollback_faulty(&[&"--resume", &p, &t], None), "resume");
        assert_eq!(
            sha256(&t),
            self.new_sha,
            "--resume after a stop ({stop:?}) at write {k}"
        );
        ok(&rollback_faulty(&[&"--undo", &p2, &t2], None), "undo");
        assert_eq!(
            sha256(&t2),
            self.old_sha,
            "--undo after a stop ({stop:?}) at write {k}"
        );
        // Interrupt a resume and an undo too, then finish them.
        for (goal, sha) in [("--resume", self.new_sha), ("--undo", self.old_sha)] {
            let Some((t, p)) = self.interrupted(k, stop) else {
                continue;
            };
            let o = rollback_faulty(&[&goal, &p, &t], Some((2, Stop::nth(k + 1))));
            if !o.status.success() {
                ok(&rollback_faulty(&[&goal, &p, &t], None), goal);
            }
            assert_eq!(
                sha256(&t),
                sha,
                "{goal} interrupted after a stop ({stop:?}) at write {k}"
            );
        }
        true
    }

    /// Number of writes of the clean rollback: the last k at which a stop still interrupts it.
    fn writes(&self) -> u64 {
        let (mut lo, mut hi) = (1u64, 1u64 << 16);
        assert!(self.interrupted(lo, Stop::Error).is_some());
        assert!(self.interrupted(hi, Stop::Error).is_none());
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.interrupted(mid, Stop::Error).is_some() {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// next3_1snap rolled back to its snapshot: a few runs, so every write is a stop point.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn every_write_of_a_small_rollback() {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&["next3_1snap"])
        .remove("next3_1snap")
        .unwrap();
    let dir = scratch("rbf-small");
    let q = dir.join("q.qcow2");
    export_json(&[&"-Q", &"--fs-snapshots", &f.path, &q]);
    let old = sparse_copy(&f.path, &dir.join("old.img"));
    let case = Case::new(dir.clone(), q, old, "snap1");
    let mut k = 1;
    while case.check_point(k, Stop::nth(k)) {
        k += 1;
    }
    assert!(k > 5, "only {k} writes: the rollback is too small to test");
}

/// A large rollback (a 24 MiB file rewritten, exported with -d): stops at chosen points and at
/// random ones (the seed is printed; `E2IMAGE_RS_FAULT_SEED` replays it).
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection`"
)]
fn chosen_and_random_points_of_a_large_rollback() {
    if skip() {
        return;
    }
    let dir = scratch("rbf-large");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let mut g = Xorshift::new(0x2545_f491_4f6c_dd1d);
    let mut rnd = |n: usize| g.bytes(n);
    std::fs::write(src.join("big.bin"), rnd(24 << 20)).unwrap();
    let a = dir.join("a.img");
    mkfs_from(&src, &a, "64M");
    let b = sparse_copy(&a, &dir.join("b.img"));
    let new = dir.join("new.bin");
    std::fs::write(&new, rnd(24 << 20)).unwrap();
    debugfs_w(
        &b,
        &["rm /big.bin", &format!("write {} /big.bin", new.display())],
    );
    let q = dir.join("q.qcow2");
    export_json(&[&"-Q", &"-d", &"--snapshot", &a, &b, &q]);
    let case = Case::new(dir.clone(), q, b, "a.img");
    let w = case.writes();
    assert!(w > 20, "only {w} writes: the rollback is too small to test");
    for (i, k) in [1u64, 2, 3, 4, 7, 13, w / 2, w - 2, w - 1, w]
        .into_iter()
        .enumerate()
    {
        assert!(case.check_point(k, Stop::nth(i as u64)));
    }
    let seed = std::env::var("E2IMAGE_RS_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            t.map_or(1, |d| d.as_nanos() as u64 | 1)
        });
    let mut g = Xorshift::new(seed);
    let points: Vec<(u64, Stop)> = (0..6)
        .map(|_| {
            let x = g.next_u64();
            (1 + x % w, Stop::nth(x >> 32))
        })
        .collect();
    eprintln!("random stop points (E2IMAGE_RS_FAULT_SEED={seed}): {points:?}");
    for (k, stop) in points {
        assert!(case.check_point(k, stop));
    }
}

/// Flipped bytes anywhere in a patch are found before anything is written.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "fault injection needs `--features fault-injection` (an interrupted rollback's patch)"
)]
fn corrupt_patches_are_refused() {
    if skip() {
        return;
    }
    let f = snapshot_fixtures(&["next3_3snap"])
        .remove("next3_3snap")
        .unwrap();
    let dir = scratch("rbf-corrupt");
    let q = dir.join("q.qcow2");
    export_json(&[&"-Q", &"--fs-snapshots", &f.path, &q]);
    let old = sparse_copy(&f.path, &dir.join("old.img"));
    let case = Case::new(dir.clone(), q, old, "snap1");
    let (t, p) = case.interrupted(4, Stop::Error).unwrap();
    let t_sha = sha256(&t);
    let bytes = std::fs::read(&p).unwrap();
    let len = bytes.len();
    let mut offsets = vec![
        0, 9, 20, 100, 300, 507, 508, 512, 520, 1000, 1023, 1024, 1030, 5000,
    ];
    offsets.extend([len / 3, len / 2, len - 4096 - 1, len - 200, len - 1]);
    let mut x = 12345usize;
    for _ in 0..20 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345) % len;
        offsets.push(x);
    }
    for off in offsets {
        let mut bad = bytes.clone();
        bad[off] ^= 0x10;
        let pb = dir.join("bad.patch");
        std::fs::write(&pb, &bad).unwrap();
        for goal in ["--resume", "--undo"] {
            let o = rollback_faulty(&[&goal, &pb, &t], None);
            assert_eq!(o.status.code(), Some(1), "{goal} with byte {off} flipped");
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(
                e.contains("corrupt") && e.contains("nothing was written"),
                "{e}"
            );
            assert_eq!(sha256(&t), t_sha, "{goal} wrote with byte {off} flipped");
        }
    }
    // Cut short, or grown.
    for new_len in [len - 1, len / 2, 600, 0] {
        let pb = dir.join("short.patch");
        std::fs::write(&pb, &bytes[..new_len]).unwrap();
        let o = rollback_faulty(&[&"--resume", &pb, &t], None);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(sha256(&t), t_sha);
    }
    let mut longer = bytes.clone();
    longer.push(0);
    let pb = dir.join("long.patch");
    std::fs::write(&pb, &longer).unwrap();
    assert_eq!(
        rollback_faulty(&[&"--undo", &pb, &t], None).status.code(),
        Some(1)
    );
    // The intact patch still works.
    ok(&rollback_faulty(&[&"--undo", &p, &t], None), "undo");
    assert_eq!(sha256(&t), case.old_sha);
}
