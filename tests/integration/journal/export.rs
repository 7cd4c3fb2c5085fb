//! The faithful export of a dirty filesystem is replay-complete; `--replay` writes the replayed
//! state; both on -Q and -r, with and without -d, on several journal formats.

use super::{cat, differing, dirty, record_flags, replay_copy, to_raw, unavailable, Dirty};
use crate::common::{code, expect, fsck, run, scratch, sh, stderr};
use std::path::Path;

/// Journal formats: (name, mke2fs args, size, jo args).
const FORMATS: [(&str, &[&str], &str, &str); 3] = [
    ("csum3", &["-t", "ext4", "-b", "4096"], "64M", "-c"),
    ("csum2-1k", &["-t", "ext4", "-b", "1024"], "32M", "-c -v 2"),
    ("ext3", &["-t", "ext3", "-b", "1024"], "32M", ""),
];

/// Exports `d` with `args` into `dir/name` (-Q images converted to raw); returns the raw.
fn export(d: &Dirty, dir: &Path, name: &str, args: &[&str], want: i32) -> std::path::PathBuf {
    let qcow = args.contains(&"-Q");
    let out = dir.join(format!("{name}.{}", if qcow { "qcow2" } else { "out" }));
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|s| s as _).collect();
    a.push(&d.img);
    a.push(&out);
    let o = run(&a);
    assert_eq!(code(&o), want, "{args:?}: {}", stderr(&o));
    d.assert_unchanged();
    if qcow {
        crate::common::assert_qemu_check(&out);
        to_raw(&out)
    } else {
        out
    }
}

#[test]
fn the_faithful_export_replays_to_the_replayed_source() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-faithful");
    for (name, mkfs, size, jo) in FORMATS {
        let d = dirty(&dir, name, mkfs, size, jo);
        for (tag, args, data) in [
            ("q", &["-Q"][..], false),
            ("qd", &["-Q", "-d"][..], true),
            ("r", &["-r"][..], false),
            ("rd", &["-r", "-d"][..], true),
        ] {
            let raw = export(&d, &dir, &format!("{name}-{tag}"), args, 0);
            // As on disk: still needs recovery, and the new file does not exist yet.
            let o = sh("dumpe2fs", &[&"-h", &raw]);
            assert!(String::from_utf8_lossy(&o.stdout).contains("needs_recovery"));
            let replayed = replay_copy(&raw);
            let bad = differing(&replayed, &d.oracle, data, d.bs);
            assert!(
                bad.is_empty(),
                "{name} {args:?}: blocks {bad:?} differ after replay"
            );
            if data {
                assert_eq!(cat(&replayed, &d.new_path), d.new_file, "{name} {args:?}");
            }
            assert_eq!(fsck(&replayed), fsck(&d.oracle), "{name} {args:?}");
        }
    }
}

#[test]
fn replay_writes_the_replayed_state() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-replay");
    for (name, mkfs, size, jo) in FORMATS {
        let d = dirty(&dir, name, mkfs, size, jo);
        for (tag, args, data) in [
            ("q", &["-Q", "--replay"][..], false),
            ("qd", &["-Q", "-d", "--replay"][..], true),
            ("r", &["-r", "--replay"][..], false),
            ("rd", &["-r", "-d", "--replay"][..], true),
        ] {
            let raw = export(&d, &dir, &format!("{name}-{tag}"), args, 0);
            let bad = differing(&raw, &d.oracle, data, d.bs);
            assert!(
                bad.is_empty(),
                "{name} {args:?}: blocks {bad:?} differ from jr"
            );
            let o = sh("dumpe2fs", &[&"-h", &raw]);
            assert!(!String::from_utf8_lossy(&o.stdout).contains("needs_recovery"));
            assert_eq!(fsck(&raw), fsck(&d.oracle), "{name} {args:?}");
            if data {
                assert_eq!(cat(&raw, &d.new_path), d.new_file, "{name} {args:?}");
            }
            if args.contains(&"-Q") {
                let q = raw.with_extension("qcow2");
                assert_eq!(record_flags(&q) & 8, 8, "the record says replayed");
            }
        }
    }
}

#[test]
fn replay_of_a_qcow2_export_and_of_older_states() {
    if unavailable() {
        return;
    }
    let dir = scratch("journal-states");
    let d = dirty(&dir, "a", FORMATS[0].1, FORMATS[0].2, FORMATS[0].3);
    // A QCOW2 export as on disk, replayed afterwards by e2image-rs itself.
    let q = dir.join("faithful.qcow2");
    expect(&[&"-Q", &"-d", &d.img, &q], 0);
    let raw = dir.join("from-qcow.raw");
    expect(&[&"-r", &"-d", &"--replay", &q, &raw], 0);
    assert!(differing(&raw, &d.oracle, true, d.bs).is_empty());
    // An older point-in-time image that needs recovery too: each state is replayed.
    let b_img = dir.join("b.img");
    std::fs::copy(&d.oracle, &b_img).unwrap();
    let b = super::make_dirty(&b_img, FORMATS[0].3, "/second", "/newdir/new.bin", None);
    let both = dir.join("both.qcow2");
    let o = expect(
        &[
            &"-Q",
            &"-d",
            &"--replay",
            &"--snapshot",
            &d.img,
            &b.img,
            &both,
        ],
        0,
    );
    assert_eq!(
        stderr(&o).matches("replayed in memory").count(),
        2,
        "{}",
        stderr(&o)
    );
    crate::common::assert_qemu_check(&both);
    let list = crate::common::snapshot_list(&both);
    let older = dir.join("older.raw");
    assert_eq!(list["snapshots"][1]["name"], "a.img");
    crate::common::extract_state(&both, "a.img", &older);
    assert!(differing(&older, &d.oracle, true, d.bs).is_empty());
    let current = to_raw(&both);
    assert!(differing(&current, &b.oracle, true, b.bs).is_empty());
    d.assert_unchanged();
    b.assert_unchanged();
}
