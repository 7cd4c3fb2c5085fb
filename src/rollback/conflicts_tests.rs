//! Unit tests of the conflict check: inode changes and the refusal message.

use super::*;

/// A regular file created, changed and modified at 2024-01-01 00:00:00, generation 7.
fn file() -> Inode {
    let t = 1_704_067_200;
    Inode {
        i_mode: 0x81A4,
        i_size: 9,
        i_ctime: t,
        i_mtime: t,
        i_dtime: 0,
        i_links_count: 1,
        i_blocks: 8,
        i_flags: 0,
        osd1: 0,
        i_block: [0; 60],
        i_generation: 7,
        i_file_acl: 0,
        i_extra_isize: 32,
        i_ctime_extra: 0,
        i_mtime_extra: 0,
        i_crtime: t,
        i_crtime_extra: 0,
    }
}

#[test]
fn the_same_file_unchanged_is_no_conflict() {
    let mut now = file();
    now.i_links_count = 2;
    assert_eq!(inode_change(12, &file(), &now), None);
}

#[test]
fn another_file_by_type_generation_or_creation() {
    let mut now = file();
    now.i_generation = 9;
    now.i_crtime += 86400;
    now.i_ctime += 86400;
    assert_eq!(
        inode_change(12, &file(), &now).unwrap().1,
        "the target's inode 12 is a different file now (generation 7→9, created 2024-01-01 00:00:00→2024-01-02 00:00:00)"
    );
    let mut now = file();
    now.i_mode = 0x41ED;
    let (kind, why) = inode_change(12, &file(), &now).unwrap();
    assert_eq!(kind, Change::Other);
    assert!(why.contains("(a regular file→a directory)"), "{why}");
    // Creation times count only where both inodes have them.
    let mut now = file();
    (now.i_extra_isize, now.i_crtime) = (4, 0);
    assert_eq!(inode_change(12, &file(), &now), None);
    // debugfs: generation 0 in both, only the creation time tells.
    let (mut was, mut now) = (file(), file());
    (was.i_generation, now.i_generation) = (0, 0);
    now.i_crtime_extra = 5 << 2;
    assert_eq!(
        inode_change(12, &was, &now).unwrap().1,
        "the target's inode 12 is a different file now (created 2024-01-01 00:00:00.000000000→2024-01-01 00:00:00.000000005)"
    );
}

#[test]
fn modified_changed_or_older() {
    let mut now = file();
    now.i_mtime += 60;
    now.i_ctime += 60;
    assert_eq!(
        inode_change(12, &file(), &now).unwrap().1,
        "the target's inode 12 was modified since the state (mtime 2024-01-01 00:00:00→2024-01-01 00:01:00)"
    );
    // mtime set back (touch -d, rsync -t): ctime still tells.
    let mut now = file();
    now.i_ctime_extra = 1 << 2;
    let (kind, why) = inode_change(12, &file(), &now).unwrap();
    assert!(
        why.starts_with(
            "the target's inode 12 was changed since the state (its data may be as it was"
        ),
        "{why}"
    );
    assert_eq!(kind, Change::CtimeOnly);
    assert!(
        why.ends_with("(ctime 2024-01-01 00:00:00.000000000→2024-01-01 00:00:00.000000001)"),
        "{why}"
    );
    // A target older than the state.
    let mut was = file();
    was.i_mtime += 60;
    let (kind, why) = inode_change(12, &was, &file()).unwrap();
    assert_eq!(kind, Change::Older);
    assert!(why.contains("is older than the state's file"), "{why}");
    // Epoch bits count: the same low 32 bits, 2^32 seconds later.
    let mut now = file();
    now.i_mtime_extra = 1;
    let (kind, why) = inode_change(12, &file(), &now).unwrap();
    assert_eq!(kind, Change::Modified);
    assert!(
        why.contains("was modified since the state (mtime 2024-01-01 00:00:00→2160-"),
        "{why}"
    );
}

#[test]
fn render_lists_both_kinds_and_the_rest() {
    let mut c = Conflicts::default();
    c.by_inode.insert(
        12,
        Conflict {
            inode: Some(Reused {
                kind: Change::Other,
                why: "the target's inode 12 is a different file now (generation 7→9)".into(),
                blocks: 2,
            }),
            blocks: Some(BlockUse {
                blocks: 1,
                first_block: 500,
                logical: 3,
                now: "file block 0 of inode 13".into(),
            }),
        },
    );
    c.by_inode.insert(14, Conflict::default());
    c.paths.insert(12, "/d/f".into());
    let s = c.render(1);
    assert!(s.contains("  inode 12 /d/f: the target's inode 12 is a different file now (generation 7→9), which holds 2 of its data block(s) at the same offsets; 1 block(s), e.g. block 500 (file block 3) is now file block 0 of inode 13\n"), "{s}");
    assert!(s.ends_with("  … and 1 more"), "{s}");
    assert!(
        s.starts_with("2 restored file(s) cannot be restored safely"),
        "{s}"
    );
    assert!(
        s.contains("1 would read data blocks that the target now uses"),
        "{s}"
    );
    assert!(
        s.contains("1 have their inode number taken by a different file"),
        "{s}"
    );
}

#[test]
fn the_headline_names_only_the_causes_that_apply() {
    let mut c = Conflicts::default();
    c.by_inode.insert(
        12,
        Conflict {
            inode: Some(Reused {
                kind: Change::CtimeOnly,
                why: "the target's inode 12 was changed since the state".into(),
                blocks: 1,
            }),
            blocks: None,
        },
    );
    let s = c.render(5);
    let head = s.lines().next().unwrap();
    assert!(
        head.contains("1 only had their inode changed since the state (ctime: a chmod"),
        "{head}"
    );
    assert!(!head.contains("now uses for other inodes"), "{head}");
    assert!(!head.contains("different file"), "{head}");
}
