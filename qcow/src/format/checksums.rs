//! The cluster checksum table: a private header extension of e2image-rs (spec "Header
//! extensions": readers ignore unknown types, QEMU keeps them) pointing at a table of one
//! CRC-32C per host cluster, and the auto-clear feature bit that says the table is current.
//!
//! Design (docs/verify.md): the table lies past every refcounted cluster and has refcount 0
//! itself (free space to QEMU: a refcounted cluster that no table references would be a leak to
//! `qemu-img check`). Entry `i` is the CRC-32C of host cluster `i`'s bytes (cluster 0, the
//! header, is not covered: its entry is 0). Only entries of clusters with a refcount above 0
//! mean anything. A writer that does not know [`AUTOCLEAR_CLUSTER_CHECKSUMS`] clears it when it
//! opens the image read-write (spec "autoclear_features"), so a clear bit says "another writer
//! may have changed clusters or allocated over the table": the table is stale.
//!
//! Extension data (big-endian, [`CHECKSUM_EXT_BYTES`] bytes): table_offset u64 (bytes, cluster
//! aligned), covered_clusters u64 (entries), algorithm u32 ([`ALGORITHM_CRC32C`]), table_crc
//! u32 (CRC-32C of the `4 · covered_clusters` entry bytes), flags u32, 4 reserved bytes (0).
//! Flag [`FLAG_CRC_TRAILER`]: the table's CRC-32C follows its entries (4 bytes, big-endian)
//! instead of being in `table_crc` (0 then): a stream writes its header first, before it knows
//! the table.

use crate::bytes::{encode_be, BigEndian};
use crate::error::Error;

/// Header extension type of the cluster checksum table ("e2ic"; private, not in the spec).
pub const EXT_CLUSTER_CHECKSUMS: u32 = 0x6532_6963;

/// Auto-clear feature bit 40: the cluster checksum table is current. A high bit, far from the
/// ones QEMU assigns (from bit 0 upwards: 0 bitmaps, 1 raw external data), so that QEMU never
/// gives it a meaning of its own; being auto-clear, any writer not knowing it clears it.
pub const AUTOCLEAR_CLUSTER_CHECKSUMS: u64 = 1 << 40;

/// Algorithm number of CRC-32C (Castagnoli), the only one defined.
pub const ALGORITHM_CRC32C: u32 = 1;

/// Flag: the table's own CRC-32C is the 4 bytes after its entries, not `table_crc`.
pub const FLAG_CRC_TRAILER: u32 = 1;

/// Bytes of the extension's data.
pub const CHECKSUM_EXT_BYTES: usize = 32;

/// The cluster checksum extension's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChecksumExtension {
    /// Byte offset of the table (cluster aligned).
    pub table_offset: u64,
    /// Number of entries: host clusters `0..covered_clusters` are covered.
    pub covered_clusters: u64,
    /// [`ALGORITHM_CRC32C`].
    pub algorithm: u32,
    /// CRC-32C of the table's entry bytes (0 with [`FLAG_CRC_TRAILER`]).
    pub table_crc: u32,
    /// [`FLAG_CRC_TRAILER`] or 0.
    pub flags: u32,
}

impl ChecksumExtension {
    /// The extension's data bytes.
    pub fn to_bytes(&self) -> [u8; CHECKSUM_EXT_BYTES] {
        let mut b = [0u8; CHECKSUM_EXT_BYTES];
        self.table_offset.put(&mut b, 0);
        self.covered_clusters.put(&mut b, 8);
        self.algorithm.put(&mut b, 16);
        self.table_crc.put(&mut b, 20);
        self.flags.put(&mut b, 24);
        b
    }

    /// Parses and bounds the extension's data for an image of `file_len` bytes with clusters
    /// of `1 << cluster_bits` bytes.
    ///
    /// Errors: [`Error::Corrupt`] for data shorter than [`CHECKSUM_EXT_BYTES`], an unaligned
    /// or zero offset, or a table running past the end of the file; [`Error::Unsupported`]
    /// for an unknown algorithm.
    pub fn parse(data: &[u8], cluster_bits: u32, file_len: u64) -> Result<Self, Error> {
        if data.len() < CHECKSUM_EXT_BYTES {
            let what = format!("cluster checksum extension of {} bytes", data.len());
            return Err(Error::corrupt(what, 0));
        }
        let e = ChecksumExtension {
            table_offset: u64::get(data, 0),
            covered_clusters: u64::get(data, 8),
            algorithm: u32::get(data, 16),
            table_crc: u32::get(data, 20),
            flags: u32::get(data, 24),
        };
        if e.flags & !FLAG_CRC_TRAILER != 0 {
            let what = format!("cluster checksum flags {:#x}", e.flags);
            return Err(Error::Unsupported(what));
        }
        if e.algorithm != ALGORITHM_CRC32C {
            let what = format!("cluster checksum algorithm {}", e.algorithm);
            return Err(Error::Unsupported(what));
        }
        let c = 1u64 << cluster_bits;
        let end = e
            .covered_clusters
            .checked_mul(4)
            .and_then(|n| n.checked_add(e.trailer_bytes()))
            .and_then(|n| e.table_offset.checked_add(n));
        let fits = end.is_some_and(|end| end <= file_len);
        if e.table_offset == 0 || !e.table_offset.is_multiple_of(c) || !fits {
            let what = format!(
                "cluster checksum table of {} entries at {:#x}: unaligned or past the end of the file",
                e.covered_clusters, e.table_offset
            );
            return Err(Error::corrupt(what, e.table_offset));
        }
        Ok(e)
    }

    /// Bytes of the table: its entries, and its CRC-32C after them with [`FLAG_CRC_TRAILER`].
    pub fn table_bytes(&self) -> u64 {
        self.covered_clusters * 4 + self.trailer_bytes()
    }

    /// 4 with [`FLAG_CRC_TRAILER`], else 0.
    fn trailer_bytes(&self) -> u64 {
        if self.flags & FLAG_CRC_TRAILER != 0 {
            4
        } else {
            0
        }
    }

    /// The table's length in whole clusters of `1 << cluster_bits` bytes.
    pub fn table_clusters(&self, cluster_bits: u32) -> u64 {
        self.table_bytes().div_ceil(1u64 << cluster_bits)
    }
}

/// CRC-32C of `bytes`.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Encodes `sums` as a table: big-endian entries, zero-padded to whole clusters of
/// `1 << cluster_bits` bytes. Returns (the bytes, the CRC-32C of the entries).
pub(crate) fn encode_table(sums: &[u32], cluster_bits: u32) -> (Vec<u8>, u32) {
    let mut bytes = Vec::with_capacity(sums.len() * 4);
    encode_be(sums, &mut bytes);
    let crc = crc32c(&bytes);
    let c = 1usize << cluster_bits;
    bytes.resize(bytes.len().next_multiple_of(c).max(c), 0);
    (bytes, crc)
}

/// Decodes a table's bytes (its [`ChecksumExtension::table_bytes`]), checking the entries
/// against `ext.table_crc` or, with [`FLAG_CRC_TRAILER`], the CRC-32C after them.
/// Errors: [`Error::Corrupt`] when the table's own checksum does not match.
pub(crate) fn decode_table(table_bytes: &[u8], ext: &ChecksumExtension) -> Result<Vec<u32>, Error> {
    let n = table_bytes
        .len()
        .saturating_sub(ext.trailer_bytes() as usize);
    let (entry_bytes, trailer) = table_bytes.split_at(n);
    let want = match trailer {
        [a, b, c, d] => u32::from_be_bytes([*a, *b, *c, *d]),
        _ => ext.table_crc,
    };
    let crc = crc32c(entry_bytes);
    if crc != want {
        let what =
            format!("cluster checksum table: CRC-32C {crc:#010x}, its record says {want:#010x}");
        return Err(Error::corrupt(what, ext.table_offset));
    }
    Ok(crate::bytes::decode_be(entry_bytes))
}

/// The byte position of extension `ext_type`'s data in `sector` (the image's first bytes, its
/// extensions starting at `header_length`), if it lies there entirely.
pub(crate) fn extension_data_at(
    sector: &[u8],
    header_length: usize,
    ext_type: u32,
) -> Option<usize> {
    let mut pos = header_length;
    while pos + 8 <= sector.len() {
        let t = u32::get(sector, pos);
        let len = u32::get(sector, pos + 4) as usize;
        if t == 0 {
            return None;
        }
        let start = pos + 8;
        if t == ext_type {
            return (start.checked_add(len)? <= sector.len()).then_some(start);
        }
        pos = start.checked_add(len.checked_next_multiple_of(8)?)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extension_round_trip_and_bounds() {
        let e = ChecksumExtension {
            table_offset: 0x3000,
            covered_clusters: 5,
            algorithm: ALGORITHM_CRC32C,
            table_crc: 0xdead_beef,
            flags: 0,
        };
        let b = e.to_bytes();
        assert_eq!(ChecksumExtension::parse(&b, 12, 0x4000).unwrap(), e);
        assert!(ChecksumExtension::parse(&b, 12, 0x3010).is_err());
        assert!(ChecksumExtension::parse(&b[..16], 12, 0x4000).is_err());
        let mut odd = e;
        odd.table_offset = 0x3001;
        assert!(ChecksumExtension::parse(&odd.to_bytes(), 12, 0x4000).is_err());
        odd = e;
        odd.algorithm = 2;
        assert!(matches!(
            ChecksumExtension::parse(&odd.to_bytes(), 12, 0x4000),
            Err(Error::Unsupported(_))
        ));
        odd = e;
        odd.covered_clusters = u64::MAX;
        assert!(ChecksumExtension::parse(&odd.to_bytes(), 12, 0x4000).is_err());
    }

    #[test]
    fn table_round_trip() {
        let sums = [0u32, 7, 0xffff_ffff];
        let (bytes, crc) = encode_table(&sums, 9);
        assert_eq!(bytes.len(), 512);
        let ext = ChecksumExtension {
            table_offset: 512,
            covered_clusters: 3,
            algorithm: ALGORITHM_CRC32C,
            table_crc: crc,
            flags: 0,
        };
        assert_eq!(decode_table(&bytes[..12], &ext).unwrap(), sums);
        let mut bad = bytes.clone();
        bad[5] ^= 1;
        assert!(decode_table(&bad[..12], &ext).is_err());
    }

    #[test]
    fn a_stream_table_carries_its_crc_after_the_entries() {
        let sums = [0u32, 7, 0xffff_ffff];
        let (mut bytes, crc) = encode_table(&sums, 9);
        bytes[12..16].copy_from_slice(&crc.to_be_bytes());
        let ext = ChecksumExtension {
            table_offset: 512,
            covered_clusters: 3,
            algorithm: ALGORITHM_CRC32C,
            table_crc: 0,
            flags: FLAG_CRC_TRAILER,
        };
        assert_eq!(ext.table_bytes(), 16);
        assert_eq!(
            ChecksumExtension::parse(&ext.to_bytes(), 9, 1024).unwrap(),
            ext
        );
        assert_eq!(decode_table(&bytes[..16], &ext).unwrap(), sums);
        let mut bad = bytes.clone();
        bad[14] ^= 1;
        assert!(decode_table(&bad[..16], &ext).is_err());
        let unknown = ChecksumExtension { flags: 2, ..ext };
        assert!(matches!(
            ChecksumExtension::parse(&unknown.to_bytes(), 9, 1024),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn finds_extension_in_sector() {
        let mut s = vec![0u8; 512];
        // header_length 112; one extension of 5 bytes, then ours of 32.
        0x1234_5678u32.put(&mut s, 112);
        5u32.put(&mut s, 116);
        EXT_CLUSTER_CHECKSUMS.put(&mut s, 128);
        32u32.put(&mut s, 132);
        assert_eq!(extension_data_at(&s, 112, EXT_CLUSTER_CHECKSUMS), Some(136));
        assert_eq!(extension_data_at(&s, 112, 0x9999), None);
    }
}
