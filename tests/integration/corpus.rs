//! e2image-rs over the e2fsprogs test-suite images in `../shared/corpus/e2fsprogs` (a visible
//! skip when absent, a failure under `CI=true`): odd, old and deliberately corrupt filesystems.
//! - no panic and no hang: every run ends within a time limit with status 0, 1 or 3;
//! - a QCOW2 we leave behind passes `qemu-img check`; after a failure nothing is left;
//! - where `e2image -r` succeeds, ours succeeds too and is a superset of its blocks;
//! - where e2image fails, ours exports with exit 3 or fails with a clear message.
//!
//! One deliberate difference: e2image ignores a bad superblock checksum, we refuse the primary
//! (as the kernel does) and suggest a backup; there the raw export is redone with the
//! suggested `-b`/`-B` and compared with e2image's.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any single run may take before we call it a hang.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// Runs the binary with a time limit; returns (exit code, stderr).
fn run_limited(args: &[&Path], flags: &[&str]) -> (i32, String) {
    let mut child = Command::new(bin())
        .args(flags)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            let c = st
                .code()
                .unwrap_or_else(|| panic!("{args:?}: killed by a signal: {err}"));
            return (c, err);
        }
        if start.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            panic!("{args:?}: still running after {RUN_LIMIT:?} (hang)");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn corpus_images() {
    let Some(dir) = shared_corpus() else {
        return;
    };
    if skip() {
        return;
    }
    let tmp = scratch("corpus");
    let mut images: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    images.retain(|p| p.extension().is_some_and(|e| e == "gz"));
    images.sort();
    let mut problems = Vec::new();
    let (mut ok, mut warned, mut failed) = (0, 0, 0);
    for gz in &images {
        let img = gunzip_to(gz, &tmp);
        let name = img.file_name().unwrap().to_string_lossy().into_owned();
        let before = sha256(&img);
        let (q, r, e2i) = (
            tmp.join("out.qcow2"),
            tmp.join("out.raw"),
            tmp.join("e2i.raw"),
        );
        let (qc, qerr) = run_limited(&[&img, &q], &["-Q"]);
        let (mut rc, mut rerr) = run_limited(&[&img, &r], &["-r"]);
        let backup = suggested_backup(&rerr).filter(|_| rerr.contains("s_checksum "));
        let e2i_ok = Command::new("e2image")
            .arg("-r")
            .arg(&img)
            .arg(&e2i)
            .output()
            .unwrap()
            .status
            .success();
        for (c, err, out) in [(qc, &qerr, &q), (rc, &rerr, &r)] {
            match c {
                0 | 3 => assert!(out.exists(), "{name}: exit {c} but no output"),
                1 => {
                    assert!(!out.exists(), "{name}: failed but left {}", out.display());
                    assert!(
                        err.starts_with("e2image-rs: error: "),
                        "{name}: unclear failure message: {err}"
                    );
                }
                _ => problems.push(format!("{name}: exit {c}: {err}")),
            }
        }
        match qc {
            0 => ok += 1,
            3 => warned += 1,
            _ => failed += 1,
        }
        if qc == 0 || qc == 3 {
            assert_qemu_check(&q);
        }
        if let (true, Some((b, bs))) = (e2i_ok, &backup) {
            eprintln!("{name}: bad superblock checksum; comparing through -b {b} -B {bs}");
            (rc, rerr) = run_limited(&[&img, &r], &["-r", "-b", b, "-B", bs]);
        }
        if e2i_ok {
            if rc != 0 && rc != 3 {
                problems.push(format!(
                    "{name}: e2image -r succeeds but ours exits {rc}: {rerr}"
                ));
            } else {
                let (theirs, ours) = (read(&e2i), read(&r));
                let bs = block_size_of(&ours);
                let bad = nonzero_blocks(&theirs, bs)
                    .into_iter()
                    .filter(|&b| ours.get(b * bs..(b + 1) * bs) != theirs.get(b * bs..(b + 1) * bs))
                    .count();
                if bad > 0 {
                    problems.push(format!(
                        "{name}: {bad} blocks of e2image's output differ in ours"
                    ));
                }
            }
        }
        assert_eq!(sha256(&img), before, "{name}: the source changed");
        for p in [&img, &q, &r, &e2i] {
            let _ = std::fs::remove_file(p);
        }
    }
    eprintln!(
        "corpus: {ok} clean, {warned} with warnings (exit 3), {failed} refused (exit 1) of {}",
        images.len()
    );
    assert!(problems.is_empty(), "{problems:#?}");
    let _ = std::fs::remove_dir_all(&tmp);
}

/// The `-b BLOCK -B SIZE` a refusal of the primary superblock suggests.
fn suggested_backup(stderr: &str) -> Option<(String, String)> {
    let rest = &stderr[stderr.find("try -b ")? + "try -b ".len()..];
    let mut words = rest.split_whitespace();
    let block = words.next()?.to_string();
    let size = words
        .nth(1)?
        .trim_end_matches(|c: char| !c.is_ascii_digit());
    Some((block, size.to_string())).filter(|(b, s)| {
        b.bytes().all(|c| c.is_ascii_digit())
            && !s.is_empty()
            && s.bytes().all(|c| c.is_ascii_digit())
    })
}

/// Block size from the superblock in a raw image (1024 when there is none).
fn block_size_of(raw: &[u8]) -> usize {
    if raw.len() < 2048 || raw[1080..1082] != [0x53, 0xEF] {
        return 1024;
    }
    1024usize << u32::from_le_bytes(raw[1048..1052].try_into().unwrap()).min(6)
}
