//! The QCOW2 header (spec "Header", cluster 0).
//!
//! Design: [`RawHeader`] (in `raw.rs`) mirrors the on-disk layout field by field (`repr(C)`, no
//! padding; its size and field offsets are asserted at compile time against the spec) and is
//! (de)coded by reading each big-endian field at its `offset_of!` position, so the layout is
//! stated once. [`Header::parse`] turns the raw fields into a validated [`Header`]: every rule
//! QEMU applies at open time that does not need the file size is checked here, with the field's
//! byte offset in the error. Header extensions are not interpreted (none is mandatory; see the
//! notes §1.3).

mod raw;
#[cfg(test)]
mod tests;

use std::mem::offset_of;

use raw::{RawHeader, V3_MIN_HEADER_LENGTH};
pub(crate) use raw::{V2_HEADER_LENGTH, V3_HEADER_LENGTH};

use super::refcount::{DEFAULT_REFCOUNT_ORDER, MAX_REFCOUNT_ORDER};
use crate::error::Error;
use crate::geometry::{
    l1_entries_within_limit, Version, MAX_BACKING_FILE_NAME, MAX_CLUSTER_BITS, MAX_HOST_OFFSET,
    MAX_L1_ENTRIES, MAX_REFTABLE_BYTES, MAX_SNAPSHOTS, MIN_CLUSTER_BITS,
};

/// The four magic bytes at offset 0 of every QCOW2 image: "QFI\xfb" (spec "Header", `magic`).
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// [`QCOW2_MAGIC`] as the header's big-endian `magic` field.
const MAGIC: u32 = u32::from_be_bytes(QCOW2_MAGIC);

/// Incompatible feature bit 0: refcounts may be stale.
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is marked corrupt.
pub(crate) const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub(crate) const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not deflate.
pub(crate) const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible feature bit 4: extended (16-byte) L2 entries with subclusters.
pub(crate) const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// All incompatible feature bits defined by the spec; any other set bit makes an image unusable.
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

/// `compression_type` 0: raw deflate.
pub(crate) const COMPRESSION_DEFLATE: u8 = 0;
/// `compression_type` 1: zstd.
const COMPRESSION_ZSTD: u8 = 1;

/// A validated QCOW2 header (spec "Header"). Offsets are host file byte offsets; `size` is the
/// virtual disk size in bytes. For version 2 the v3-only fields hold their implied values
/// (features 0, `refcount_order` 4, `header_length` 72, `compression_type` 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Format version.
    pub version: Version,
    /// log2 of the cluster size in bytes, 9..=21.
    pub cluster_bits: u32,
    /// Virtual disk size in bytes.
    pub size: u64,
    /// Number of 8-byte entries in the active L1 table.
    pub l1_size: u32,
    /// Byte offset of the active L1 table (cluster aligned).
    pub l1_table_offset: u64,
    /// Byte offset of the refcount table (cluster aligned).
    pub refcount_table_offset: u64,
    /// Length of the refcount table in clusters.
    pub refcount_table_clusters: u32,
    /// Number of entries in the snapshot table.
    pub nb_snapshots: u32,
    /// Byte offset of the snapshot table (cluster aligned; 0 when there are no snapshots).
    pub snapshots_offset: u64,
    /// Incompatible feature bits: 0 dirty, 1 corrupt, 2 external data file, 3 compression
    /// type, 4 extended L2 entries; any other set bit makes the image unusable.
    pub incompatible_features: u64,
    /// Compatible feature bits (bit 0: lazy refcounts).
    pub compatible_features: u64,
    /// Auto-clear feature bits.
    pub autoclear_features: u64,
    /// Refcount width is `1 << refcount_order` bits.
    pub refcount_order: u32,
    /// Header length in bytes (72 for v2).
    pub header_length: u32,
    /// Compression type: 0 deflate, 1 zstd.
    pub compression_type: u8,
    /// Byte offset of the backing file name in cluster 0 (0 = no backing file).
    pub backing_file_offset: u64,
    /// Length of the backing file name in bytes.
    pub backing_file_size: u32,
    /// Encryption method: 0 none, 1 AES, 2 LUKS.
    pub crypt_method: u32,
}

fn corrupt(what: String, field_offset: usize) -> Error {
    Error::corrupt(what, field_offset as u64)
}

/// Bytes of the header sector that an in-place edit rewrites in one write (the first 512,
/// which hold every header field; cluster 0 is at least that long).
pub(crate) const HEADER_SECTOR_BYTES: usize = 512;

/// The header fields that locate the image's tables: what an in-place edit changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TableFields {
    /// Byte offset of the active L1 table.
    pub(crate) l1_table_offset: u64,
    /// Byte offset of the refcount table.
    pub(crate) refcount_table_offset: u64,
    /// Length of the refcount table in clusters.
    pub(crate) refcount_table_clusters: u32,
    /// Number of snapshot table entries.
    pub(crate) nb_snapshots: u32,
    /// Byte offset of the snapshot table (0 without snapshots).
    pub(crate) snapshots_offset: u64,
}

/// Patches `fields` into `sector` (the image's first [`HEADER_SECTOR_BYTES`] bytes as read),
/// leaving every other byte (other fields, header extensions) as it was. For a v3 image the
/// auto-clear feature bits are cleared too: this crate does not know them, and the spec asks a
/// writer that modifies an image without understanding them to clear them.
pub(crate) fn patch_table_fields(sector: &mut [u8], fields: &TableFields, version: Version) {
    use crate::bytes::BigEndian;
    fields
        .l1_table_offset
        .put(sector, offset_of!(RawHeader, l1_table_offset));
    fields
        .refcount_table_offset
        .put(sector, offset_of!(RawHeader, refcount_table_offset));
    fields
        .refcount_table_clusters
        .put(sector, offset_of!(RawHeader, refcount_table_clusters));
    fields
        .nb_snapshots
        .put(sector, offset_of!(RawHeader, nb_snapshots));
    fields
        .snapshots_offset
        .put(sector, offset_of!(RawHeader, snapshots_offset));
    if version == Version::V3 {
        0u64.put(sector, offset_of!(RawHeader, autoclear_features));
    }
}

impl Header {
    /// Parses and validates a header from the start of the image file. `buf` must hold at least
    /// the header (72 bytes for v2, `header_length` or 112 bytes, whichever is smaller, for v3).
    ///
    /// Errors: [`Error::Corrupt`] (bad magic, truncated header, misaligned offsets, an L1 table
    /// too small for the virtual size, inconsistent compression type, ...) with the field's byte
    /// offset; [`Error::Unsupported`] (version other than 2/3, cluster_bits outside 9..=21,
    /// unknown incompatible bits, unknown compression or encryption method);
    /// [`Error::Limit`] (L1 table over 32 MiB, refcount table over 8 MiB, over 65 536
    /// snapshots, virtual size needing such an L1 table).
    pub fn parse(buf: &[u8]) -> Result<Header, Error> {
        if buf.len() < V2_HEADER_LENGTH as usize {
            return Err(corrupt(
                format!("header truncated to {} bytes", buf.len()),
                0,
            ));
        }
        let mut bytes = [0u8; RawHeader::LEN];
        let n = buf.len().min(RawHeader::LEN);
        bytes[..n].copy_from_slice(&buf[..n]);
        let raw = RawHeader::decode(&bytes);
        if raw.magic != MAGIC {
            return Err(corrupt(
                format!("bad magic {:#010x}, not a QCOW2 image", raw.magic),
                0,
            ));
        }
        let version = match raw.version {
            2 => Version::V2,
            3 => Version::V3,
            v => return Err(Error::Unsupported(format!("version {v} (offset 0x4)"))),
        };
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&raw.cluster_bits) {
            return Err(Error::Unsupported(format!(
                "cluster_bits {} (offset 0x14), supported {MIN_CLUSTER_BITS}..={MAX_CLUSTER_BITS}",
                raw.cluster_bits
            )));
        }
        let header = match version {
            Version::V2 => Self::from_raw_v2(&raw),
            Version::V3 => Self::from_raw_v3(&raw, buf.len())?,
        };
        header.validate()?;
        Ok(header)
    }

    fn from_raw_v2(raw: &RawHeader) -> Header {
        Header {
            version: Version::V2,
            cluster_bits: raw.cluster_bits,
            size: raw.size,
            l1_size: raw.l1_size,
            l1_table_offset: raw.l1_table_offset,
            refcount_table_offset: raw.refcount_table_offset,
            refcount_table_clusters: raw.refcount_table_clusters,
            nb_snapshots: raw.nb_snapshots,
            snapshots_offset: raw.snapshots_offset,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: DEFAULT_REFCOUNT_ORDER,
            header_length: V2_HEADER_LENGTH,
            compression_type: COMPRESSION_DEFLATE,
            backing_file_offset: raw.backing_file_offset,
            backing_file_size: raw.backing_file_size,
            crypt_method: raw.crypt_method,
        }
    }

    fn from_raw_v3(raw: &RawHeader, buf_len: usize) -> Result<Header, Error> {
        let hl_at = offset_of!(RawHeader, header_length);
        let hl = raw.header_length;
        if hl < V3_MIN_HEADER_LENGTH
            || !hl.is_multiple_of(8)
            || u64::from(hl) > 1 << raw.cluster_bits
        {
            return Err(corrupt(format!("v3 header_length {hl} (must be >= 104, a multiple of 8 and <= the cluster size)"), hl_at));
        }
        let needed = (hl as usize).min(RawHeader::LEN);
        if buf_len < needed {
            return Err(corrupt(
                format!("header truncated to {buf_len} bytes, header_length {hl}"),
                0,
            ));
        }
        let compression_type = if hl > V3_MIN_HEADER_LENGTH {
            raw.compression_type
        } else {
            0
        };
        let mut h = Self::from_raw_v2(raw);
        h.version = Version::V3;
        h.incompatible_features = raw.incompatible_features;
        h.compatible_features = raw.compatible_features;
        h.autoclear_features = raw.autoclear_features;
        h.refcount_order = raw.refcount_order;
        h.header_length = hl;
        h.compression_type = compression_type;
        Ok(h)
    }

    /// Checks the rules that do not depend on the file size.
    fn validate(&self) -> Result<(), Error> {
        self.validate_features()?;
        self.validate_backing_file()?;
        self.validate_l1()?;
        self.validate_refcount_table()?;
        self.validate_snapshot_table()
    }

    fn validate_features(&self) -> Result<(), Error> {
        if self.refcount_order > MAX_REFCOUNT_ORDER {
            let at = offset_of!(RawHeader, refcount_order);
            return Err(corrupt(
                format!("refcount_order {} > 6", self.refcount_order),
                at,
            ));
        }
        let unknown = self.incompatible_features & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Error::Unsupported(format!(
                "unknown incompatible feature bits {unknown:#x} (offset 0x48)"
            )));
        }
        let ct_at = offset_of!(RawHeader, compression_type);
        if self.compression_type > COMPRESSION_ZSTD {
            return Err(Error::Unsupported(format!(
                "compression_type {} (offset {ct_at:#x})",
                self.compression_type
            )));
        }
        let bit = self.incompatible_features & INCOMPAT_COMPRESSION_TYPE != 0;
        if bit != (self.compression_type != COMPRESSION_DEFLATE) {
            return Err(corrupt(
                format!(
                    "compression_type {} disagrees with incompatible bit 3 ({bit})",
                    self.compression_type
                ),
                ct_at,
            ));
        }
        if self.crypt_method > 2 {
            let at = offset_of!(RawHeader, crypt_method);
            return Err(Error::Unsupported(format!(
                "crypt_method {} (offset {at:#x})",
                self.crypt_method
            )));
        }
        Ok(())
    }

    fn validate_backing_file(&self) -> Result<(), Error> {
        if self.backing_file_offset == 0 {
            return Ok(());
        }
        let end = self
            .backing_file_offset
            .checked_add(u64::from(self.backing_file_size));
        if self.backing_file_size > MAX_BACKING_FILE_NAME
            || end.is_none_or(|e| e > self.cluster_size())
        {
            return Err(corrupt(
                format!("backing file name at {:#x}, {} bytes, is not inside cluster 0 or longer than 1023 bytes", self.backing_file_offset, self.backing_file_size),
                offset_of!(RawHeader, backing_file_offset),
            ));
        }
        Ok(())
    }

    fn validate_l1(&self) -> Result<(), Error> {
        if u64::from(self.l1_size) > MAX_L1_ENTRIES {
            return Err(Error::Limit(format!(
                "active L1 table of {} entries exceeds {MAX_L1_ENTRIES} (32 MiB)",
                self.l1_size
            )));
        }
        let needed = l1_entries_within_limit(self.size, self.cluster_bits).ok_or_else(|| {
            Error::Limit(format!(
                "virtual size {} needs an L1 table over 32 MiB at cluster_bits {}",
                self.size, self.cluster_bits
            ))
        })?;
        let at = offset_of!(RawHeader, l1_size);
        if u64::from(self.l1_size) < needed {
            return Err(corrupt(
                format!(
                    "L1 table is too small: l1_size {} < {needed} needed for virtual size {}",
                    self.l1_size, self.size
                ),
                at,
            ));
        }
        let at = offset_of!(RawHeader, l1_table_offset);
        self.check_table_offset(
            "l1_table_offset",
            self.l1_table_offset,
            self.l1_size > 0,
            at,
        )
    }

    fn validate_refcount_table(&self) -> Result<(), Error> {
        let at = offset_of!(RawHeader, refcount_table_offset);
        self.check_table_offset(
            "refcount_table_offset",
            self.refcount_table_offset,
            true,
            at,
        )?;
        let at = offset_of!(RawHeader, refcount_table_clusters);
        if self.refcount_table_clusters == 0 {
            return Err(corrupt("refcount_table_clusters is 0".to_string(), at));
        }
        let bytes = u64::from(self.refcount_table_clusters) << self.cluster_bits;
        if bytes > MAX_REFTABLE_BYTES {
            return Err(Error::Limit(format!(
                "refcount table of {bytes} bytes exceeds {MAX_REFTABLE_BYTES}"
            )));
        }
        Ok(())
    }

    fn validate_snapshot_table(&self) -> Result<(), Error> {
        if self.nb_snapshots > MAX_SNAPSHOTS {
            return Err(Error::Limit(format!(
                "nb_snapshots {} exceeds {MAX_SNAPSHOTS}",
                self.nb_snapshots
            )));
        }
        let at = offset_of!(RawHeader, snapshots_offset);
        self.check_table_offset(
            "snapshots_offset",
            self.snapshots_offset,
            self.nb_snapshots > 0,
            at,
        )
    }

    /// A table offset must be cluster aligned, below 2^56, and (when the table is used) not 0.
    fn check_table_offset(
        &self,
        name: &str,
        offset: u64,
        used: bool,
        at: usize,
    ) -> Result<(), Error> {
        if !offset.is_multiple_of(self.cluster_size())
            || offset >= MAX_HOST_OFFSET
            || (used && offset == 0)
        {
            return Err(corrupt(
                format!("{name} {offset:#x} is not a valid cluster-aligned offset"),
                at,
            ));
        }
        Ok(())
    }

    /// Cluster size in bytes (`1 << cluster_bits`).
    pub fn cluster_size(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Serializes the header (spec "Header"): 72 bytes for v2, `header_length` bytes for v3 (bytes past 112 are
    /// zero). Header extensions are not written (the caller may append an end marker).
    pub fn to_bytes(&self) -> Vec<u8> {
        let v3 = self.version == Version::V3;
        let raw = RawHeader {
            magic: MAGIC,
            version: self.version.number(),
            backing_file_offset: self.backing_file_offset,
            backing_file_size: self.backing_file_size,
            cluster_bits: self.cluster_bits,
            size: self.size,
            crypt_method: self.crypt_method,
            l1_size: self.l1_size,
            l1_table_offset: self.l1_table_offset,
            refcount_table_offset: self.refcount_table_offset,
            refcount_table_clusters: self.refcount_table_clusters,
            nb_snapshots: self.nb_snapshots,
            snapshots_offset: self.snapshots_offset,
            incompatible_features: if v3 { self.incompatible_features } else { 0 },
            compatible_features: if v3 { self.compatible_features } else { 0 },
            autoclear_features: if v3 { self.autoclear_features } else { 0 },
            refcount_order: if v3 { self.refcount_order } else { 0 },
            header_length: if v3 { self.header_length } else { 0 },
            compression_type: if v3 { self.compression_type } else { 0 },
            padding: [0; 7],
        };
        let len = if v3 {
            self.header_length as usize
        } else {
            V2_HEADER_LENGTH as usize
        };
        let mut out = raw.encode().to_vec();
        out.resize(len, 0);
        out
    }
}
