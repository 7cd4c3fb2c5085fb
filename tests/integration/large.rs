//! Filesystems larger than QEMU can address with 4 KiB clusters (8 TiB): the cluster size grows
//! so that the image opens in qemu (e2image's output is refused there). The 9 TiB filesystem
//! lives in a sparse file of about 32 MB (small journal, sparse_super2, lazy inode tables).

use crate::common::*;

#[test]
fn nine_tib_filesystem_opens_in_qemu() {
    if skip() {
        return;
    }
    let dir = scratch("large");
    let img = dir.join("nine.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(9 << 40)
        .unwrap();
    let o = sh(
        "mke2fs",
        &[
            &"-q",
            &"-F",
            &"-t",
            &"ext4",
            &"-b",
            &"4096",
            &"-J",
            &"size=4",
            &"-O",
            &"sparse_super2,^resize_inode",
            &"-E",
            &"lazy_itable_init=1,num_backup_sb=1",
            &img,
        ],
    );
    if code(&o) != 0 {
        skipped(&format!(
            "mke2fs cannot make a 9 TiB filesystem here: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
        return;
    }
    let out = dir.join("nine.qcow2");
    let o = run(&[&"-Q", &"--json", &img, &out]);
    assert_eq!(code(&o), 0, "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["cluster_size"], 8192);
    assert!(
        summary["blocks_copied"]["backup_group_descriptors"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_qemu_check(&out);
    let info: serde_json::Value =
        serde_json::from_slice(&sh("qemu-img", &[&"info", &"--output=json", &out]).stdout).unwrap();
    assert_eq!(info["virtual-size"], 9u64 << 40);
    assert_eq!(info["cluster-size"], 8192);
    // Every non-zero block of a fresh filesystem is metadata: the image equals the source.
    assert_qemu_identical(&out, &img);
    // A cluster size with which QEMU cannot address the filesystem is a usage error.
    let small = dir.join("small-clusters.qcow2");
    let o = run(&[&"-Q", &"--cluster-size", &"4096", &img, &small]);
    assert_eq!(code(&o), 2, "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cluster-size 4096"));
    assert!(!small.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
