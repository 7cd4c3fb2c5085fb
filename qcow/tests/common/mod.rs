//! Shared helpers of the integration tests: scratch directories, a tiny xorshift generator,
//! expected-content models of guest states, raw files, and `qemu-img` / `qemu-io` wrappers;
//! `skip` says (past the output capture) when a test skips because QEMU is not installed,
//! and fails it instead under `CI=true`.
#![allow(dead_code)]

pub mod archive;
#[macro_use]
mod skip;
pub mod verify;

pub use skip::*;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qcow::{Layer, Reader, Writer, WriterOptions};

/// A fresh, empty scratch directory for test `name`.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("qcow-tests")
        .join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// xorshift64* with a fixed seed: deterministic test data without a `rand` dependency.
pub struct XorShift(pub u64);

impl XorShift {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A recognizable, non-zero cluster: `tag` in the first bytes, then pseudo-random bytes.
pub fn cluster_data(tag: u64, cluster_size: u64) -> Vec<u8> {
    let mut rng = XorShift(tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut v = Vec::with_capacity(cluster_size as usize);
    while v.len() < cluster_size as usize {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(cluster_size as usize);
    v[..8].copy_from_slice(&tag.to_le_bytes());
    v
}

/// Expected content of one guest state: guest cluster → cluster bytes (absent = zeros).
pub type Model = BTreeMap<u64, Vec<u8>>;

/// Writes `model` as a raw disk image of `size` bytes (sparse; partial last cluster cut).
pub fn write_raw(path: &Path, size: u64, cluster_size: u64, model: &Model) {
    let f = File::create(path).unwrap();
    f.set_len(size).unwrap();
    for (&g, data) in model {
        let off = g * cluster_size;
        let len = (size - off).min(cluster_size) as usize;
        f.write_all_at(&data[..len], off).unwrap();
    }
}

/// A new writer on a fresh file at `path`.
pub fn new_writer(path: &Path, opts: WriterOptions) -> Writer {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    Writer::create(f, opts).unwrap()
}

/// Writes a one-state image of `model` at `path` (the state is the active layer).
pub fn write_one_state(path: &Path, opts: WriterOptions, model: &Model) -> qcow::WriterSummary {
    let mut w = new_writer(path, opts);
    let s = w.new_state();
    write_model(&mut w, s, model);
    w.finish(s, &[]).unwrap()
}

/// Makes a compressed QCOW2 image of the raw file `src` with `qemu-img convert -c -o OPTS`.
pub fn qemu_compress(src: &Path, img: &Path, opts: &str) {
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-c",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            opts,
            src.to_str().unwrap(),
            img.to_str().unwrap(),
        ],
    );
}

/// Writes `model` into `state` with one `write_clusters` call per run of consecutive clusters.
pub fn write_model(w: &mut Writer, state: qcow::StateId, model: &Model) {
    for (g, data) in runs(model) {
        w.write_clusters(state, g, &data).unwrap();
    }
}

/// Consecutive runs of a model: (first guest cluster, concatenated bytes).
pub fn runs(model: &Model) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = None;
    for (&g, data) in model {
        match out.last_mut() {
            Some((_, buf)) if next == Some(g) => buf.extend_from_slice(data),
            _ => out.push((g, data.clone())),
        }
        next = Some(g + 1);
    }
    out
}

/// Runs a command, returning its output (panics if it cannot start).
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn describe(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a command and asserts it succeeded; returns stdout.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let o = run(program, args);
    assert!(
        o.status.success(),
        "{program} {args:?} failed: {}",
        describe(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `qemu-img check`: exit 0 and no leaks or corruptions in the JSON output.
pub fn check_clean(img: &Path) {
    let o = run(
        "qemu-img",
        &["check", "--output=json", img.to_str().unwrap()],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "qemu-img check {} failed: {}",
        img.display(),
        describe(&o)
    );
    // Keys with zero counts are omitted, except "check-errors", which is always present.
    for key in ["\"leaks\"", "\"corruptions\""] {
        assert!(
            !out.contains(key),
            "qemu-img check {} reports {key}: {out}",
            img.display()
        );
    }
    assert!(
        out.contains("\"check-errors\": 0,"),
        "qemu-img check {}: {out}",
        img.display()
    );
}

/// `qemu-img compare` of `img` (or one of its snapshots via `convert -l`) with a raw file.
pub fn compare_raw(img: &Path, raw: &Path) {
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "qcow2",
            "-F",
            "raw",
            img.to_str().unwrap(),
            raw.to_str().unwrap(),
        ],
    );
}

/// Extracts snapshot `name` of `img` as a raw file at `out`.
pub fn extract_snapshot(img: &Path, name: &str, out: &Path) {
    let sel = format!("snapshot.name={name}");
    run_ok(
        "qemu-img",
        &[
            "convert",
            "-l",
            &sel,
            "-O",
            "raw",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
}

/// Asserts snapshot `name` of `img` equals `model`, via `qemu-img convert -l` + compare.
pub fn assert_snapshot_equals(img: &Path, name: &str, size: u64, cluster_size: u64, model: &Model) {
    let dir = img.parent().unwrap();
    let out = dir.join(format!("snap-{name}.raw"));
    let expected = dir.join(format!("expected-{name}.raw"));
    extract_snapshot(img, name, &out);
    write_raw(&expected, size, cluster_size, model);
    run_ok(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            out.to_str().unwrap(),
            expected.to_str().unwrap(),
        ],
    );
    let _ = fs::remove_file(out);
    let _ = fs::remove_file(expected);
}

/// Asserts the active layer of `img` equals `model` via `qemu-img compare`.
pub fn assert_active_equals(img: &Path, size: u64, cluster_size: u64, model: &Model) {
    let expected = img.with_extension("expected.raw");
    write_raw(&expected, size, cluster_size, model);
    compare_raw(img, &expected);
    let _ = fs::remove_file(expected);
}

/// Asserts that `layer` of the image at `img`, read with this crate's reader, equals `model`
/// (allocated clusters exactly those of the model, and every byte).
pub fn assert_layer_equals(img: &Path, layer: Layer, model: &Model) {
    let r = Reader::open(File::open(img).unwrap()).unwrap();
    let lr = r.layer(layer).unwrap();
    let c = r.cluster_size();
    let mut seen = Vec::new();
    lr.for_each_allocated(|g, _| {
        seen.push(g);
        Ok(())
    })
    .unwrap();
    assert_eq!(
        seen,
        model.keys().copied().collect::<Vec<_>>(),
        "allocated clusters of {layer:?}"
    );
    let mut buf = vec![0u8; c as usize];
    for (&g, data) in model {
        lr.read_cluster(g, &mut buf).unwrap();
        assert!(buf == *data, "{layer:?} guest cluster {g} differs");
    }
}

/// Copies `src` to a new file `name` in the same directory.
pub fn copy_to(src: &Path, name: &str) -> PathBuf {
    let dst = src.parent().unwrap().join(name);
    fs::copy(src, &dst).unwrap();
    dst
}
