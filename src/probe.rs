//! What a file holds, from its first bytes: a QCOW2 image, or an ext2/3/4 filesystem.

use anyhow::{Context, Result};
use std::path::Path;

/// True if the file starts with the QCOW2 magic.
///
/// # Errors
/// The file cannot be opened or read.
pub fn is_qcow2(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut magic = [0u8; 4];
    let n = f
        .read(&mut magic)
        .with_context(|| format!("cannot read {}", path.display()))?;
    Ok(n == 4 && magic == qcow::QCOW2_MAGIC)
}

/// "ext2", "ext3" or "ext4" when `path` holds an ext filesystem's primary superblock.
pub fn ext_family(path: &Path) -> Option<&'static str> {
    use ext::{compat, incompat};
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).ok()?;
    let mut raw = vec![0u8; ext::SUPERBLOCK_SIZE];
    f.read_exact_at(&mut raw, ext::SUPERBLOCK_OFFSET).ok()?;
    let sb = ext::Superblock::parse(&raw).ok()?;
    Some(
        if sb.has_incompat(incompat::EXTENTS | incompat::BIT64 | incompat::FLEX_BG) {
            "ext4"
        } else if sb.has_compat(compat::HAS_JOURNAL) {
            "ext3"
        } else {
            "ext2"
        },
    )
}
