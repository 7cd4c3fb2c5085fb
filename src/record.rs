//! The export record: a private QCOW2 header extension in which e2image-rs says what its
//! export copied, so that a later rollback knows exactly which blocks each state holds.
//!
//! Design: the image alone cannot say whether an unallocated cluster is a block the exporter
//! left out or a copied block that was all zeros (v2 has no zero flag), nor whether file data
//! or snapshot files were copied. The record answers both. It is a header extension of a type
//! QCOW2 does not define; QEMU ignores such extensions and keeps them when it rewrites the
//! header (notes §1.3), and `qemu-img check` stays clean. Images without it (from e2image,
//! from qemu-img convert, from older e2image-rs) are read as before, by inference.
//!
//! Layout (8 bytes, big-endian): u32 record version (1), u32 flags (the export record's own
//! namespace, [`export_flag`]: file data, snapshot files, zeros recorded, replayed; unknown
//! bits are ignored).

use crate::bytes::{be32, put_be32};

/// Header extension type of the record: "e2ir".
pub const EXT_EXPORT_RECORD: u32 = 0x6532_6972;
/// The only record version so far.
const RECORD_VERSION: u32 = 1;
/// The export record's flag bits (a namespace of their own: the delta record's differ).
pub mod export_flag {
    /// File data blocks were copied (`-d`).
    pub const FILE_DATA: u32 = 1;
    /// Blocks of snapshot files (next3) were copied (no `--no-snapshots`).
    pub const SNAPSHOT_FILES: u32 = 2;
    /// Copied all-zero blocks are mapped as QCOW2 zero clusters (v3); without it they were
    /// left unallocated, so every block of a state's walk is held, as zeros where unallocated.
    pub const ZEROS_RECORDED: u32 = 4;
    /// The states hold the replayed filesystem (`--replay`): the journal applied in memory,
    /// needs_recovery cleared.
    pub const REPLAYED: u32 = 8;
}

use export_flag::{FILE_DATA, REPLAYED, SNAPSHOT_FILES, ZEROS_RECORDED};

/// What an e2image-rs export copied into every state of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportRecord {
    /// File data blocks were copied.
    pub file_data: bool,
    /// Snapshot files' blocks were copied.
    pub snapshot_files: bool,
    /// All-zero copied blocks are zero clusters rather than unallocated.
    pub zeros_recorded: bool,
    /// The journal was replayed into the states (`--replay`).
    pub replayed: bool,
}

impl ExportRecord {
    /// The 8 bytes of the extension's data.
    pub fn encode(&self) -> [u8; 8] {
        let mut flags = 0;
        for (set, bit) in [
            (self.file_data, FILE_DATA),
            (self.snapshot_files, SNAPSHOT_FILES),
            (self.zeros_recorded, ZEROS_RECORDED),
            (self.replayed, REPLAYED),
        ] {
            if set {
                flags |= bit;
            }
        }
        let mut b = [0u8; 8];
        put_be32(&mut b, 0, RECORD_VERSION);
        put_be32(&mut b, 4, flags);
        b
    }

    /// Decodes the extension's data; `None` when it is not a version-1 record (shorter than
    /// 8 bytes or another version), which the caller treats as no record at all.
    pub fn decode(data: &[u8]) -> Option<ExportRecord> {
        let data = data.get(..8)?;
        let (version, flags) = (be32(data, 0), be32(data, 4));
        (version == RECORD_VERSION).then_some(ExportRecord {
            file_data: flags & FILE_DATA != 0,
            snapshot_files: flags & SNAPSHOT_FILES != 0,
            zeros_recorded: flags & ZEROS_RECORDED != 0,
            replayed: flags & REPLAYED != 0,
        })
    }

    /// One line for people: "file data yes, snapshot files no, all-zero blocks as zero
    /// clusters, journal as on disk".
    pub fn summary(&self) -> String {
        let yes_no = |b: bool| if b { "yes" } else { "no" };
        format!(
            "file data {}, snapshot files {}, all-zero blocks {}, journal {}",
            yes_no(self.file_data),
            yes_no(self.snapshot_files),
            if self.zeros_recorded {
                "as zero clusters"
            } else {
                "unallocated"
            },
            if self.replayed {
                "replayed"
            } else {
                "as on disk"
            }
        )
    }

    /// The record of an image, if it has one.
    pub fn of(reader: &qcow::Reader) -> Option<ExportRecord> {
        reader
            .header_extension(EXT_EXPORT_RECORD)
            .and_then(ExportRecord::decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_other_versions() {
        for bits in 0..16u32 {
            let r = ExportRecord {
                file_data: bits & 1 != 0,
                snapshot_files: bits & 2 != 0,
                zeros_recorded: bits & 4 != 0,
                replayed: bits & 8 != 0,
            };
            assert_eq!(ExportRecord::decode(&r.encode()), Some(r));
        }
        assert_eq!(ExportRecord::decode(&[0, 0, 0, 2, 0, 0, 0, 7]), None);
        assert_eq!(ExportRecord::decode(&[0, 0, 0, 1]), None);
        let with_unknown = ExportRecord::decode(&[0, 0, 0, 1, 0xff, 0, 0, 1]).unwrap();
        assert!(with_unknown.file_data && !with_unknown.zeros_recorded);
    }
}
