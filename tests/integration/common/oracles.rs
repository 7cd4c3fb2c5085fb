//! The oracles' side: qemu-img (check, compare, convert -l) and e2fsprogs (e2fsck, dumpe2fs,
//! debugfs -w) run on an image, with their verdicts asserted.

use super::{code, sh};
use std::path::Path;
use std::process::Command;

/// The filesystem UUID of an image, as `dumpe2fs -h` prints it.
pub fn fs_uuid(img: &Path) -> String {
    let o = sh("dumpe2fs", &[&"-h", &img]);
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Filesystem UUID:"))
        .map(|u| u.trim().to_string())
        .unwrap_or_else(|| panic!("no UUID in dumpe2fs -h {}", img.display()))
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
