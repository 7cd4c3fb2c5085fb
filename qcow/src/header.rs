//! The QCOW2 header (spec "Header", cluster 0).
//!
//! Design: `RawHeader` mirrors the on-disk layout field by field (`repr(C)`, no padding; its size
//! and every field offset are asserted at compile time against the spec), and is (de)coded by
//! reading each big-endian field at its `offset_of!` position, so the layout is stated once.
//! [`Header::parse`] turns the raw fields into a validated [`Header`]: every rule QEMU applies at
//! open time that does not need the file size is checked here, with the field's byte offset in
//! the error. Header extensions are not interpreted (none is mandatory; see the notes §1.3).

use std::mem::{offset_of, size_of};

use crate::table::l1_entries_needed;
use crate::Error;

/// The four magic bytes at offset 0: "QFI\xfb".
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";
/// Length of a version 2 header in bytes (it has no `header_length` field).
pub const V2_HEADER_LENGTH: u32 = 72;
/// Minimum `header_length` of a version 3 header in bytes (without `compression_type`).
pub const V3_MIN_HEADER_LENGTH: u32 = 104;
/// `header_length` written for version 3 images: 104 + compression_type + 7 padding bytes,
/// what QEMU 10 writes.
pub const V3_HEADER_LENGTH: u32 = 112;
/// Smallest supported `cluster_bits` (512-byte clusters; spec minimum).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest supported `cluster_bits` (2 MiB clusters; QEMU's MAX_CLUSTER_BITS).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest active or snapshot L1 table in bytes: 32 MiB (QEMU QCOW_MAX_L1_SIZE).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest L1 table in entries (8 bytes each): 4 Mi.
pub const MAX_L1_ENTRIES: u64 = MAX_L1_BYTES / 8;
/// Largest refcount table in bytes: 8 MiB (QEMU QCOW_MAX_REFTABLE_SIZE).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest number of internal snapshots: 65 536 (QEMU QCOW_MAX_SNAPSHOTS).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Longest backing file name in bytes: 1023 (QEMU).
pub const MAX_BACKING_FILE_NAME: u32 = 1023;
/// Host offsets must be below 2^56 (L1/L2 entry bits 9–55).
pub const MAX_HOST_OFFSET: u64 = 1 << 56;
/// Largest `refcount_order` (64-bit refcounts).
pub const MAX_REFCOUNT_ORDER: u32 = 6;
/// `refcount_order` implied by version 2 and always written by this crate (16-bit refcounts).
pub const DEFAULT_REFCOUNT_ORDER: u32 = 4;

/// Incompatible feature bit 0: refcounts may be stale.
pub const INCOMPAT_DIRTY: u64 = 1 << 0;
/// Incompatible feature bit 1: the image is marked corrupt.
pub const INCOMPAT_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: guest data lives in an external data file.
pub const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// Incompatible feature bit 3: `compression_type` is not deflate.
pub const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
/// Incompatible feature bit 4: extended (16-byte) L2 entries with subclusters.
pub const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// All incompatible feature bits defined by the spec; any other set bit makes an image unusable.
pub const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_EXTERNAL_DATA
    | INCOMPAT_COMPRESSION_TYPE
    | INCOMPAT_EXTENDED_L2;

/// `compression_type` 0: raw deflate.
pub const COMPRESSION_DEFLATE: u8 = 0;
/// `compression_type` 1: zstd.
pub const COMPRESSION_ZSTD: u8 = 1;

/// Image format version.
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

/// The on-disk header layout, spec "Header": all integers big-endian, v3 fields zero in v2.
#[repr(C)]
struct RawHeader {
    magic: u32,
    version: u32,
    backing_file_offset: u64,
    backing_file_size: u32,
    cluster_bits: u32,
    size: u64,
    crypt_method: u32,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    nb_snapshots: u32,
    snapshots_offset: u64,
    incompatible_features: u64,
    compatible_features: u64,
    autoclear_features: u64,
    refcount_order: u32,
    header_length: u32,
    compression_type: u8,
    padding: [u8; 7],
}

const RAW_LEN: usize = size_of::<RawHeader>();
const _: () = assert!(RAW_LEN == V3_HEADER_LENGTH as usize);
const _: () = assert!(offset_of!(RawHeader, backing_file_offset) == 8);
const _: () = assert!(offset_of!(RawHeader, cluster_bits) == 20);
const _: () = assert!(offset_of!(RawHeader, size) == 24);
const _: () = assert!(offset_of!(RawHeader, l1_size) == 36);
const _: () = assert!(offset_of!(RawHeader, refcount_table_clusters) == 56);
const _: () = assert!(offset_of!(RawHeader, snapshots_offset) == 64);
const _: () = assert!(offset_of!(RawHeader, incompatible_features) == V2_HEADER_LENGTH as usize);
const _: () = assert!(offset_of!(RawHeader, refcount_order) == 96);
const _: () = assert!(offset_of!(RawHeader, compression_type) == V3_MIN_HEADER_LENGTH as usize);

fn get_u32(b: &[u8; RAW_LEN], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn get_u64(b: &[u8; RAW_LEN], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl RawHeader {
    /// Decodes the first 112 bytes (missing bytes of a short v2 header are zero).
    fn decode(b: &[u8; RAW_LEN]) -> RawHeader {
        RawHeader {
            magic: get_u32(b, offset_of!(RawHeader, magic)),
            version: get_u32(b, offset_of!(RawHeader, version)),
            backing_file_offset: get_u64(b, offset_of!(RawHeader, backing_file_offset)),
            backing_file_size: get_u32(b, offset_of!(RawHeader, backing_file_size)),
            cluster_bits: get_u32(b, offset_of!(RawHeader, cluster_bits)),
            size: get_u64(b, offset_of!(RawHeader, size)),
            crypt_method: get_u32(b, offset_of!(RawHeader, crypt_method)),
            l1_size: get_u32(b, offset_of!(RawHeader, l1_size)),
            l1_table_offset: get_u64(b, offset_of!(RawHeader, l1_table_offset)),
            refcount_table_offset: get_u64(b, offset_of!(RawHeader, refcount_table_offset)),
            refcount_table_clusters: get_u32(b, offset_of!(RawHeader, refcount_table_clusters)),
            nb_snapshots: get_u32(b, offset_of!(RawHeader, nb_snapshots)),
            snapshots_offset: get_u64(b, offset_of!(RawHeader, snapshots_offset)),
            incompatible_features: get_u64(b, offset_of!(RawHeader, incompatible_features)),
            compatible_features: get_u64(b, offset_of!(RawHeader, compatible_features)),
            autoclear_features: get_u64(b, offset_of!(RawHeader, autoclear_features)),
            refcount_order: get_u32(b, offset_of!(RawHeader, refcount_order)),
            header_length: get_u32(b, offset_of!(RawHeader, header_length)),
            compression_type: b[offset_of!(RawHeader, compression_type)],
            padding: [0; 7],
        }
    }

    /// Encodes all 112 bytes (the caller truncates to the version's header length).
    fn encode(&self) -> [u8; RAW_LEN] {
        let mut b = [0u8; RAW_LEN];
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(offset_of!(RawHeader, magic), &self.magic.to_be_bytes());
        put(offset_of!(RawHeader, version), &self.version.to_be_bytes());
        put(
            offset_of!(RawHeader, backing_file_offset),
            &self.backing_file_offset.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, backing_file_size),
            &self.backing_file_size.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, cluster_bits),
            &self.cluster_bits.to_be_bytes(),
        );
        put(offset_of!(RawHeader, size), &self.size.to_be_bytes());
        put(
            offset_of!(RawHeader, crypt_method),
            &self.crypt_method.to_be_bytes(),
        );
        put(offset_of!(RawHeader, l1_size), &self.l1_size.to_be_bytes());
        put(
            offset_of!(RawHeader, l1_table_offset),
            &self.l1_table_offset.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, refcount_table_offset),
            &self.refcount_table_offset.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, refcount_table_clusters),
            &self.refcount_table_clusters.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, nb_snapshots),
            &self.nb_snapshots.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, snapshots_offset),
            &self.snapshots_offset.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, incompatible_features),
            &self.incompatible_features.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, compatible_features),
            &self.compatible_features.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, autoclear_features),
            &self.autoclear_features.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, refcount_order),
            &self.refcount_order.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, header_length),
            &self.header_length.to_be_bytes(),
        );
        put(
            offset_of!(RawHeader, compression_type),
            &[self.compression_type],
        );
        put(offset_of!(RawHeader, padding), &self.padding);
        b
    }
}

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
    /// Incompatible feature bits (`INCOMPAT_*`).
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
        let mut bytes = [0u8; RAW_LEN];
        let n = buf.len().min(RAW_LEN);
        bytes[..n].copy_from_slice(&buf[..n]);
        let raw = RawHeader::decode(&bytes);
        if raw.magic.to_be_bytes() != QCOW2_MAGIC {
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
        let needed = (hl as usize).min(RAW_LEN);
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
        let needed = l1_entries_needed(self.size, self.cluster_bits)
            .filter(|&n| n <= MAX_L1_ENTRIES)
            .ok_or_else(|| {
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

    /// Serializes the header: 72 bytes for v2, `header_length` bytes for v3 (bytes past 112 are
    /// zero). Header extensions are not written (the caller may append an end marker).
    pub fn to_bytes(&self) -> Vec<u8> {
        let v3 = self.version == Version::V3;
        let raw = RawHeader {
            magic: u32::from_be_bytes(QCOW2_MAGIC),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn v3_header() -> Header {
        Header {
            version: Version::V3,
            cluster_bits: 16,
            size: 128 << 20,
            l1_size: 1,
            l1_table_offset: 0x30000,
            refcount_table_offset: 0x10000,
            refcount_table_clusters: 1,
            nb_snapshots: 2,
            snapshots_offset: 0xd0000,
            incompatible_features: 0,
            compatible_features: 0,
            autoclear_features: 0,
            refcount_order: 4,
            header_length: 112,
            compression_type: 0,
            backing_file_offset: 0,
            backing_file_size: 0,
            crypt_method: 0,
        }
    }

    fn v2_header() -> Header {
        Header {
            version: Version::V2,
            header_length: 72,
            cluster_bits: 12,
            size: 1 << 30,
            l1_size: 512,
            l1_table_offset: 0x3000,
            nb_snapshots: 0,
            snapshots_offset: 0,
            ..v3_header()
        }
    }

    #[test]
    fn round_trip_v3() {
        let h = v3_header();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), 112);
        assert_eq!(&bytes[..4], &QCOW2_MAGIC);
        assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn round_trip_v2() {
        let h = v2_header();
        let bytes = h.to_bytes();
        assert_eq!(bytes.len(), 72);
        assert_eq!(Header::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn qemu_e1_header_bytes() {
        // First 0x70 bytes of the image of the notes' experiment E1.
        let hex = [
            "514649fb000000030000000000000000", // magic, v3, no backing
            "00000000000000100000000008000000", // cluster_bits 16, size 128M
            "00000000000000010000000000030000", // crypt 0, l1_size 1, l1 @0x30000
            "00000000000100000000000100000002", // reftable @0x10000, 1 cluster, 2 snapshots
            "00000000000d00000000000000000000", // snapshot table @0xd0000, features 0
            "00000000000000000000000000000000",
            "00000004000000700000000000000000", // refcount_order 4, header_length 0x70
        ]
        .concat();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        assert_eq!(Header::parse(&bytes).unwrap(), v3_header());
    }

    fn patched(h: &Header, at: usize, bytes: &[u8]) -> Vec<u8> {
        let mut b = h.to_bytes();
        b[at..at + bytes.len()].copy_from_slice(bytes);
        b
    }

    fn expect_err(buf: &[u8], kind: &str) {
        let err = Header::parse(buf).expect_err("patched header must be rejected");
        let got = match err {
            Error::Corrupt { .. } => "corrupt",
            Error::Unsupported(_) => "unsupported",
            Error::Limit(_) => "limit",
            _ => "other",
        };
        assert_eq!(got, kind, "{err}");
    }

    #[test]
    fn rejects_each_rule() {
        let h = v3_header();
        expect_err(&h.to_bytes()[..71], "corrupt"); // truncated
        expect_err(&h.to_bytes()[..100], "corrupt"); // v3 truncated below header_length
        expect_err(&patched(&h, 0, b"QFI\0"), "corrupt"); // magic
        expect_err(&patched(&h, 4, &4u32.to_be_bytes()), "unsupported"); // version
        expect_err(&patched(&h, 4, &1u32.to_be_bytes()), "unsupported");
        expect_err(&patched(&h, 20, &8u32.to_be_bytes()), "unsupported"); // cluster_bits
        expect_err(&patched(&h, 20, &22u32.to_be_bytes()), "unsupported");
        expect_err(&patched(&h, 100, &96u32.to_be_bytes()), "corrupt"); // header_length < 104
        expect_err(&patched(&h, 100, &108u32.to_be_bytes()), "corrupt"); // not a multiple of 8
        expect_err(&patched(&h, 96, &7u32.to_be_bytes()), "corrupt"); // refcount_order
        expect_err(&patched(&h, 72, &0x20u64.to_be_bytes()), "unsupported"); // unknown incompat
        expect_err(&patched(&h, 104, &[2]), "unsupported"); // compression_type
        expect_err(&patched(&h, 104, &[1]), "corrupt"); // zstd without bit 3
        expect_err(&patched(&h, 72, &8u64.to_be_bytes()), "corrupt"); // bit 3 with deflate
        expect_err(&patched(&h, 32, &3u32.to_be_bytes()), "unsupported"); // crypt_method
        expect_err(&patched(&h, 8, &0x10001u64.to_be_bytes()), "corrupt"); // backing name past cluster 0
        expect_err(&patched(&h, 36, &0u32.to_be_bytes()), "corrupt"); // L1 too small
        expect_err(&patched(&h, 36, &(4u32 << 20 | 1).to_be_bytes()), "limit"); // L1 > 32 MiB
        expect_err(&patched(&h, 24, &(1u64 << 60).to_be_bytes()), "limit"); // size needs huge L1
        expect_err(&patched(&h, 40, &0x30200u64.to_be_bytes()), "corrupt"); // L1 misaligned
        expect_err(&patched(&h, 40, &0u64.to_be_bytes()), "corrupt"); // L1 at the header
        expect_err(&patched(&h, 48, &0x10008u64.to_be_bytes()), "corrupt"); // reftable misaligned
        expect_err(&patched(&h, 48, &(1u64 << 56).to_be_bytes()), "corrupt"); // reftable >= 2^56
        expect_err(&patched(&h, 56, &0u32.to_be_bytes()), "corrupt"); // reftable 0 clusters
        expect_err(&patched(&h, 56, &129u32.to_be_bytes()), "limit"); // reftable > 8 MiB
        expect_err(&patched(&h, 60, &65537u32.to_be_bytes()), "limit"); // nb_snapshots
        expect_err(&patched(&h, 64, &0xd0100u64.to_be_bytes()), "corrupt"); // snapshots misaligned
        expect_err(&patched(&h, 64, &0u64.to_be_bytes()), "corrupt"); // snapshots at 0 with nb 2
    }

    #[test]
    fn zero_size_image_with_empty_l1_is_valid() {
        let h = Header {
            size: 0,
            l1_size: 0,
            l1_table_offset: 0,
            ..v3_header()
        };
        assert_eq!(Header::parse(&h.to_bytes()).unwrap(), h);
    }

    #[test]
    fn header_length_104_has_no_compression_type() {
        let h = Header {
            header_length: 104,
            ..v3_header()
        };
        let mut b = h.to_bytes();
        assert_eq!(b.len(), 104);
        b.push(1); // a byte past header_length is not the compression type
        assert_eq!(Header::parse(&b).unwrap().compression_type, 0);
    }
}
