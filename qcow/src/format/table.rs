//! L1 and L2 table entries (spec "Cluster mapping"): their decoders and their encoders, side
//! by side, so that the bit layout is stated once.
//!
//! Design: entries stay plain `u64`s in memory (decoded from big-endian on read); this module
//! holds the bit masks, the decoding of an L2 entry into a typed [`L2Entry`] (validating
//! reserved bits and alignment, never panicking) and its encoding back ([`L2Entry::encode`],
//! [`encode_compressed`]), the L1 entry codec ([`l1_entry_l2_offset`], [`encode_l1_entry`]),
//! and the few raw-entry helpers the writer's L2 windows need (an L2 window holds stored
//! entries with COPIED clear: [`without_copied`], [`set_copied`]). No other module touches an
//! entry's bits. Only standard 8-byte L2 entries exist here; extended L2 is refused at open
//! time. The table sizes are in [`crate::geometry`].

use crate::error::Error;
use crate::geometry::{Version, MAX_HOST_OFFSET};

/// Bit 63 of L1 and standard L2 entries: the refcount of the referenced cluster is exactly 1.
const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: the cluster is compressed.
const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of standard L2 entries (v3): the cluster reads as zero.
const OFLAG_ZERO: u64 = 1;
/// Bits 9–55 of L1 entries: L2 table offset.
const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of L1 entries (0–8 and 56–62); a set bit is corruption.
const L1E_RESERVED_MASK: u64 = 0x7f00_0000_0000_01ff;
/// Bits 9–55 of standard L2 entries: host cluster offset.
const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Reserved bits of standard L2 entries (1–8 and 56–61), QEMU's mask; a set bit is corruption.
const L2E_STD_RESERVED_MASK: u64 = 0x3f00_0000_0000_01fe;
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

/// The L2 table offset of an L1 entry (0 = unallocated), flags and reserved bits dropped: for
/// entries already validated by [`l1_entry_l2_offset`], or built by [`encode_l1_entry`].
pub(crate) fn l1_entry_table(entry: u64) -> u64 {
    entry & L1E_OFFSET_MASK
}

/// The L1 entry referencing the L2 table at host byte offset `l2_offset` (cluster aligned,
/// below 2^56; 0 = unallocated, which stays 0), with COPIED when `copied` (the table's
/// refcount is 1; spec "Cluster mapping", L1 table entry bit 63).
pub(crate) fn encode_l1_entry(l2_offset: u64, copied: bool) -> u64 {
    debug_assert_eq!(
        l2_offset & !L1E_OFFSET_MASK,
        0,
        "L2 table offset {l2_offset:#x}"
    );
    match l2_offset {
        0 => 0,
        t if copied => t | OFLAG_COPIED,
        t => t,
    }
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
        // Bits 0..x-1 offset, x..61 additional sector count.
        let x = compressed_offset_bits(cluster_bits);
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

    /// Encodes the entry without COPIED (add it with [`set_copied`]); the inverse of
    /// [`L2Entry::decode`] for images with `cluster_bits`.
    ///
    /// Errors: [`Error::InvalidArgument`] for a host offset of a normal or preallocated zero
    /// cluster that is 0, not cluster aligned or not below 2^56; those of
    /// [`encode_compressed`].
    pub(crate) fn encode(self, cluster_bits: u32) -> Result<u64, Error> {
        let standard = |host: u64, flags: u64| {
            if host == 0 || host & !L2E_OFFSET_MASK != 0 || !host.is_multiple_of(1 << cluster_bits)
            {
                return Err(Error::InvalidArgument(format!(
                    "host offset {host:#x} is not a cluster-aligned offset below 2^56"
                )));
            }
            Ok(host | flags)
        };
        match self {
            L2Entry::Unallocated => Ok(0),
            L2Entry::ZeroPlain => Ok(OFLAG_ZERO),
            L2Entry::ZeroAlloc { host } => standard(host, OFLAG_ZERO),
            L2Entry::Normal { host } => standard(host, 0),
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => encode_compressed(host, additional_sectors, cluster_bits),
        }
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

/// Encodes a compressed cluster descriptor (spec "Compressed Clusters Descriptor"): bit 62
/// set, with `x = 62 − (cluster_bits − 8)`, bits 0..x−1 the host byte offset of the first
/// compressed byte (any alignment), bits x..61 the number of 512-byte sectors the payload
/// uses after the one holding its first byte ([`compressed_sectors`]). COPIED is never set.
///
/// Errors: [`Error::Limit`] for a host offset that needs more than x bits or is not below
/// 2^56 (the file grew past what a descriptor can address at this cluster size);
/// [`Error::InvalidArgument`] for host offset 0 or a sector count over `cluster_bits − 8` bits.
pub(crate) fn encode_compressed(
    host: u64,
    additional_sectors: u64,
    cluster_bits: u32,
) -> Result<u64, Error> {
    let x = compressed_offset_bits(cluster_bits);
    if host == 0 {
        return Err(Error::InvalidArgument(
            "a compressed cluster cannot start at host offset 0".into(),
        ));
    }
    if host >> x != 0 || host >= MAX_HOST_OFFSET {
        return Err(Error::Limit(format!(
            "host offset {host:#x} does not fit the {x} offset bits of a compressed cluster descriptor (cluster_bits {cluster_bits})"
        )));
    }
    if additional_sectors >> (62 - x) != 0 {
        return Err(Error::InvalidArgument(format!(
            "{additional_sectors} additional sectors do not fit the {} bits of a compressed cluster descriptor (cluster_bits {cluster_bits})",
            62 - x
        )));
    }
    Ok(OFLAG_COMPRESSED | (additional_sectors << x) | host)
}

/// Bits of a compressed descriptor's host offset field: `x = 62 − (cluster_bits − 8)`.
fn compressed_offset_bits(cluster_bits: u32) -> u32 {
    62 - (cluster_bits - 8)
}

/// The sector count field of a compressed payload of `len` (≥ 1) bytes at host byte `host`:
/// the 512-byte sectors it touches after the one holding its first byte.
pub(crate) fn compressed_sectors(host: u64, len: u64) -> u64 {
    let last = (host + len.max(1) - 1) / COMPRESSED_SECTOR_SIZE;
    last - host / COMPRESSED_SECTOR_SIZE
}

/// A stored L2 entry as the writer's windows hold it: COPIED dropped, the host offset and the
/// zero flag of a standard entry kept (reserved bits dropped too), a compressed descriptor kept
/// whole (its offset and sector count use the other bits).
pub(crate) fn without_copied(stored: u64) -> u64 {
    if stored & OFLAG_COMPRESSED != 0 {
        stored & !OFLAG_COPIED
    } else {
        stored & (L2E_OFFSET_MASK | OFLAG_ZERO)
    }
}

/// The entry `raw` with COPIED set when `copied`, cleared otherwise. COPIED is only ever set on
/// an entry with a [`standard_cluster`]; the caller asks for it when that cluster's refcount is
/// 1 (spec "Cluster mapping", notes §2.2).
pub(crate) fn set_copied(raw: u64, copied: bool) -> u64 {
    let base = raw & !OFLAG_COPIED;
    if copied && standard_cluster(base).is_some() {
        base | OFLAG_COPIED
    } else {
        base
    }
}

/// The host byte offset of the one cluster a standard entry maps (a normal or preallocated
/// zero cluster: the cluster COPIED speaks of), or `None` for compressed, zero-plain and
/// unallocated entries. Bits are not validated: for entries this crate built or decoded.
pub(crate) fn standard_cluster(raw: u64) -> Option<u64> {
    let host = raw & L2E_OFFSET_MASK;
    (raw & OFLAG_COMPRESSED == 0 && host != 0).then_some(host)
}

/// The host byte offset of a normal data cluster (neither zero nor compressed), else `None`.
/// Bits are not validated: for entries this crate built or decoded.
#[cfg(test)]
pub(crate) fn data_cluster(raw: u64) -> Option<u64> {
    standard_cluster(raw).filter(|_| raw & OFLAG_ZERO == 0)
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

    #[test]
    fn compressed_descriptors_round_trip() {
        // Notes §1.6: 64 KiB clusters, host 0x5e173, 57 additional sectors.
        assert_eq!(
            encode_compressed(0x5e173, 57, 16).unwrap(),
            0x4e40_0000_0005_e173
        );
        for cb in [9, 12, 16, 21] {
            let x = compressed_offset_bits(cb);
            let max_host = ((1u64 << x) - 1).min(MAX_HOST_OFFSET - 1);
            let max_sectors = (1u64 << (cb - 8)) - 1;
            for host in [1, 0x200, 0x5e173, 1 << (cb + 3), max_host] {
                for sectors in [0, 1, max_sectors / 2, max_sectors] {
                    let e = L2Entry::Compressed {
                        host,
                        additional_sectors: sectors,
                    };
                    let raw = e.encode(cb).unwrap();
                    assert_eq!(raw, encode_compressed(host, sectors, cb).unwrap());
                    assert_eq!(L2Entry::decode(raw, cb, Version::V2, 0).unwrap(), e, "{cb}");
                    assert_eq!(set_copied(raw, true), raw, "never COPIED");
                    assert_eq!(without_copied(raw), raw);
                    assert_eq!((standard_cluster(raw), data_cluster(raw)), (None, None));
                }
            }
            assert!(matches!(
                encode_compressed(0, 0, cb),
                Err(Error::InvalidArgument(_))
            ));
            let past = max_host + 1;
            assert!(matches!(
                encode_compressed(past, 0, cb),
                Err(Error::Limit(_))
            ));
            let too_many = max_sectors + 1;
            assert!(matches!(
                encode_compressed(512, too_many, cb),
                Err(Error::InvalidArgument(_))
            ));
        }
        // A payload's sector count: the sectors it touches after its first one.
        assert_eq!(compressed_sectors(0x5e173, 1), 0);
        assert_eq!(compressed_sectors(0x5e173, 0x8d), 0);
        assert_eq!(compressed_sectors(0x5e173, 0x8e), 1);
        let len = compressed_len(0x5e173, 57);
        assert_eq!(compressed_sectors(0x5e173, len), 57);
    }

    #[test]
    fn standard_entries_round_trip() {
        for cb in [9, 16, 21] {
            let c = 1u64 << cb;
            for e in [
                L2Entry::Unallocated,
                L2Entry::ZeroPlain,
                L2Entry::ZeroAlloc { host: 3 * c },
                L2Entry::Normal { host: 5 * c },
            ] {
                let raw = e.encode(cb).unwrap();
                assert_eq!(L2Entry::decode(raw, cb, Version::V3, 0).unwrap(), e);
                let copied = set_copied(raw, true);
                assert_eq!(L2Entry::decode(copied, cb, Version::V3, 0).unwrap(), e);
                assert_eq!(without_copied(copied), raw);
                assert_eq!(set_copied(copied, false), raw);
            }
            let normal = L2Entry::Normal { host: 5 * c }.encode(cb).unwrap();
            assert_eq!(set_copied(normal, true), normal | OFLAG_COPIED);
            assert_eq!(data_cluster(set_copied(normal, true)), Some(5 * c));
            let zero = L2Entry::ZeroAlloc { host: 3 * c }.encode(cb).unwrap();
            assert_eq!(
                (standard_cluster(zero), data_cluster(zero)),
                (Some(3 * c), None)
            );
            assert_eq!(set_copied(1, true), 1, "no cluster, no COPIED");
            for host in [0, c + c / 2, MAX_HOST_OFFSET] {
                assert!(L2Entry::Normal { host }.encode(cb).is_err(), "{host:#x}");
            }
        }
        let l1 = encode_l1_entry(0x8_0000, true);
        assert_eq!(l1, 0x8000_0000_0008_0000);
        assert_eq!(l1_entry_l2_offset(l1, 0).unwrap(), 0x8_0000);
        assert_eq!(l1_entry_table(l1), 0x8_0000);
        assert_eq!(encode_l1_entry(0, true), 0);
    }
}
