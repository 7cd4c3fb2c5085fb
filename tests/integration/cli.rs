//! Command-line behaviour: usage errors (exit 2), failures (exit 1, nothing left under OUT),
//! replacing an existing OUT, the QCOW2 options, and reading a filesystem stored in QCOW2.

use crate::common::*;

#[test]
fn usage_errors_exit_2() {
    let dir = scratch("cli-usage");
    let img = small_image(&dir);
    let out = dir.join("o");
    for args in [
        vec![],
        vec!["-Q"],
        vec!["-Q", "-r", img.to_str().unwrap(), out.to_str().unwrap()],
        vec![
            "-B",
            "4096",
            "-Q",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        vec![
            "--compat",
            "2",
            "-Q",
            img.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
        vec![img.to_str().unwrap(), out.to_str().unwrap()],
    ] {
        let a: Vec<&dyn AsRef<std::ffi::OsStr>> = args
            .iter()
            .map(|s| s as &dyn AsRef<std::ffi::OsStr>)
            .collect();
        let o = run(&a);
        assert_eq!(
            code(&o),
            2,
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!out.exists());
    }
}

#[test]
fn failures_exit_1_and_leave_nothing() {
    let dir = scratch("cli-fail");
    let out = dir.join("out.qcow2");
    let o = run(&[&"-Q", &dir.join("no-such-file"), &out]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).starts_with("e2image-rs: error: "));
    let junk = dir.join("junk.img");
    std::fs::write(&junk, vec![0x5au8; 1 << 20]).unwrap();
    let o = run(&[&"-Q", &junk, &out]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("superblock"));
    // Nothing under OUT and no temporary files left in the directory.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "{left:?}");
    // An invalid cluster size is a usage error, refused before anything is written.
    let img = small_image(&dir);
    let o = run(&[&"-Q", &"--cluster-size", &"3000", &img, &out]);
    assert_eq!(code(&o), 2);
    assert!(!out.exists());
}

#[test]
fn existing_output_is_replaced_not_patched() {
    let dir = scratch("cli-replace");
    let img = small_image(&dir);
    let out = dir.join("out.raw");
    std::fs::write(&out, vec![0xffu8; 32 << 20]).unwrap();
    let o = run(&[&"-r", &img, &out]);
    assert_eq!(code(&o), 0);
    let (ours, src) = (read(&out), read(&img));
    assert_eq!(ours.len(), src.len());
    for (b, chunk) in ours.chunks(4096).enumerate() {
        if chunk.iter().any(|&x| x != 0) {
            assert_eq!(chunk, &src[b * 4096..(b + 1) * 4096], "block {b}");
        }
    }
}

#[test]
fn qcow2_options() {
    if !require(&["qemu-img"]) {
        return;
    }
    let dir = scratch("cli-qcow2");
    let img = small_image(&dir);
    let (v2, big) = (dir.join("v2.qcow2"), dir.join("big.qcow2"));
    assert_eq!(code(&run(&[&"-Q", &"--compat", &"0.10", &img, &v2])), 0);
    assert_eq!(
        code(&run(&[&"-Q", &"--cluster-size", &"65536", &img, &big])),
        0
    );
    let info = |p: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&sh("qemu-img", &[&"info", &"--output=json", &p]).stdout).unwrap()
    };
    assert_eq!(info(&v2)["format-specific"]["data"]["compat"], "0.10");
    assert_eq!(info(&big)["cluster-size"], 65536);
    for p in [&v2, &big] {
        assert_qemu_check(p);
        assert_eq!(info(p)["virtual-size"], 16 << 20);
    }
    // Default: v3 with the filesystem block size as the cluster size; -d: 64 KiB.
    let (def, data) = (dir.join("def.qcow2"), dir.join("data.qcow2"));
    assert_eq!(code(&run(&[&"-Q", &img, &def])), 0);
    assert_eq!(code(&run(&[&"-Q", &"-a", &img, &data])), 0);
    assert_eq!(info(&def)["format-specific"]["data"]["compat"], "1.1");
    assert_eq!(info(&def)["cluster-size"], 4096);
    assert_eq!(info(&data)["cluster-size"], 65536);
    assert_qemu_identical(&v2, &def);
    assert_qemu_identical(&big, &def);
    // --sync flushes before the rename; the image is the same.
    let (synced, synced_raw) = (dir.join("sync.qcow2"), dir.join("sync.raw"));
    assert_eq!(code(&run(&[&"-Q", &"--sync", &img, &synced])), 0);
    assert_eq!(code(&run(&[&"-r", &"--sync", &img, &synced_raw])), 0);
    assert_qemu_check(&synced);
    assert_qemu_identical(&synced, &def);
    assert_qemu_identical(&synced_raw, &def);
}

#[test]
fn filesystem_inside_a_qcow2_image() {
    if !require(&["qemu-img"]) {
        return;
    }
    // A filesystem stored in a QCOW2 image (here: a full -d export) is walked through the
    // QCOW2 reader and gives the same metadata export as the original.
    let dir = scratch("cli-qcow2-source");
    let img = small_image(&dir);
    let (full, a, b) = (
        dir.join("full.qcow2"),
        dir.join("a.qcow2"),
        dir.join("b.qcow2"),
    );
    assert_eq!(code(&run(&[&"-Q", &"-d", &img, &full])), 0);
    assert_eq!(code(&run(&[&"-Q", &img, &a])), 0);
    let o = run(&[&"-Q", &full, &b]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    assert_qemu_check(&b);
    assert_qemu_identical(&a, &b);
}

#[test]
fn help_and_version_exit_0() {
    assert_eq!(code(&run(&[&"--help"])), 0);
    assert_eq!(code(&run(&[&"--version"])), 0);
}

/// Unmounts and detaches on drop.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn mounted_read_write_source_needs_f() {
    let dir = scratch("cli-mounted");
    let img = small_image(&dir);
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-o", "loop"])
        .arg(&img)
        .arg(&mnt)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skipped("cannot loop-mount here");
        return;
    }
    let _guard = Mounted(mnt.clone());
    let out = dir.join("out.qcow2");
    let o = run(&[&"-Q", &img, &out]);
    assert_eq!(code(&o), 1);
    assert!(String::from_utf8_lossy(&o.stderr).contains("mounted read-write"));
    assert!(!out.exists());
    let o = run(&[&"-Q", &"-f", &img, &out]);
    assert!(
        matches!(code(&o), 0 | 3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.exists());
    // A read-only mount is fine without -f.
    let ro = std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(ro.success());
    let out2 = dir.join("out2.qcow2");
    assert!(matches!(code(&run(&[&"-Q", &img, &out2])), 0 | 3));
}
