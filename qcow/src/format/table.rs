//! L1 and L2 table entries (spec "Cluster mapping").
//!
//! Design: entries stay plain `u64`s in memory (decoded from big-endian on read); this module
//! holds the bit masks and the decoding of an L2 entry into a typed [`L2Entry`] (validating
//! reserved bits and alignment, never panicking). Only standard 8-byte L2 entries exist here;
//! extended L2 is refused at open time. The table sizes are in [`crate::geometry`].

use crate::error::Error;
use crate::geometry::{Version, MAX_HOST_OFFSET};

/// Bit 63 of L1 and standard L2 entries: the refcount of the referenced cluster is exactly 1.
pub(crate) const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: the cluster is compressed.
pub(crate) const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): the cluster reads as zero.
pub(crate) const OFLAG_ZERO: u64 = 1;
/// Bits 9–55 of L1 entries: L2 table offset.
pub(crate) const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of L1 entries (0–8 and 56–62); a set bit is corruption.
pub(crate) const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Bits 9–55 of standard L2 entries: host cluster offset.
pub(crate) const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of standard L2 entries (1–8 and 56–61), QEMU's mask; a set bit is corruption.
pub(crate) const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
/// Size of a compressed-cluster sector in bytes (the unit of the sector count field).
pub(crate) const COMPRESSED_SECTOR_SIZE: u64 = 512;

/// Validates an L1 entry found at host byte offset `at` and returns its L2 table offset
/// (0 = unallocated). Errors: [`Error::Corrupt`] for reserved bits set.
pub(crate) fn l1_entry_l2_offset(entry: u64, at: u64) -> Result<u64, Error> {
    if entry & L1E_RESERVED_MASK != 0 {
        return Err(Error::corrupt(
            format!("L1 entry {entry:#018x} has reserved bits set"),
            at,
        ));
    }
    Ok(entry & L1E_OFFSET_MASK)
}

/// A decoded standard L2 entry (spec "Standard Cluster Descriptor" / "Compressed Clusters
/// Descriptor"). Offsets are host file byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum L2Entry {
    /// All bits 0: reads as zero (no backing file); not refcounted.
    Unallocated,
    /// Zero flag without a host cluster: reads as zero; not refcounted.
    ZeroPlain,
    /// Zero flag with a preallocated host cluster: reads as zero; the cluster is refcounted.
    ZeroAlloc {
        /// Host cluster offset (cluster aligned).
        host: u64,
    },
    /// Data in one host cluster.
    Normal {
        /// Host cluster offset (cluster aligned).
        host: u64,
    },
    /// Compressed data starting at an arbitrary host byte offset.
    Compressed {
        /// Host byte offset of the first compressed byte.
        host: u64,
        /// Number of 512-byte sectors after the one holding the first byte.
        additional_sectors: u64,
    },
}

impl L2Entry {
    /// Decodes `raw` found at host byte offset `at` of an image with the given geometry.
    /// Errors: [`Error::Corrupt`] for reserved bits, COPIED on a compressed entry, a zero flag in
    /// a v2 image, or a misaligned data cluster offset.
    pub(crate) fn decode(
        raw: u64,
        cluster_bits: u32,
        version: Version,
        at: u64,
    ) -> Result<L2Entry, Error> {
        if raw & OFLAG_COMPRESSED != 0 {
            return Self::decode_compressed(raw, cluster_bits, at);
        }
        if raw & L2E_STD_RESERVED_MASK != 0 {
            return Err(Error::corrupt(
                format!("L2 entry {raw:#018x} has reserved bits set"),
                at,
            ));
        }
        let host = raw & L2E_OFFSET_MASK;
        let zero = raw & OFLAG_ZERO != 0;
        if zero && version == Version::V2 {
            return Err(Error::corrupt(
                format!("L2 entry {raw:#018x} has the zero flag in a v2 image"),
                at,
            ));
        }
        if !host.is_multiple_of(1u64 << cluster_bits) {
            return Err(Error::corrupt(
                format!("L2 entry {raw:#018x}: data cluster offset is not cluster aligned"),
                at,
            ));
        }
        Ok(match (zero, host) {
            (false, 0) if raw & OFLAG_COPIED == 0 => L2Entry::Unallocated,
            (false, 0) => {
                return Err(Error::corrupt(
                    format!("L2 entry {raw:#018x}: data at host offset 0 without a data file"),
                    at,
                ))
            }
            (true, 0) => L2Entry::ZeroPlain,
            (true, host) => L2Entry::ZeroAlloc { host },
            (false, host) => L2Entry::Normal { host },
        })
    }

    fn decode_compressed(raw: u64, cluster_bits: u32, at: u64) -> Result<L2Entry, Error> {
        if raw & OFLAG_COPIED != 0 {
            return Err(Error::corrupt(
                format!("compressed L2 entry {raw:#018x} has COPIED set"),
                at,
            ));
        }
        // x = 62 - (cluster_bits - 8): bits 0..x-1 offset, x..61 additional sector count.
        let x = 62 - (cluster_bits - 8);
        let host = raw & ((1u64 << x) - 1);
        let additional_sectors = (raw & !(OFLAG_COPIED | OFLAG_COMPRESSED)) >> x;
        if host == 0 || host >= MAX_HOST_OFFSET {
            return Err(Error::corrupt(
                format!("compressed L2 entry {raw:#018x}: invalid host offset"),
                at,
            ));
        }
        Ok(L2Entry::Compressed {
            host,
            additional_sectors,
        })
    }

    /// Host clusters (as `[first, last]` cluster numbers) whose refcount this entry contributes
    /// to, or `None` for unallocated and zero-plain entries. A compressed payload counts every
    /// host cluster its byte range `[host, host + (n+1)·512 − (host & 511))` touches.
    pub(crate) fn host_cluster_range(&self, cluster_bits: u32) -> Option<(u64, u64)> {
        match *self {
            L2Entry::Unallocated | L2Entry::ZeroPlain => None,
            L2Entry::ZeroAlloc { host } | L2Entry::Normal { host } => {
                Some((host >> cluster_bits, host >> cluster_bits))
            }
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => {
                let len = compressed_len(host, additional_sectors);
                Some((host >> cluster_bits, (host + len - 1) >> cluster_bits))
            }
        }
    }
}

/// Number of bytes QEMU reads for a compressed payload: `(n + 1) · 512 − (host & 511)`.
/// `additional_sectors` has at most 13 bits, so this cannot overflow.
pub(crate) fn compressed_len(host: u64, additional_sectors: u64) -> u64 {
    (additional_sectors + 1) * COMPRESSED_SECTOR_SIZE - (host & (COMPRESSED_SECTOR_SIZE - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_entries_from_qemu_images() {
        let v3 = Version::V3;
        assert_eq!(L2Entry::decode(0, 16, v3, 0).unwrap(), L2Entry::Unallocated);
        assert_eq!(L2Entry::decode(1, 16, v3, 0).unwrap(), L2Entry::ZeroPlain);
        assert_eq!(
            L2Entry::decode(0x60001, 16, v3, 0).unwrap(),
            L2Entry::ZeroAlloc { host: 0x60000 }
        );
        assert_eq!(
            L2Entry::decode(0x8000_0000_000e_0000, 16, v3, 0).unwrap(),
            L2Entry::Normal { host: 0xe0000 }
        );
        // Notes §1.6: 64 KiB clusters, host 0x5e173, 57 additional sectors.
        let e = L2Entry::decode(0x4e40_0000_0005_e173, 16, v3, 0).unwrap();
        assert_eq!(
            e,
            L2Entry::Compressed {
                host: 0x5e173,
                additional_sectors: 57
            }
        );
        assert_eq!(e.host_cluster_range(16), Some((5, 6)));
        assert!(L2Entry::decode(1, 16, Version::V2, 0).is_err());
        assert!(L2Entry::decode(0x60002, 16, v3, 0).is_err());
        assert!(L2Entry::decode(0x60200, 16, v3, 0).is_err());
        assert!(L2Entry::decode(0xc000_0000_0005_0000, 16, v3, 0).is_err());
        assert!(L2Entry::decode(OFLAG_COPIED, 16, v3, 0).is_err());
        assert!(l1_entry_l2_offset(0x8000_0000_0008_0000, 0).is_ok());
        assert!(l1_entry_l2_offset(0x0000_0000_0008_0001, 0).is_err());
    }
}
