//! The delta record: a private QCOW2 header extension saying which two states of which
//! filesystem a delta image goes between, so that `apply` can refuse a target that does not
//! hold the FROM state.
//!
//! A delta (`e2image-rs -Q -x FROM..TO`) maps a cluster only where TO's copy set differs from
//! FROM (allocated, with TO's bytes) or where FROM used blocks that TO frees (zero clusters, the
//! discards); everything else is unallocated. The record names the states and pins FROM down:
//!
//! * `from_fingerprint`: SHA-256 of FROM's primary superblock (the 1024 bytes at byte 1024)
//!   followed by its primary group descriptor blocks, in order (what `Filesystem` reads);
//! * `from_digest`: SHA-256 over, for every cluster the delta replaces (allocated or zero), in
//!   guest order, for every filesystem block of that cluster in FROM's copy set, the block
//!   number (u64, big-endian) then the block's bytes in FROM. `apply` recomputes it on the
//!   target (whose own walk gives FROM's copy set when it holds FROM) before writing.
//! * `to_digest` (version 2): SHA-256 over, for every replaced cluster in guest order, its
//!   index (u64, big-endian) then the SHA-256 of its bytes as the delta maps them (zeros for a
//!   zero cluster; the last cluster cut at the disk's end) ([`ClusterDigest`]). `apply` checks
//!   it before writing: a delta damaged in transit or storage is refused.
//!
//! Layout (big-endian; 148 bytes, 180 in version 2, plus the names): u32 version (1 or 2), u32
//! flags ([`DeltaFlags`]: file data, snapshot files, zeros recorded, backing), 16 bytes `s_uuid`, u32 block size, u32 reserved (0), u64
//! `s_blocks_count`, 32 bytes `from_fingerprint`, 32 bytes `to_fingerprint`, 32 bytes
//! `from_digest`, u64 number of replaced clusters, u16 and u16 the lengths of the FROM and TO
//! names, (version 2) 32 bytes `to_digest`, then the names (UTF-8, at most
//! [`MAX_NAME_BYTES`] each).

use crate::bytes::{be16, be32, be64, cut_str, get_array, put_be16, put_be32, put_be64};
use sha2::{Digest, Sha256};

/// Header extension type of the record: "e2id".
pub const EXT_DELTA_RECORD: u32 = 0x6532_6964;
/// The record version written: 2 (1 has no `to_digest`, and is still read).
const RECORD_VERSION: u32 = 2;
/// The delta record's flags: a namespace of their own (the export record's bits differ).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeltaFlags(u32);

impl DeltaFlags {
    /// The delta holds file data (`-d`).
    pub const FILE_DATA: DeltaFlags = DeltaFlags(1);
    /// Snapshot files' blocks are part of the copy sets.
    pub const SNAPSHOT_FILES: DeltaFlags = DeltaFlags(2);
    /// Discards are zero clusters (v3).
    pub const ZEROS_RECORDED: DeltaFlags = DeltaFlags(4);
    /// The delta names FROM's full export as its backing file.
    pub const BACKING: DeltaFlags = DeltaFlags(8);

    /// True if every bit of `f` is set.
    pub fn contains(self, f: DeltaFlags) -> bool {
        self.0 & f.0 == f.0
    }

    /// `self` with the bits of `f` set when `on`.
    pub fn with(self, f: DeltaFlags, on: bool) -> DeltaFlags {
        match on {
            true => DeltaFlags(self.0 | f.0),
            false => self,
        }
    }
}
/// Longest state name kept in the record, in bytes (longer names are cut): keeps the
/// header and its extensions within one 512-byte cluster.
pub const MAX_NAME_BYTES: usize = 64;
/// Bytes before the names in version 1.
const FIXED_BYTES_V1: usize = 148;
/// Bytes before the names in version 2 (`to_digest` added).
const FIXED_BYTES: usize = 180;

/// What a delta goes between.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaRecord {
    /// Flags.
    pub flags: DeltaFlags,
    /// The filesystem's `s_uuid`.
    pub fs_uuid: [u8; 16],
    /// Its block size in bytes.
    pub block_size: u32,
    /// Its `s_blocks_count`.
    pub blocks_count: u64,
    /// SHA-256 of FROM's superblock and primary group descriptor blocks.
    pub from_fingerprint: [u8; 32],
    /// The same for TO.
    pub to_fingerprint: [u8; 32],
    /// SHA-256 of FROM's bytes on the replaced clusters (see the module comment).
    pub from_digest: [u8; 32],
    /// Clusters the delta replaces (allocated or zero).
    pub replaced_clusters: u64,
    /// SHA-256 of the delta's bytes on the replaced clusters ([`ClusterDigest`]); `None` in a
    /// version-1 record.
    pub to_digest: Option<[u8; 32]>,
    /// FROM's name ("current", a snapshot's name, an image path).
    pub from_name: String,
    /// TO's name.
    pub to_name: String,
}

impl DeltaRecord {
    /// True if `flag` is set.
    pub fn has(&self, flag: DeltaFlags) -> bool {
        self.flags.contains(flag)
    }

    /// The extension's data: version 2, or 1 without a `to_digest`.
    pub fn encode(&self) -> Vec<u8> {
        let (from, to) = (
            cut_str(&self.from_name, MAX_NAME_BYTES),
            cut_str(&self.to_name, MAX_NAME_BYTES),
        );
        let (version, fixed) = match self.to_digest {
            Some(_) => (RECORD_VERSION, FIXED_BYTES),
            None => (1, FIXED_BYTES_V1),
        };
        let mut b = vec![0u8; fixed];
        put_be32(&mut b, 0, version);
        put_be32(&mut b, 4, self.flags.0);
        b[8..24].copy_from_slice(&self.fs_uuid);
        put_be32(&mut b, 24, self.block_size);
        put_be64(&mut b, 32, self.blocks_count);
        b[40..72].copy_from_slice(&self.from_fingerprint);
        b[72..104].copy_from_slice(&self.to_fingerprint);
        b[104..136].copy_from_slice(&self.from_digest);
        put_be64(&mut b, 136, self.replaced_clusters);
        put_be16(&mut b, 144, from.len() as u16);
        put_be16(&mut b, 146, to.len() as u16);
        if let Some(d) = &self.to_digest {
            b[148..180].copy_from_slice(d);
        }
        b.extend_from_slice(from.as_bytes());
        b.extend_from_slice(to.as_bytes());
        b
    }

    /// Decodes the extension's data; `None` when it is not a well-formed version-1 or -2
    /// record.
    pub fn decode(data: &[u8]) -> Option<DeltaRecord> {
        let fixed = match be32(data.get(..4)?, 0) {
            1 => FIXED_BYTES_V1,
            RECORD_VERSION => FIXED_BYTES,
            _ => return None,
        };
        let b = data.get(..fixed)?;
        let from_len = usize::from(be16(b, 144));
        let to_len = usize::from(be16(b, 146));
        let names = data.get(fixed..fixed.checked_add(from_len + to_len)?)?;
        let text = |r: &[u8]| String::from_utf8_lossy(r).into_owned();
        Some(DeltaRecord {
            flags: DeltaFlags(be32(b, 4)),
            fs_uuid: get_array(b, 8),
            block_size: be32(b, 24),
            blocks_count: be64(b, 32),
            from_fingerprint: get_array(b, 40),
            to_fingerprint: get_array(b, 72),
            from_digest: get_array(b, 104),
            replaced_clusters: be64(b, 136),
            to_digest: (fixed == FIXED_BYTES).then(|| get_array(b, 148)),
            from_name: text(&names[..from_len]),
            to_name: text(&names[from_len..]),
        })
    }

    /// The record of a delta image, if it has one.
    pub fn of(reader: &qcow::Reader) -> Option<DeltaRecord> {
        reader
            .header_extension(EXT_DELTA_RECORD)
            .and_then(DeltaRecord::decode)
    }
}

/// The record's `to_digest`, fed the replaced clusters in guest order (see the module
/// comment): each cluster's own hash can be computed apart ([`cluster_hash`], in parallel).
#[derive(Clone, Default)]
pub struct ClusterDigest(Sha256);

impl ClusterDigest {
    /// Adds cluster `index` holding `bytes` (cut at the disk's end).
    pub fn add(&mut self, index: u64, bytes: &[u8]) {
        self.add_hashed(index, &cluster_hash(bytes));
    }

    /// Adds cluster `index` whose bytes hash to `hash` ([`cluster_hash`]).
    pub fn add_hashed(&mut self, index: u64, hash: &[u8; 32]) {
        self.0.update(index.to_be_bytes());
        self.0.update(hash);
    }

    /// The digest.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

/// SHA-256 of one cluster's bytes.
pub fn cluster_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// SHA-256 of `fs`'s superblock (the 1024 bytes at byte 1024) followed by its group
/// descriptor blocks, in order: what pins a filesystem state down (mount counts and write
/// times included).
///
/// # Errors
/// Read errors.
pub fn fingerprint<V: ext::BlockView>(fs: &ext::Filesystem<V>) -> anyhow::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut sb = vec![0u8; ext::SUPERBLOCK_SIZE];
    fs.view()
        .read_at(ext::SUPERBLOCK_OFFSET, &mut sb)
        .map_err(|e| anyhow::anyhow!("cannot read the superblock: {e}"))?;
    h.update(&sb);
    let mut block = vec![0u8; fs.sb.block_size as usize];
    for b in fs.descriptor_blocks() {
        fs.read_blocks(b, &mut block)?;
        h.update(&block);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_cut_names() {
        let r = DeltaRecord {
            flags: DeltaFlags::FILE_DATA.with(DeltaFlags::ZEROS_RECORDED, true),
            fs_uuid: [7; 16],
            block_size: 4096,
            blocks_count: 1 << 40,
            from_fingerprint: [1; 32],
            to_fingerprint: [2; 32],
            from_digest: [3; 32],
            replaced_clusters: 12345,
            to_digest: Some([4; 32]),
            from_name: "monday".into(),
            to_name: "current".into(),
        };
        assert_eq!(DeltaRecord::decode(&r.encode()), Some(r.clone()));
        let v1 = DeltaRecord {
            to_digest: None,
            ..r.clone()
        };
        assert_eq!(be32(&v1.encode(), 0), 1);
        assert_eq!(DeltaRecord::decode(&v1.encode()), Some(v1));
        let long = DeltaRecord {
            from_name: "é".repeat(100),
            ..r
        };
        let back = DeltaRecord::decode(&long.encode()).unwrap();
        assert!(back.from_name.len() <= MAX_NAME_BYTES);
        assert!(DeltaRecord::decode(&[0u8; 10]).is_none());
        let mut bad = long.encode();
        bad[3] = 9;
        assert!(DeltaRecord::decode(&bad).is_none());
    }
}
