//! Safety at the boundaries (issue: the source is never destroyed, outputs are private,
//! interrupted runs clean up, concurrent writers are excluded):
//! - OUT never resolves to an input: the same path, a symlink, a hard link, `dir/../x`, a loop
//!   device over the source; the same for `--snapshot`, `-r IMAGE.qcow2`, rollback's `--patch`
//!   and `--undo-file`; refused with exit 2, both paths named, nothing written;
//! - OUT that is a character device, FIFO, socket or directory is refused (exit 2); a block
//!   device is written in place with `-r` (refused when too small, and for `-Q`);
//! - every file created is mode 0600 whatever the umask;
//! - SIGINT/SIGTERM/SIGHUP remove the temporary file and exit 130/143/129; a SIGKILLed run's
//!   temporary is removed by the next run, with a note;
//! - a rollback target or patch locked by another run is refused, nothing written;
//! - `-r SOURCE -` streams the raw image; `-Q SOURCE -` and `--json` with `-` are refused.

use crate::common::*;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

/// The stderr of [`expect`].
fn stderr_of_expect(args: &[&dyn AsRef<std::ffi::OsStr>], want: i32) -> String {
    stderr(&expect(args, want))
}

/// Names in `dir` that look like our temporary files.
fn temporaries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

#[test]
fn out_never_resolves_to_the_source() {
    let dir = scratch("safe-alias");
    let img = small_image(&dir);
    let before = sha256(&img);
    std::os::unix::fs::symlink(&img, dir.join("sym")).unwrap();
    std::fs::hard_link(&img, dir.join("hard")).unwrap();
    std::fs::create_dir(dir.join("sub")).unwrap();
    let aliases = [
        img.clone(),
        dir.join("sym"),
        dir.join("hard"),
        dir.join("sub/../ext4-small.img"),
    ];
    for mode in ["-Q", "-r"] {
        for out in &aliases {
            let e = stderr_of_expect(&[&mode, &img, out], 2);
            assert!(e.contains("e2image-rs: error: "), "{e}");
            assert!(e.contains(&out.display().to_string()), "{e}");
            assert!(e.contains(&img.display().to_string()), "{e}");
        }
    }
    // An older state given with --snapshot is an input too.
    let older = sparse_copy(&img, &dir.join("older.img"));
    let older_sum = sha256(&older);
    let e = stderr_of_expect(&[&"-Q", &"--snapshot", &older, &img, &older], 2);
    assert!(e.contains("--snapshot"), "{e}");
    assert_eq!(sha256(&older), older_sum);
    // A QCOW2 source converted to raw over itself.
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let q_sum = sha256(&q);
    expect(&[&"-r", &q, &q], 2);
    expect(&[&"-Q", &q, &q], 2);
    assert_eq!(sha256(&q), q_sum);
    assert_eq!(sha256(&img), before);
    assert!(temporaries(&dir).is_empty());
}

#[test]
fn loop_device_over_the_source_is_the_source() {
    let dir = scratch("safe-loop");
    let img = small_image(&dir);
    let before = sha256(&img);
    let Some(lo) = Loop::attach(&img) else {
        skipped("loop devices are not available here");
        return;
    };
    let e = stderr_of_expect(&[&"-r", &img, &lo.path()], 2);
    assert!(e.contains("SOURCE"), "{e}");
    let e = stderr_of_expect(&[&"-r", &lo.path(), &img], 2);
    assert!(e.contains("same file or device"), "{e}");
    drop(lo);
    assert_eq!(sha256(&img), before);
}

#[test]
fn non_regular_outputs_are_refused() {
    let dir = scratch("safe-nodes");
    let img = small_image(&dir);
    let chr = dir.join("null");
    let fifo = dir.join("fifo");
    let sock = dir.join("sock");
    let sub = dir.join("dir");
    let made = Command::new("mknod")
        .arg(&chr)
        .args(["c", "1", "3"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    std::fs::create_dir(&sub).unwrap();
    let mut nodes = vec![
        (fifo.clone(), "FIFO"),
        (sock.clone(), "socket"),
        (sub.clone(), "directory"),
    ];
    if made {
        nodes.push((chr.clone(), "character device"));
    } else {
        skipped("mknod is not permitted here: character device case not run");
    }
    for (node, kind) in &nodes {
        for mode in ["-Q", "-r"] {
            let e = stderr_of_expect(&[&mode, &img, node], 2);
            assert!(e.contains(kind), "{mode} {kind}: {e}");
        }
    }
    // Nothing was replaced: the nodes are still what they were.
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    assert!(std::fs::metadata(&sock).unwrap().file_type().is_socket());
    assert!(std::fs::metadata(&sub).unwrap().is_dir());
    if made {
        assert!(std::fs::metadata(&chr)
            .unwrap()
            .file_type()
            .is_char_device());
    }
    assert!(temporaries(&dir).is_empty());
}

#[test]
fn raw_image_onto_a_block_device() {
    if skip() {
        return;
    }
    let dir = scratch("safe-blockdev");
    let img = small_image(&dir);
    let disk = dir.join("disk");
    std::fs::write(&disk, vec![0xa5u8; 16 << 20]).unwrap();
    let small = dir.join("small");
    std::fs::write(&small, vec![0u8; 8 << 20]).unwrap();
    let (Some(lo), Some(lo_small)) = (Loop::attach(&disk), Loop::attach(&small)) else {
        skipped("loop devices are not available here");
        return;
    };
    // -Q onto a device is a usage error; a device smaller than the filesystem is refused.
    expect(&[&"-Q", &img, &lo.path()], 2);
    let e = stderr_of_expect(&[&"-r", &img, &lo_small.path()], 1);
    assert!(e.contains("smaller"), "{e}");
    // -r writes every copied block in place, zeros included (the device held 0xa5 before).
    let raw = dir.join("ref.raw");
    expect(&[&"-r", &img, &raw], 0);
    expect(&[&"-r", &img, &lo.path()], 0);
    assert!(std::fs::metadata(lo.path())
        .unwrap()
        .file_type()
        .is_block_device());
    drop(lo);
    let src = read(&img);
    let copied = read(&raw);
    let on_disk = read(&disk);
    let bs = 4096;
    for (b, chunk) in copied.chunks(bs).enumerate() {
        if chunk.iter().any(|&x| x != 0) {
            assert_eq!(
                &on_disk[b * bs..(b + 1) * bs],
                &src[b * bs..(b + 1) * bs],
                "block {b}"
            );
        }
    }
    assert_eq!(
        fsck(&disk),
        0,
        "the restored metadata is a clean filesystem"
    );
}

#[test]
fn outputs_are_private_whatever_the_umask() {
    if skip() {
        return;
    }
    let dir = scratch("safe-mode");
    let img = small_image(&dir);
    let q = dir.join("out.qcow2");
    let r = dir.join("out.raw");
    let b = bin();
    let script = format!(
        "umask 000; {b} -Q {img} {q} && {b} -r {img} {r}",
        b = b.display(),
        img = img.display(),
        q = q.display(),
        r = r.display()
    );
    assert!(Command::new("sh")
        .arg("-c")
        .arg(&script)
        .status()
        .unwrap()
        .success());
    // Rollback patch and undo file, also under umask 000.
    let t = sparse_copy(&img, &dir.join("target.img"));
    debugfs_w(&t, &["mkdir /new"]);
    let (p, u) = (dir.join("r.patch"), dir.join("r.e2undo"));
    let script = format!(
        "umask 000; {b} rollback {q} {t} --patch {p} --undo-file {u}",
        b = b.display(),
        q = q.display(),
        t = t.display(),
        p = p.display(),
        u = u.display()
    );
    let o = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [&q, &r, &p, &u] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
}

/// Starts a slowed-down export (test hook) and waits until its temporary file exists.
fn slow_export(img: &Path, out: &Path) -> std::process::Child {
    let child = Command::new(bin())
        .args(["-Q", "-d"])
        .arg(img)
        .arg(out)
        .env("E2IMAGE_RS_FAULT_STALL_MS", "300")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = out.parent().unwrap();
    for _ in 0..500 {
        if !temporaries(dir).is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!temporaries(dir).is_empty(), "the export did not start");
    child
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (slowed-down export)"
)]
fn interrupted_exports_remove_their_temporary() {
    let dir = scratch("safe-signals");
    let img = small_image(&dir);
    let out = dir.join("out.qcow2");
    for (sig, status) in [("INT", 130), ("TERM", 143), ("HUP", 129)] {
        let child = slow_export(&img, &out);
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([&format!("-{sig}"), &pid])
            .status()
            .unwrap()
            .success());
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(status), "SIG{sig}: {}", stderr(&o));
        assert!(
            stderr(&o).contains(&format!("interrupted by SIG{sig}")),
            "{}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains(".tmp"), "{}", stderr(&o));
        assert!(
            temporaries(&dir).is_empty(),
            "SIG{sig}: {:?}",
            temporaries(&dir)
        );
        assert!(!out.exists());
    }
    // SIGKILL cannot be caught: the temporary stays until the next run in the directory.
    let mut child = slow_export(&img, &out);
    child.kill().unwrap();
    child.wait().unwrap();
    let left = temporaries(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    let o = run(&[&"-Q", &img, &dir.join("next.qcow2")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("note: removed"), "{}", stderr(&o));
    assert!(stderr(&o).contains(&left[0]), "{}", stderr(&o));
    assert!(temporaries(&dir).is_empty());
    // A temporary whose writer is alive (it holds its lock) is left alone.
    let child = slow_export(&img, &out);
    let o = run(&[&"-Q", &img, &dir.join("other.qcow2")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!stderr(&o).contains("removed"), "{}", stderr(&o));
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.exists());
}

#[test]
fn locked_targets_and_patches_are_refused() {
    if skip() {
        return;
    }
    let dir = scratch("safe-locks");
    let img = small_image(&dir);
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let t = sparse_copy(&img, &dir.join("t.img"));
    debugfs_w(&t, &["mkdir /new"]);
    let before = sha256(&t);
    let p = dir.join("r.patch");
    {
        let holder = std::fs::File::open(&t).unwrap();
        holder.lock().unwrap();
        let e = stderr_of_expect(&[&"rollback", &q, &t, &"--patch", &p], 1);
        assert!(e.contains("in use by another e2image-rs run"), "{e}");
        assert!(e.contains("nothing was written"), "{e}");
        assert_eq!(sha256(&t), before);
        assert!(!p.exists());
        // Unlock explicitly: a child that another test forks right now shares the lock until
        // it execs, so dropping the descriptor alone may release it a moment too late.
        holder.unlock().unwrap();
    }
    expect(&[&"rollback", &q, &t, &"--patch", &p], 0);
    let after = sha256(&t);
    {
        let holder = std::fs::File::open(&p).unwrap();
        holder.lock().unwrap();
        let e = stderr_of_expect(&[&"rollback", &"--undo", &p, &t], 1);
        assert!(e.contains("in use"), "{e}");
        assert_eq!(sha256(&t), after);
        holder.unlock().unwrap();
    }
    expect(&[&"rollback", &"--undo", &p, &t], 0);
    assert_eq!(sha256(&t), before);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs `--features fault-injection` (slowed-down rollback)"
)]
fn two_rollbacks_started_together() {
    let dir = scratch("safe-race");
    let [a, _b, c] = chain(&dir);
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &a, &q], 0);
    let t = sparse_copy(&c, &dir.join("t.img"));
    let spawn = |patch: &Path| {
        Command::new(bin())
            .arg("rollback")
            .arg(&q)
            .arg(&t)
            .arg("--patch")
            .arg(patch)
            .arg("--force")
            .env("E2IMAGE_RS_FAULT_STALL_MS", "100")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (p1, p2) = (dir.join("1.patch"), dir.join("2.patch"));
    let mut first = spawn(&p1);
    while !p1.exists() {
        if let Some(st) = first.try_wait().unwrap() {
            panic!("the first rollback ended before writing its patch: {st}");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let second = spawn(&p2).wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1), "{}", stderr(&second));
    assert!(stderr(&second).contains("in use"), "{}", stderr(&second));
    assert!(!p2.exists());
    let first = first.wait_with_output().unwrap();
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert_eq!(fsck(&t), 0);
    // The first rollback alone decides the result: undo gives the old bytes back exactly.
    // (State a's inodes were reused in c, hence --force: see the conflict check.)
    expect(&[&"rollback", &"--undo", &p1, &t], 0);
    assert_eq!(sha256(&t), sha256(&c));
}

#[test]
fn rollback_paths_never_name_an_input() {
    if skip() {
        return;
    }
    let dir = scratch("safe-rb-paths");
    let img = small_image(&dir);
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let t = sparse_copy(&img, &dir.join("t.img"));
    debugfs_w(&t, &["mkdir /new"]);
    let (t_sum, q_sum) = (sha256(&t), sha256(&q));
    let p = dir.join("r.patch");
    let tlink = dir.join("t-link");
    std::os::unix::fs::symlink(&t, &tlink).unwrap();
    for args in [
        vec![&q as &dyn AsRef<std::ffi::OsStr>, &t, &"--patch", &t],
        vec![&q, &t, &"--patch", &q],
        vec![&q, &t, &"--patch", &tlink],
        vec![&q, &t, &"--patch", &p, &"--undo-file", &t],
        vec![&q, &t, &"--patch", &p, &"--undo-file", &q],
        vec![&q, &t, &"--patch", &p, &"--undo-file", &p],
        vec![&q, &q, &"--patch", &p],
    ] {
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"rollback"];
        a.extend(args);
        let e = stderr_of_expect(&a, 2);
        assert!(e.contains("same file or device"), "{e}");
    }
    expect(&[&"rollback", &"--resume", &t, &t], 2);
    assert_eq!(sha256(&t), t_sum);
    assert_eq!(sha256(&q), q_sum);
    assert!(!p.exists());
}

#[test]
fn raw_image_to_standard_output() {
    let dir = scratch("safe-stdout");
    let img = small_image(&dir);
    let raw = dir.join("ref.raw");
    expect(&[&"-r", &img, &raw], 0);
    let streamed = dir.join("streamed.raw");
    let o = Command::new(bin())
        .args(["-r"])
        .arg(&img)
        .arg("-")
        .stdout(std::fs::File::create(&streamed).unwrap())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(read(&streamed), read(&raw));
    // QCOW2 → raw on standard output too.
    let q = dir.join("a.qcow2");
    expect(&[&"-Q", &img, &q], 0);
    let o = Command::new(bin())
        .arg("-r")
        .arg(&q)
        .arg("-")
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(o.stdout, read(&raw));
    // --json beside an image on stdout is a usage error (QCOW2 streams: `stream.rs`).
    expect(&[&"-r", &"--json", &img, &"-"], 2);
    expect(&[&"-Q", &"--json", &img, &"-"], 2);
    // A reader that goes away is a write error, never a panic; no temporary is involved.
    let mut child = Command::new(bin())
        .arg("-r")
        .arg(&img)
        .arg("-")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("standard output"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert!(temporaries(&dir).is_empty());
}
