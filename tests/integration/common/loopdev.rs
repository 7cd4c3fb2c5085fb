//! Loop devices for the tests that need a block device (as root; callers skip visibly
//! when `attach` gives `None`).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop device over a file: unmounted (when `mnt` is set) and detached on drop.
pub struct Loop {
    /// The device path (`/dev/loopN`).
    pub dev: String,
    /// Where the test mounted it, if it did.
    pub mnt: Option<PathBuf>,
}

impl Loop {
    /// Attaches a free loop device over `file` (`losetup -f --show`); `None` when that is
    /// not possible here.
    pub fn attach(file: &Path) -> Option<Loop> {
        let o = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        let dev = String::from_utf8_lossy(&o.stdout).trim().to_string();
        (!dev.is_empty()).then_some(Loop { dev, mnt: None })
    }

    /// The device's path.
    pub fn path(&self) -> &Path {
        Path::new(&self.dev)
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        if let Some(m) = &self.mnt {
            let _ = Command::new("umount").arg(m).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}
