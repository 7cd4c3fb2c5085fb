//! Test images: the fixture matrix and the next3 snapshot fixtures (built once per target
//! directory under a file lock, shared by all test processes), the committed small image, and
//! a chain of three states of one filesystem.

use super::{debugfs_w, gunzip_to, root, sparse_copy};
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One row of the fixture manifest.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub name: String,
    pub path: PathBuf,
    pub block_size: u32,
    pub fsck_clean: bool,
    pub kind: String,
    pub notes: String,
}

/// Runs a fixture script (`fixtures/<script> OUTDIR NAME...`) for the names whose `.ok`
/// marker is missing, under a lock shared by all test processes, and returns the text of
/// `OUTDIR/<manifest>`.
fn build_fixtures(script: &str, outdir: &str, manifest: &str, names: &[&str]) -> (PathBuf, String) {
    let out = root().join(outdir);
    std::fs::create_dir_all(&out).unwrap();
    let lock = File::create(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| !out.join(format!("{n}.ok")).exists())
        .collect();
    if !missing.is_empty() {
        let o = Command::new("bash")
            .arg(root().join("fixtures").join(script))
            .arg(&out)
            .args(&missing)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "fixtures/{script} failed:\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let text = std::fs::read_to_string(out.join(manifest)).unwrap_or_default();
    let _ = lock.unlock();
    (out, text)
}

/// Builds (once) the requested fixtures with `fixtures/build-matrix.sh` and returns their
/// manifest rows.
pub fn fixtures(names: &[&str]) -> BTreeMap<String, Fixture> {
    let (out, manifest) =
        build_fixtures("build-matrix.sh", "target/fixtures", "manifest.tsv", names);
    let mut m = BTreeMap::new();
    for line in manifest.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        if f.len() < 4 || f[0] == "name" || !names.contains(&f[0]) {
            continue;
        }
        m.insert(
            f[0].to_string(),
            Fixture {
                name: f[0].to_string(),
                path: out.join(format!("{}.img", f[0])),
                block_size: f[1].parse().unwrap_or(4096),
                fsck_clean: f[2] == "1",
                kind: f[3].to_string(),
                notes: f.get(4).unwrap_or(&"").to_string(),
            },
        );
    }
    for n in names {
        assert!(m.contains_key(*n), "fixture {n} missing from the manifest");
    }
    m
}

/// The committed 16 MiB ext4 image (`fixtures/images/ext4-small.img.gz`), gunzipped into `dir`.
pub fn small_image(dir: &Path) -> PathBuf {
    gunzip_to(&root().join("fixtures/images/ext4-small.img.gz"), dir)
}

/// One snapshot of a next3 fixture (a row of `<name>.snap/list.tsv`, newest first).
#[derive(Clone, Debug)]
pub struct SnapRow {
    pub ino: u32,
    pub id: u32,
    pub name: String,
    pub ctime: u64,
    pub deleted: bool,
    /// The expected rebuilt image (fixtures/next3.py's own reconstruction).
    pub expected: PathBuf,
    pub mapped: u64,
    pub moved: u64,
}

/// A filesystem with in-filesystem snapshots, built by fixtures/make-snapshots.sh.
#[derive(Clone, Debug)]
pub struct SnapFixture {
    pub name: String,
    pub path: PathBuf,
    pub block_size: u32,
    pub snapshots: Vec<SnapRow>,
}

/// Builds (once) the requested next3 fixtures with `fixtures/make-snapshots.sh`.
pub fn snapshot_fixtures(names: &[&str]) -> BTreeMap<String, SnapFixture> {
    let (out, manifest) = build_fixtures(
        "make-snapshots.sh",
        "target/fixtures-snap",
        "snapshots.tsv",
        names,
    );
    let mut m = BTreeMap::new();
    for line in manifest.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        if !names.contains(&f[0]) {
            continue;
        }
        let snapdir = out.join(format!("{}.snap", f[0]));
        let list = std::fs::read_to_string(snapdir.join("list.tsv")).unwrap();
        let header: Vec<&str> = list.lines().next().unwrap().split('\t').collect();
        let col = |row: &[&str], name: &str| {
            row[header.iter().position(|h| *h == name).unwrap()].to_string()
        };
        let snapshots = list
            .lines()
            .skip(1)
            .map(|l| {
                let r: Vec<&str> = l.split('\t').collect();
                SnapRow {
                    ino: col(&r, "ino").parse().unwrap(),
                    id: col(&r, "id").parse().unwrap(),
                    name: col(&r, "name"),
                    ctime: col(&r, "ctime").parse().unwrap(),
                    deleted: col(&r, "deleted") == "1",
                    expected: snapdir.join(col(&r, "image")),
                    mapped: col(&r, "mapped").parse().unwrap(),
                    moved: col(&r, "moved").parse().unwrap(),
                }
            })
            .collect();
        m.insert(
            f[0].to_string(),
            SnapFixture {
                name: f[0].to_string(),
                path: out.join(format!("{}.img", f[0])),
                block_size: f[1].parse().unwrap(),
                snapshots,
            },
        );
    }
    for n in names {
        assert!(
            m.contains_key(*n),
            "snapshot fixture {n} missing from the manifest"
        );
    }
    m
}

/// Builds a chain of three states of one filesystem (the committed ext4-small image changed
/// with debugfs) in `dir`: a (oldest), b, c (current).
pub fn chain(dir: &Path) -> [PathBuf; 3] {
    let a = gunzip_to(&root().join("fixtures/images/ext4-small.img.gz"), dir);
    let (pa, pb, pc) = (dir.join("a.img"), dir.join("b.img"), dir.join("c.img"));
    std::fs::rename(&a, &pa).unwrap();
    sparse_copy(&pa, &pb);
    let note = dir.join("note.txt");
    std::fs::write(&note, b"a new file in state b\n").unwrap();
    debugfs_w(
        &pb,
        &[
            "rm /many/f001",
            "rm /many/f002",
            "mkdir /newdir",
            &format!("write {} /newdir/note.txt", note.display()),
        ],
    );
    sparse_copy(&pb, &pc);
    debugfs_w(
        &pc,
        &[
            "rm /xattr/big300k.bin",
            "mkdir /newdir/sub",
            "rmdir /a/b/c/d/e",
        ],
    );
    [pa, pb, pc]
}
