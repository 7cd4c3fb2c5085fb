//! `-s`: names and symlink targets scrambled (docs/scrambling.md), over the fixture matrix
//! and a filesystem the kernel wrote (htree directories of several leaves, casefolded too,
//! fast and slow symlinks, an inline-data directory, deleted entries). Every output must
//! pass `e2fsck -fn`, hold none of the source's names anywhere in its bytes, keep its htree
//! directories indexed, and be the same bytes for the same seed (other bytes for another).

use crate::common::kernel::{can_mount, mkfs, Mounted};
use crate::common::*;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

/// Exports `src` with `-r -s --scramble-seed SEED` (plus `extra`) to `out`; returns the
/// exit status and the JSON summary.
fn scramble(src: &Path, out: &Path, seed: u64, extra: &[&str]) -> (i32, serde_json::Value) {
    let seed = seed.to_string();
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"-r", &"-s", &"--scramble-seed", &seed, &"--json"];
    for e in extra {
        args.push(e);
    }
    args.push(&src);
    args.push(&out);
    let o = run(&args);
    let json = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (code(&o), json)
}

/// Names shorter than this are searched as directory entries only (preceded by their
/// `name_len` and a file type byte): anywhere, random scrambled names would hold them.
const SHORT: usize = 12;

/// The names of `names` found in the non-zero blocks of `img` (blocks of `bs` bytes): long
/// ones anywhere, short ones after their `name_len` byte.
fn names_found(img: &Path, bs: usize, names: &[Vec<u8>]) -> Vec<String> {
    let mut by_len: BTreeMap<usize, HashSet<&[u8]>> = BTreeMap::new();
    for n in names {
        by_len.entry(n.len()).or_default().insert(n);
    }
    let mut found = HashSet::new();
    for_each_nonzero_block(img, bs, |_, b| {
        for (&len, set) in &by_len {
            for (at, w) in b.windows(len).enumerate() {
                let entry = len >= SHORT || (at >= 2 && usize::from(b[at - 2]) == len);
                if entry && set.contains(w) {
                    found.insert(String::from_utf8_lossy(w).into_owned());
                }
            }
        }
    });
    let mut v: Vec<String> = found.into_iter().collect();
    v.sort();
    v
}

/// True if debugfs shows inode `ino` of `img` with EXT4_INDEX_FL (0x1000).
fn indexed(img: &Path, ino: u32) -> bool {
    let o = sh("debugfs", &[&"-R", &format!("stat <{ino}>"), &img]);
    let s = stdout(&o);
    let flags = s
        .split("Flags: 0x")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or(0);
    flags & 0x1000 != 0
}

/// The inode number of `path` in `img` (`debugfs stat`; 0 if not found).
fn inode_of(img: &Path, path: &str) -> u32 {
    let o = sh("debugfs", &[&"-R", &format!("stat {path}"), &img]);
    stdout(&o)
        .split("Inode: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The names of the fixture tree (fixtures/make-tree.py) of 4 bytes or more, and its
/// symlink targets.
fn fixture_names() -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = [
        "many",
        "longnames",
        "xattr",
        "small.txt",
        "big300k.bin",
        "sparse",
        "frag128.bin",
        "tind80m.bin",
        "links",
        "fast",
        "slow",
        "hardlink",
        "special",
        "fifo",
        "null",
        "empty",
        "deep.txt",
        "bulk",
        "random1.bin",
        "random2.bin",
        "random3.bin",
        "../xattr/small.txt",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    v.extend((0..400).map(|i| format!("f{i:03}").into_bytes()));
    v.extend((0..300).map(|i| format!("{}{i:03}", "n".repeat(237)).into_bytes()));
    v.push(vec![b's'; 32]);
    v
}

const MATRIX: &[&str] = &[
    "ext2_1k",
    "ext3_1k_htree",
    "ext3_4k",
    "ext4_default_4k_htree",
    "ext4_1k",
    "ext4_inline",
    "ext4_casefold",
    "ext4_bigalloc_4k",
    "ext4_bigalloc_1k",
    "ext4_64k_htree",
    "ext4_largedir_htree",
    "ext4_inode128",
    "ext4_noextent",
];

#[test]
fn fixture_matrix_scrambles_clean_and_nameless() {
    if skip() {
        return;
    }
    let fx = fixtures(MATRIX);
    let dir = scratch("scramble-matrix");
    let names = fixture_names();
    for name in MATRIX {
        let f = &fx[*name];
        let out = dir.join(format!("{name}.raw"));
        let (c, json) = scramble(&f.path, &out, 11, &[]);
        assert_eq!(c, 0, "{name}: exit {c}: {json}");
        assert!(
            json["scramble"]["names"].as_u64().unwrap() > 700,
            "{name}: {json}"
        );
        if f.fsck_clean {
            assert_eq!(
                fsck(&out),
                0,
                "{name}: e2fsck -fn fails on the scrambled image"
            );
        }
        let found = names_found(&out, f.block_size as usize, &names);
        assert!(
            found.is_empty(),
            "{name}: source names in the output: {found:?}"
        );
        for d in ["/many", "/longnames"] {
            let ino = inode_of(&f.path, d);
            if indexed(&f.path, ino) {
                assert!(
                    indexed(&out, ino),
                    "{name}: {d} (inode {ino}) lost its index"
                );
            }
        }
        let again = dir.join(format!("{name}.again.raw"));
        assert_eq!(scramble(&f.path, &again, 11, &[]).0, 0);
        assert_eq!(
            sha256(&out),
            sha256(&again),
            "{name}: same seed, other bytes"
        );
        let other = dir.join(format!("{name}.other.raw"));
        assert_eq!(scramble(&f.path, &other, 12, &[]).0, 0);
        assert_ne!(
            sha256(&out),
            sha256(&other),
            "{name}: another seed, same bytes"
        );
        for p in [&out, &again, &other] {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[test]
fn scramble_with_data_is_refused_unless_allowed() {
    if skip() {
        return;
    }
    let dir = scratch("scramble-data");
    let img = small_image(&dir);
    let out = dir.join("out.raw");
    let o = expect(&[&"-r", &"-s", &"-d", &img, &out], 2);
    assert!(stderr(&o).contains("--allow-data"), "{}", stderr(&o));
    assert!(!out.exists());
    expect(&[&"-r", &"-s", &"-d", &"--allow-data", &img, &out], 0);
    let o = expect(
        &[&"-Q", &"-s", &"--name", &"x", &img, &dir.join("a.qcow2")],
        2,
    );
    assert!(
        stderr(&o).contains("does not apply to archives"),
        "{}",
        stderr(&o)
    );
}

/// Names the kernel test creates: distinctive, all searched for in the output.
fn kernel_name(dir: &str, i: usize) -> String {
    format!("{dir}-secret-name-{i:05}")
}

/// Fills a kernel-mounted filesystem: an htree directory of 3000 entries (1000 deleted),
/// fast and slow symlinks, a small directory (inline with inline_data). Returns the names
/// and targets created, deleted ones included.
fn fill(m: &Mounted) -> Vec<Vec<u8>> {
    let mut names = Vec::new();
    for d in ["bigdir"] {
        std::fs::create_dir_all(m.path(d)).unwrap();
        for i in 0..3000 {
            let n = kernel_name(d, i);
            std::fs::write(m.path(&format!("{d}/{n}")), b"").unwrap();
            names.push(n.into_bytes());
        }
        for i in (0..3000).step_by(3) {
            std::fs::remove_file(m.path(&format!("{d}/{}", kernel_name(d, i)))).unwrap();
        }
        names.push(d.as_bytes().to_vec());
    }
    std::fs::create_dir(m.path("smalldir")).unwrap();
    for i in 0..2 {
        let n = kernel_name("inlined", i);
        std::fs::write(m.path(&format!("smalldir/{n}")), b"").unwrap();
        names.push(n.into_bytes());
    }
    names.push(b"smalldir".to_vec());
    for i in 0..20 {
        let fast = format!("../fast-target-secret-{i:03}");
        let slow = format!("/slow/{}-{i:03}", "slow-target-secret".repeat(6));
        let (lf, ls) = (
            format!("fastlink-secret-{i:03}"),
            format!("slowlink-secret-{i:03}"),
        );
        std::os::unix::fs::symlink(&fast, m.path(&format!("smalldir/{lf}"))).unwrap();
        std::os::unix::fs::symlink(&slow, m.path(&ls)).unwrap();
        if i % 4 == 0 {
            std::fs::remove_file(m.path(&ls)).unwrap();
        }
        names.extend([fast, slow, lf, ls].map(String::into_bytes));
    }
    names
}

#[test]
fn kernel_written_filesystems_scramble_clean_and_nameless() {
    if skip() {
        return;
    }
    if !can_mount() {
        return skipped("needs root and loop devices to let the kernel write the filesystem");
    }
    let dir = scratch("scramble-kernel");
    for (label, opts) in [
        ("csum", vec!["-b", "1024"]),
        ("inline", vec!["-O", "inline_data"]),
    ] {
        let img = dir.join(format!("{label}.img"));
        mkfs(&img, 64, &opts);
        let Some(m) = Mounted::new(&img, &dir.join(format!("m-{label}")), "rw") else {
            return skipped("mounting a loop device failed");
        };
        let names = fill(&m);
        drop(m);
        assert_eq!(
            fsck(&img),
            0,
            "{label}: the kernel's filesystem is not clean"
        );
        let bigdir = inode_of(&img, "/bigdir");
        assert!(indexed(&img, bigdir), "{label}: /bigdir is not an htree");
        let out = dir.join(format!("{label}.raw"));
        let (c, json) = scramble(&img, &out, 5, &[]);
        assert_eq!(c, 0, "{label}: {json}");
        assert_eq!(
            fsck(&out),
            0,
            "{label}: e2fsck -fn fails on the scrambled image"
        );
        let bs = if label == "csum" { 1024 } else { 4096 };
        let found = names_found(&out, bs, &names);
        assert!(
            found.is_empty(),
            "{label}: source names in the output: {found:?}"
        );
        assert!(indexed(&out, bigdir), "{label}: /bigdir lost its index");
        let again = dir.join(format!("{label}.again.raw"));
        assert_eq!(scramble(&img, &again, 5, &[]).0, 0);
        assert_eq!(
            sha256(&out),
            sha256(&again),
            "{label}: same seed, other bytes"
        );
        let q = dir.join(format!("{label}.qcow2"));
        let o = expect(&[&"-Q", &"-s", &img, &q], 0);
        assert!(stderr(&o).contains("--scramble-seed"), "{}", stderr(&o));
    }
}

#[test]
fn a_journal_needing_recovery_needs_replay() {
    if skip() {
        return;
    }
    let dir = scratch("scramble-dirty");
    let img = small_image(&dir);
    debugfs_w(&img, &["feature needs_recovery"]);
    let out = dir.join("out.raw");
    let o = expect(&[&"-r", &"-s", &img, &out], 2);
    assert!(stderr(&o).contains("--replay"), "{}", stderr(&o));
    assert!(!out.exists());
    expect(&[&"-r", &"-s", &"--replay", &img, &out], 0);
    assert_eq!(
        fsck(&out),
        0,
        "e2fsck -fn fails on the replayed, scrambled image"
    );
}

/// A casefolded htree directory (this kernel may lack CONFIG_UNICODE, so e2fsprogs makes it:
/// `mke2fs -O casefold -d`, EXT4_CASEFOLD_FL set with debugfs, the index rebuilt with
/// `e2fsck -fyD`, which hashes the casefolded names): the scrambled names hash into their
/// leaves as e2fsck checks them.
#[test]
fn casefolded_htree_scrambles_clean() {
    if skip() {
        return;
    }
    let dir = scratch("scramble-casefold");
    let tree = dir.join("tree/Folded");
    std::fs::create_dir_all(&tree).unwrap();
    let mut names: Vec<Vec<u8>> = vec![b"Folded".to_vec()];
    for i in 0..1500 {
        let n = format!("CaseFolded-Secret-{i:05}");
        std::fs::write(tree.join(&n), b"").unwrap();
        names.push(n.into_bytes());
    }
    let img = dir.join("cf.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let o = sh(
        "mke2fs",
        &[
            &"-q",
            &"-F",
            &"-t",
            &"ext4",
            &"-O",
            &"casefold",
            &"-d",
            &dir.join("tree"),
            &img,
        ],
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    debugfs_w(&img, &["set_inode_field /Folded flags 0x40080000"]);
    let o = sh("e2fsck", &[&"-fyD", &img]);
    assert!(code(&o) <= 1, "e2fsck -fyD: {}", stdout(&o));
    assert_eq!(fsck(&img), 0);
    let ino = inode_of(&img, "/Folded");
    assert!(
        indexed(&img, ino),
        "the casefolded directory is not an htree"
    );
    let out = dir.join("cf.raw");
    let (c, json) = scramble(&img, &out, 9, &[]);
    assert_eq!(c, 0, "{json}");
    assert_eq!(
        fsck(&out),
        0,
        "e2fsck -fn fails on the scrambled casefolded htree"
    );
    assert!(indexed(&out, ino));
    let found = names_found(&out, 4096, &names);
    assert!(found.is_empty(), "source names in the output: {found:?}");
}
