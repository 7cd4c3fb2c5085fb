//! The image geometry shared by every layer above: the format version, the limits on sizes and
//! counts (each with its reason), and the sizing of L1 and L2 tables (spec "Cluster mapping").
//!
//! Design: plain constants and pure functions of `cluster_bits` and the virtual size, so the
//! on-disk codecs, the reader and the writer size tables the same way. A cluster is
//! `1 << cluster_bits` bytes (C); an L2 table is one cluster of 8-byte entries (C/8 of them).

/// Image format version (spec "Header", field `version`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// Version 2 (qemu "compat=0.10"): 72-byte header, no zero flag, 16-bit refcounts.
    V2,
    /// Version 3 (qemu "compat=1.1"): feature bits, zero clusters, variable refcount width.
    V3,
}

impl Version {
    /// The on-disk version number (2 or 3).
    pub fn number(self) -> u32 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
        }
    }
}

/// Smallest supported `cluster_bits` (512-byte clusters; spec minimum).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest supported `cluster_bits` (2 MiB clusters; QEMU's MAX_CLUSTER_BITS).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Host offsets must be below 2^56 bytes: L1/L2 entries hold them in bits 9–55.
pub(crate) const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Largest active or snapshot L1 table in bytes: 32 MiB (QEMU QCOW_MAX_L1_SIZE).
const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest L1 table in entries (8 bytes each): 4 Mi.
pub(crate) const MAX_L1_ENTRIES: u64 = MAX_L1_BYTES / 8;
/// Largest refcount table in bytes: 8 MiB (QEMU QCOW_MAX_REFTABLE_SIZE).
pub(crate) const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest number of internal snapshots: 65 536 (QEMU QCOW_MAX_SNAPSHOTS).
pub(crate) const MAX_SNAPSHOTS: u32 = 65536;
/// Largest extra data of one snapshot table entry in bytes: 1024 (QEMU
/// QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub(crate) const MAX_SNAPSHOT_EXTRA_BYTES: u32 = 1024;
/// Largest snapshot table in bytes: 64 MiB (QEMU QCOW_MAX_SNAPSHOTS_SIZE: 1 KiB × 65 536).
pub(crate) const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Longest backing file name in bytes: 1023 (QEMU).
pub(crate) const MAX_BACKING_FILE_NAME: u32 = 1023;

/// Checks a backing file to be named in a new image: a name of 1 to
/// [`MAX_BACKING_FILE_NAME`] bytes, format "raw" or "qcow2" (the backing format extension).
///
/// Errors: [`Error::InvalidArgument`](crate::Error::InvalidArgument) otherwise.
pub(crate) fn check_backing_file(name: &str, format: &str) -> Result<(), crate::Error> {
    let long = name.len() > MAX_BACKING_FILE_NAME as usize;
    if name.is_empty() || long || !matches!(format, "raw" | "qcow2") {
        return Err(crate::Error::InvalidArgument(format!(
            "backing file {name:?} ({format}): a name of 1 to {MAX_BACKING_FILE_NAME} bytes and format raw or qcow2"
        )));
    }
    Ok(())
}

/// Number of 8-byte entries in one L2 table (one cluster): `C / 8`.
pub(crate) fn l2_entries(cluster_bits: u32) -> u64 {
    1u64 << (cluster_bits - 3)
}

/// Number of guest clusters of a disk of `size` bytes (the last one may be partial).
pub(crate) fn guest_clusters(size: u64, cluster_bits: u32) -> u64 {
    size.div_ceil(1u64 << cluster_bits)
}

/// Number of L1 entries needed to map a disk of `size` bytes: `ceil(size / (C · C/8))`.
/// `None` if it does not fit a `u32` (the header field's width).
pub(crate) fn l1_entries_needed(size: u64, cluster_bits: u32) -> Option<u64> {
    let n = guest_clusters(size, cluster_bits).div_ceil(l2_entries(cluster_bits));
    u32::try_from(n).ok().map(u64::from)
}

/// Largest virtual disk size in bytes an image with `cluster_bits` can map within QEMU's
/// 32 MiB L1 limit: 4 Mi L1 entries × C/8 L2 entries × C bytes = 2^(2·cb + 19).
pub fn max_virtual_size(cluster_bits: u32) -> u64 {
    1u64.checked_shl(2 * cluster_bits + 19).unwrap_or(u64::MAX)
}

/// [`l1_entries_needed`] when it is at most [`MAX_L1_ENTRIES`] (a 32 MiB L1 table), else
/// `None`.
pub(crate) fn l1_entries_within_limit(size: u64, cluster_bits: u32) -> Option<u64> {
    l1_entries_needed(size, cluster_bits).filter(|&n| n <= MAX_L1_ENTRIES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        assert_eq!(l2_entries(16), 8192);
        assert_eq!(guest_clusters(100_352, 16), 2);
        assert_eq!(l1_entries_needed(128 << 20, 16), Some(1));
        assert_eq!(l1_entries_needed(8 << 40, 12), Some(4 << 20));
        assert_eq!(l1_entries_needed(16 << 40, 9), Some(1 << 29));
        assert_eq!(l1_entries_needed(u64::MAX, 9), None);
        assert_eq!(l1_entries_needed(0, 9), Some(0));
    }
}
