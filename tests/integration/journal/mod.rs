//! Exports of filesystems whose journal needs recovery, against e2fsprogs: dirty journals are
//! made with debugfs (`jo`, `jw`, `jc`: notes jbd2-journal.md §6) from a real change (a new
//! directory and file, a file deleted) whose metadata blocks go into the journal while the
//! new file's data is written in place (as ordered mode does). The oracle is a copy replayed
//! by `debugfs -w -R jr`; blocks are compared on everything `e2image -r` copies from it. The
//! source's SHA-256 must not change.
//!
//! Superblock fields a replay by the tools updates and ours leaves (`s_wtime`, `s_lastcheck`,
//! `s_kbytes_written`, their `_hi` bytes, the checksum) are masked before comparing.

mod export;
mod fast_commits;
mod orphans;
mod special;
mod targets;

use crate::common::{
    block_at, code, debugfs_w, for_each_nonzero_block, sh, sha256, skip, skip_missing,
};
use std::path::{Path, PathBuf};

/// A dirty filesystem and its replayed copy.
pub(super) struct Dirty {
    pub(super) img: PathBuf,
    pub(super) oracle: PathBuf,
    pub(super) sha: [u8; 32],
    /// The bytes of the file that exists only after replay.
    pub(super) new_file: Vec<u8>,
    /// Its path.
    pub(super) new_path: String,
    pub(super) bs: usize,
}

impl Dirty {
    /// The source must not have changed.
    pub(super) fn assert_unchanged(&self) {
        assert_eq!(sha256(&self.img), self.sha, "the source was written");
    }
}

/// True (after saying so) when the tools are missing.
pub(super) fn no_tools() -> bool {
    skip()
}

/// Makes `dir/NAME.img` with `mke2fs MKFS SIZE` and a file `/old.bin`, then a dirty
/// journal (`jo JO`) for: `mkdir /newdir`, a new file `/newdir/new.bin`, `rm /old.bin`
/// (see [`make_dirty`]).
pub(super) fn dirty(dir: &Path, name: &str, mkfs: &[&str], size: &str, jo: &str) -> Dirty {
    let img = dir.join(format!("{name}.img"));
    let mut c = std::process::Command::new("mke2fs");
    c.args(["-q", "-F"]).args(mkfs).arg(&img).arg(size);
    assert!(c.status().unwrap().success());
    let old = dir.join("old.bin");
    std::fs::write(&old, pattern(30_000, 7)).unwrap();
    debugfs_w(&img, &[&format!("write {} /old.bin", old.display())]);
    make_dirty(&img, jo, "/newdir", "/old.bin", None)
}

/// Gives `img` a journal needing recovery for: `mkdir NEWDIR`, a new file `NEWDIR/new.bin`
/// (70 000 bytes), `rm RM`. The metadata blocks of that change go into the journal (see
/// [`journal`]); the new file's data is written in place (as ordered mode does). Returns it
/// with its replayed copy (`IMG.oracle`, by `debugfs -w -R jr`, or with an external journal
/// `e2fsck -E journal_only -y -j` on a copy of it).
pub(super) fn make_dirty(
    img: &Path,
    jo: &str,
    newdir: &str,
    rm: &str,
    external: Option<&Path>,
) -> Dirty {
    let changed = img.with_extension("changed");
    std::fs::copy(img, &changed).unwrap();
    let new_file = pattern(70_000, newdir.bytes().map(u32::from).sum::<u32>());
    let new = img.with_extension("new");
    std::fs::write(&new, &new_file).unwrap();
    let path = format!("{newdir}/new.bin");
    debugfs_w(
        &changed,
        &[
            &format!("mkdir {newdir}"),
            &format!("write {} {path}", new.display()),
            &format!("rm {rm}"),
        ],
    );
    let bs = block_size(img);
    let data = file_blocks(&changed, &path);
    let (a, b) = (
        std::fs::read(img).unwrap(),
        std::fs::read(&changed).unwrap(),
    );
    let mut disk = a.clone();
    let mut meta = Vec::new();
    for (i, (x, y)) in a.chunks(bs).zip(b.chunks(bs)).enumerate() {
        if x == y {
            continue;
        }
        if data.contains(&(i as u64)) {
            disk[i * bs..(i + 1) * bs].copy_from_slice(y);
        } else {
            meta.push((i as u64, y.to_vec()));
        }
    }
    std::fs::write(img, &disk).unwrap();
    let _ = std::fs::remove_file(&changed);
    journal(img, jo, &meta);
    let oracle = img.with_extension("oracle");
    std::fs::copy(img, &oracle).unwrap();
    match external {
        None => assert!(sh("debugfs", &[&"-w", &"-R", &"jr", &oracle])
            .status
            .success()),
        Some(jd) => {
            let jd_copy = oracle.with_extension("jd");
            std::fs::copy(jd, &jd_copy).unwrap();
            let o = sh(
                "e2fsck",
                &[&"-E", &"journal_only", &"-y", &"-j", &jd_copy, &oracle],
            );
            assert!(code(&o) <= 1, "{}", String::from_utf8_lossy(&o.stdout));
        }
    }
    let sha = sha256(img);
    Dirty {
        img: img.to_path_buf(),
        oracle,
        sha,
        new_file,
        new_path: path,
        bs,
    }
}

/// Writes `meta` (at least 3 blocks) into the journal of `img`: T1 the first half and a junk
/// copy of the last block Y; T2 a revoke of Y (cancelling T1's copy); T3 the next block; T4
/// the rest, Y included (replayed: after the revoke); then an uncommitted T5 of junk. (The
/// revoke has a transaction of its own: debugfs 1.47's `jw -b B -r R` leaves that
/// transaction without its commit block.)
fn journal(img: &Path, jo: &str, meta: &[(u64, Vec<u8>)]) {
    assert!(
        meta.len() >= 3,
        "the change touches at least 3 metadata blocks"
    );
    let dir = img.parent().unwrap();
    let h = meta.len() / 2;
    let y = meta.last().unwrap().0;
    let junk = |b: u64| (b, pattern(meta[0].1.len(), 99));
    let mut t1 = meta[..h].to_vec();
    t1.push(junk(y));
    let t2 = vec![meta[h].clone()];
    let t3 = meta[h + 1..].to_vec();
    let t4 = vec![junk(meta[0].0)];
    let list = |t: &[(u64, Vec<u8>)]| {
        t.iter()
            .map(|b| b.0.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let payload = |n: usize, t: &[(u64, Vec<u8>)]| {
        let p = dir.join(format!("payload{n}.bin"));
        std::fs::write(&p, t.iter().flat_map(|b| b.1.clone()).collect::<Vec<u8>>()).unwrap();
        p.display().to_string()
    };
    let cmds = [
        format!("jo {jo}"),
        format!("jw -b {} {}", list(&t1), payload(1, &t1)),
        format!("jw -r {y}"),
        format!("jw -b {} {}", list(&t2), payload(2, &t2)),
        format!("jw -b {} {}", list(&t3), payload(3, &t3)),
        format!("jw -b {} -c {}", list(&t4), payload(4, &t4)),
        "jc".to_string(),
    ];
    let refs: Vec<&str> = cmds.iter().map(String::as_str).collect();
    debugfs_w(img, &refs);
    let o = sh("dumpe2fs", &[&"-h", &img]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("needs_recovery"),
        "the fixture needs recovery"
    );
}

/// Deterministic non-zero bytes.
pub(super) fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 8) as u8 | 1
        })
        .collect()
}

/// The block size of an image (dumpe2fs).
pub(super) fn block_size(img: &Path) -> usize {
    let o = sh("dumpe2fs", &[&"-h", &img]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Block size:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("block size")
}

/// The data blocks of `path` in `img` (debugfs `blocks`).
pub(super) fn file_blocks(img: &Path, path: &str) -> Vec<u64> {
    let o = sh("debugfs", &[&"-R", &format!("blocks {path}"), &img]);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// `debugfs -R "cat PATH"` of an image.
pub(super) fn cat(img: &Path, path: &str) -> Vec<u8> {
    sh("debugfs", &[&"-R", &format!("cat {path}"), &img]).stdout
}

/// Replays a copy of the raw image `raw` with `debugfs -w -R jr`.
pub(super) fn replay_copy(raw: &Path) -> PathBuf {
    let out = raw.with_extension("jr");
    std::fs::copy(raw, &out).unwrap();
    assert!(sh("debugfs", &[&"-w", &"-R", &"jr", &out]).status.success());
    out
}

/// Superblock bytes the tools' replay updates and ours leaves (offsets in the superblock):
/// `s_wtime`, `s_lastcheck`, `s_kbytes_written`, the `_hi` time bytes, `s_checksum`.
const MASKED: [(usize, usize); 5] = [(0x30, 4), (0x40, 4), (0x178, 8), (0x274, 4), (0x3FC, 4)];

fn masked(block: &[u8], b: u64, bs: usize) -> Vec<u8> {
    let mut v = block.to_vec();
    let sb_at = 1024usize.checked_sub(b as usize * bs);
    if let Some(at) = sb_at.filter(|&at| at < bs) {
        for (o, n) in MASKED {
            v[at + o..at + o + n].fill(0);
        }
    }
    v
}

/// Blocks `e2image -r [-a]` copies from `oracle` on which `ours` (raw) differs from it,
/// superblock times masked.
pub(super) fn differing(ours: &Path, oracle: &Path, data: bool, bs: usize) -> Vec<u64> {
    let e2i = oracle.with_extension("e2i");
    let _ = std::fs::remove_file(&e2i);
    let flags = if data { "-ra" } else { "-r" };
    let o = sh("e2image", &[&flags, &oracle, &e2i]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let mut bad = Vec::new();
    for_each_nonzero_block(&e2i, bs, |b, _| {
        let (x, y) = (block_at(ours, b, bs), block_at(oracle, b, bs));
        if masked(&x, b, bs) != masked(&y, b, bs) {
            bad.push(b);
        }
    });
    let _ = std::fs::remove_file(&e2i);
    bad
}

/// `qemu-img convert -O raw` of a QCOW2 image.
pub(super) fn to_raw(q: &Path) -> PathBuf {
    let out = q.with_extension("raw");
    let _ = std::fs::remove_file(&out);
    let o = sh("qemu-img", &[&"convert", &"-O", &"raw", &q, &out]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    out
}

/// The flags of the export record (header extension "e2ir") of a QCOW2 image.
pub(super) fn record_flags(q: &Path) -> u32 {
    let b = std::fs::read(q).unwrap();
    let at = b
        .windows(8)
        .position(|w| w == [0x65, 0x32, 0x69, 0x72, 0, 0, 0, 8])
        .expect("an export record");
    u32::from_be_bytes(b[at + 12..at + 16].try_into().unwrap())
}

/// True when the tests cannot run here.
pub(super) fn unavailable() -> bool {
    if no_tools() {
        return true;
    }
    let o = sh("debugfs", &[&"-R", &"help", &"/dev/null"]);
    if !String::from_utf8_lossy(&o.stdout).contains("journal_open") {
        skip_missing("debugfs without journal commands (jo/jw/jc)");
        return true;
    }
    false
}
