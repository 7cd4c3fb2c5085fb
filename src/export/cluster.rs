//! The QCOW2 cluster size of an export: the requested one, or the filesystem block size
//! (`-Q`) or 64 KiB (`-d`, `-c`), grown until QEMU's L1 table limit lets it address the disk.

use crate::exit::UsageError;
use anyhow::Result;
use qcow::{max_virtual_size, MAX_CLUSTER_BITS, MIN_CLUSTER_BITS};

/// Default cluster size with `-d` or `-c`: 64 KiB, QEMU's default.
const DATA_CLUSTER_BITS: u32 = 16;

/// The cluster size for an image of `size` bytes: the requested one (a power of two from 512
/// to 2 MiB, checked by the command line), else the filesystem block size (`-Q`) or 64 KiB
/// (`large`: `-d`, `-c`), grown until QEMU's L1 limit allows `size`.
///
/// # Errors
/// A requested cluster size with which QEMU cannot address `size` bytes.
pub fn choose_cluster_bits(
    size: u64,
    block_size: u32,
    large: bool,
    requested: Option<u64>,
) -> Result<u32> {
    if let Some(c) = requested {
        let cb = c.trailing_zeros().clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
        if max_virtual_size(cb) < size {
            return Err(UsageError(format!("--cluster-size {c}: QEMU cannot address an image of {} with it (L1 table over 32 MiB); use a larger one", crate::text::size(size))).into());
        }
        return Ok(cb);
    }
    let mut cb = if large {
        DATA_CLUSTER_BITS
    } else {
        block_size.trailing_zeros()
    };
    cb = cb.clamp(MIN_CLUSTER_BITS, MAX_CLUSTER_BITS);
    while max_virtual_size(cb) < size && cb < MAX_CLUSTER_BITS {
        cb += 1;
    }
    Ok(cb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_size_follows_block_size_until_l1_limit() {
        const T: u64 = 1 << 40;
        assert_eq!(
            choose_cluster_bits(64 << 20, 4096, false, None).unwrap(),
            12
        );
        assert_eq!(choose_cluster_bits(8 * T, 4096, false, None).unwrap(), 12);
        assert_eq!(choose_cluster_bits(15 * T, 4096, false, None).unwrap(), 13);
        assert_eq!(
            choose_cluster_bits(600 << 30, 1024, false, None).unwrap(),
            11
        );
        assert_eq!(choose_cluster_bits(64 << 20, 1024, true, None).unwrap(), 16);
        assert_eq!(
            choose_cluster_bits(64 << 20, 65536, false, None).unwrap(),
            16
        );
    }

    #[test]
    fn requested_cluster_size_is_checked_against_the_l1_limit() {
        assert_eq!(
            choose_cluster_bits(1 << 30, 4096, false, Some(512)).unwrap(),
            9
        );
        assert!(choose_cluster_bits(16 << 40, 4096, false, Some(4096)).is_err());
    }
}
