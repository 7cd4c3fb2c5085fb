//! Shared helpers of the integration tests: the fixture matrix (built once per target dir
//! under a file lock), the e2image-rs binary, and the oracles (qemu-img, e2image, e2fsck).
//! Tests that need a missing tool say why ([`skipped`], shown even under cargo's capture) and
//! return early.
#![allow(dead_code)]

mod data;
mod faults;
pub mod kernel;
mod loopdev;
pub use data::{mkfs_from, Xorshift};
pub use faults::{run_faulty, Stop};
pub use loopdev::Loop;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Path of the e2image-rs binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_e2image-rs"))
}

/// True if `tool` runs.
pub fn have(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("-V").output().is_ok()
}

/// True if e2fsprogs and qemu-img are both installed.
pub fn have_oracles() -> bool {
    static H: OnceLock<bool> = OnceLock::new();
    *H.get_or_init(|| {
        ["mke2fs", "e2image", "e2fsck", "debugfs", "qemu-img"]
            .iter()
            .all(|t| have(t))
    })
}

/// A scratch directory of one test, removed with everything in it when the test ends
/// (also when it fails), unless `E2IMAGE_RS_KEEP_SCRATCH` is set. The tests copy and write
/// whole filesystem images; kept, they would fill a CI machine's disk.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("E2IMAGE_RS_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch directory for one test (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    let d = root()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Bytes per read of the sparse copies below.
const SPARSE_CHUNK: usize = 64 * 1024;

/// Writes everything `src` yields into a new file `to`, leaving holes where a whole
/// [`SPARSE_CHUNK`] is zero, so that copies of mostly empty filesystem images stay small.
fn write_sparse(mut src: impl Read, to: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let _ = std::fs::remove_file(to);
    let mut out = File::create(to).unwrap();
    let mut buf = vec![0u8; SPARSE_CHUNK];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(len)).unwrap();
            out.write_all(&buf[..n]).unwrap();
        }
        len += n as u64;
    }
    out.set_len(len).unwrap();
}

/// Copies the file `from` to `to` (replacing it) as a sparse file; returns `to`.
pub fn sparse_copy(from: &Path, to: &Path) -> PathBuf {
    write_sparse(File::open(from).unwrap(), to);
    to.to_path_buf()
}

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

/// Runs e2image-rs with `args`.
pub fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(bin());
    for a in args {
        c.arg(a);
    }
    c.output().unwrap()
}

/// Runs e2image-rs with `args`, expecting exit status `want` (else panics with its stderr).
pub fn expect(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> Output {
    let o = run(args);
    assert_eq!(code(&o), want, "{}", stderr(&o));
    o
}

/// Runs `e2image-rs SUBCOMMAND ARGS`, expecting exit status `want` (else panics with the
/// arguments, stdout and stderr); never a panic of the tool.
pub fn expect_sub(subcommand: &str, args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> Output {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&subcommand];
    a.extend_from_slice(args);
    let o = run(&a);
    let shown: Vec<_> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    assert_eq!(
        code(&o),
        want,
        "{subcommand} {shown:?}\nstdout: {}\nstderr: {}",
        stdout(&o),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    o
}

/// The stderr of an output, as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The stdout of an output, as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The committed 16 MiB ext4 image (`fixtures/images/ext4-small.img.gz`), gunzipped into `dir`.
pub fn small_image(dir: &Path) -> PathBuf {
    gunzip_to(&root().join("fixtures/images/ext4-small.img.gz"), dir)
}

/// The filesystem UUID of an image, as `dumpe2fs -h` prints it.
pub fn fs_uuid(img: &Path) -> String {
    let o = sh("dumpe2fs", &[&"-h", &img]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no UUID in dumpe2fs -h {}", img.display()))
}

/// True (after saying so) when e2fsprogs or qemu-img is missing: the caller returns.
pub fn skip() -> bool {
    if have_oracles() {
        return false;
    }
    skipped("e2fsprogs or qemu-img missing");
    true
}

/// Exit code of an output, panicking with its stderr on a signal.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {}", String::from_utf8_lossy(&o.stderr)))
}

/// Runs a command and returns its output.
pub fn sh(prog: &str, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut c = Command::new(prog);
    for a in args {
        c.arg(a);
    }
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"))
}

/// `qemu-img check` must exit 0 and report no leaks or corruptions.
pub fn assert_qemu_check(img: &Path) {
    let o = sh("qemu-img", &[&"check", &"--output=json", &img]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        code(&o),
        0,
        "qemu-img check {}: {text}{}",
        img.display(),
        String::from_utf8_lossy(&o.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(
        v.get("leaks").is_none() && v.get("corruptions").is_none(),
        "{text}"
    );
}

/// `qemu-img compare` of two images must say identical.
pub fn assert_qemu_identical(a: &Path, b: &Path) {
    let o = sh("qemu-img", &[&"compare", &a, &b]);
    assert_eq!(
        code(&o),
        0,
        "qemu-img compare {} {}: {}{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// SHA-256 of a file.
pub fn sha256(p: &Path) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut f = File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// Reads a whole file.
pub fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Block numbers (of `bs` bytes) that hold non-zero bytes in `img`.
pub fn nonzero_blocks(img: &[u8], bs: usize) -> Vec<usize> {
    img.chunks(bs)
        .enumerate()
        .filter(|(_, c)| c.iter().any(|&x| x != 0))
        .map(|(i, _)| i)
        .collect()
}

/// `e2fsck -fn` exit status on an image (0 = clean).
pub fn fsck(img: &Path) -> i32 {
    code(&sh("e2fsck", &[&"-fn", &img]))
}

/// `e2fsck -fn` exit status on an image (0 = clean), with the given superblock options.
pub fn fsck_with(img: &Path, extra: &[&str]) -> i32 {
    let mut c = Command::new("e2fsck");
    c.arg("-fn").args(extra).arg(img);
    code(&c.output().unwrap())
}

/// Gunzips a committed image into `dir`, as a sparse file.
pub fn gunzip_to(gz: &Path, dir: &Path) -> PathBuf {
    let name = gz.file_stem().unwrap();
    let out = dir.join(name);
    write_sparse(flate2::read::GzDecoder::new(File::open(gz).unwrap()), &out);
    out
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

/// Calls `f(block, bytes)` for every block of `bs` bytes of `path` that is not all zero,
/// reading the file in chunks (images may be large and sparse).
pub fn for_each_nonzero_block(path: &Path, bs: usize, mut f: impl FnMut(u64, &[u8])) {
    let mut file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let chunk = (4 << 20) / bs * bs;
    let mut buf = vec![0u8; chunk];
    let mut block = 0u64;
    loop {
        let mut n = 0;
        while n < chunk {
            let k = file.read(&mut buf[n..]).unwrap();
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        for (i, b) in buf[..n].chunks(bs).enumerate() {
            if b.iter().any(|&x| x != 0) {
                f(block + i as u64, b);
            }
        }
        block += n.div_ceil(bs) as u64;
        if n < chunk {
            break;
        }
    }
}

/// Block `b` (of `bs` bytes) of a file; zeros past its end.
pub fn block_at(path: &Path, b: u64, bs: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; bs];
    let mut done = 0;
    while done < bs {
        match f
            .read_at(&mut buf[done..], b * bs as u64 + done as u64)
            .unwrap()
        {
            0 => break,
            k => done += k,
        }
    }
    buf
}

/// Blocks that are non-zero in `reference` and differ in `other` (both files).
pub fn blocks_not_in(reference: &Path, other: &Path, bs: usize) -> Vec<u64> {
    let mut bad = Vec::new();
    for_each_nonzero_block(reference, bs, |b, data| {
        if block_at(other, b, bs) != data {
            bad.push(b);
        }
    });
    bad
}

/// Runs e2image-rs with `--json` and `args`, which must succeed; returns the summary.
pub fn export_json(args: &[&dyn AsRef<std::ffi::OsStr>]) -> serde_json::Value {
    let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--json"];
    a.extend_from_slice(args);
    let o = run(&a);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Extracts state `name` of the QCOW2 image `q` with `qemu-img convert -l` into raw `out`.
pub fn extract_state(q: &Path, name: &str, out: &Path) {
    let _ = std::fs::remove_file(out);
    let o = sh(
        "qemu-img",
        &[
            &"convert",
            &"-l",
            &format!("snapshot.name={name}"),
            &"-O",
            &"raw",
            &q,
            &out,
        ],
    );
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
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

/// Runs debugfs -w with `cmds` on `img` and asserts it succeeds.
pub fn debugfs_w(img: &Path, cmds: &[&str]) {
    let script = cmds.join("\n");
    let mut child = std::process::Command::new("debugfs")
        .args(["-w", "-f", "-"])
        .arg(img)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

/// `e2image-rs snapshots --json IMAGE`, parsed.
pub fn snapshot_list(q: &Path) -> serde_json::Value {
    let o = Command::new(bin())
        .args(["snapshots", "--json"])
        .arg(q)
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Reports that (part of) a test was skipped, on the process's own stderr: libtest captures
/// only `print!`/`eprint!`, so this line shows in `cargo test` output even for a passing
/// test, and a run without a tool cannot be mistaken for a run with it.
pub fn skipped(why: &str) {
    use std::io::Write;
    let name = std::thread::current()
        .name()
        .unwrap_or("a test")
        .to_string();
    let _ = std::io::stderr().write_all(format!("SKIPPED {name}: {why}\n").as_bytes());
}
