//! The editor's upkeep of an image's cluster checksum table (`format/checksums.rs`,
//! docs/verify.md).
//!
//! Design: at open, a table is *current* when the image is v3, auto-clear bit 40 is set, the
//! extension lies in the header sector (where the commit rewrites it), and the table matches
//! its own checksum. Its clusters (past the refcounted ones, refcount 0) are then reserved:
//! nothing in this edit is allocated over them, and open does not truncate them. The writer
//! keeps the CRC-32C of every cluster it writes on top of the old entries. The commit writes a
//! new table past the committed image and clear of the old table (which stays intact until
//! the header points elsewhere), at the lowest such place,
//! covering every cluster with a refcount; clusters allocated by this edit and not written
//! whole are read back (compressed payloads, L1 holes). The header write then carries the new
//! extension and the bit: the table is committed with everything else. An image without a
//! current table (QEMU's, or one QEMU opened read-write) gets none, and the bit stays clear.

use super::Editor;
use crate::error::Error;
use crate::format::checksums::{
    decode_table, extension_data_at, ChecksumExtension, AUTOCLEAR_CLUSTER_CHECKSUMS,
    EXT_CLUSTER_CHECKSUMS,
};
use crate::geometry::Version;
use crate::reader::Reader;

/// A current checksum table found at open.
#[derive(Debug)]
pub(super) struct LiveTable {
    /// Byte position of the extension's data in the header sector.
    pub(super) data_at: usize,
    /// The table's first cluster.
    pub(super) start: u64,
    /// The cluster after the table's last one.
    pub(super) end: u64,
    /// Its entries.
    pub(super) sums: Vec<u32>,
}

/// The current checksum table of `r`, whose first sector is `sector`, if it has one.
///
/// Errors: [`Error::Io`] reading the table. A table that is stale, misplaced or does not
/// match its own checksum is not current: `None`.
pub(super) fn live_table(r: &Reader, sector: &[u8]) -> Result<Option<LiveTable>, Error> {
    let h = r.header();
    if h.version != Version::V3 || h.autoclear_features & AUTOCLEAR_CLUSTER_CHECKSUMS == 0 {
        return Ok(None);
    }
    let Some(data) = r.header_extension(EXT_CLUSTER_CHECKSUMS) else {
        return Ok(None);
    };
    let Ok(ext) = ChecksumExtension::parse(data, h.cluster_bits, r.file_len()) else {
        return Ok(None);
    };
    let Some(data_at) = extension_data_at(sector, h.header_length as usize, EXT_CLUSTER_CHECKSUMS)
    else {
        return Ok(None);
    };
    let bytes = r.read_bytes(
        ext.table_offset,
        ext.table_bytes(),
        "cluster checksum table",
    )?;
    let Ok(sums) = decode_table(&bytes, &ext) else {
        return Ok(None);
    };
    let start = ext.table_offset >> h.cluster_bits;
    let end = start + ext.table_clusters(h.cluster_bits);
    Ok(Some(LiveTable {
        data_at,
        start,
        end,
        sums,
    }))
}

impl Editor {
    /// Commit step (4b): the new checksum table past every cluster of the edit, if the image
    /// keeps one. Returns the extension for the header and the cluster after the table.
    ///
    /// Errors: [`Error::Io`].
    pub(super) fn write_checksums(&mut self) -> Result<Option<(ChecksumExtension, u64)>, Error> {
        let Some(live) = &self.checksums else {
            return Ok(None);
        };
        let (old_len, old_start, old_end) = (live.sums.len() as u64, live.start, live.end);
        let covered = self.writer.refcounts().used_end();
        // Not over anything the committed image uses (below its end) nor over the old table:
        // the lowest such place, so that the table alternates between two places at most
        // instead of moving further out with every edit.
        let lo = covered.max(self.writer.refcounts().committed_end());
        let need = (covered * 4).div_ceil(self.writer.cluster_size()).max(1);
        let at = if lo + need <= old_start {
            lo
        } else {
            lo.max(old_end)
        };
        let needs = self.clusters_to_read(old_len);
        let (ext, clusters) = self
            .writer
            .write_checksum_table(covered, at, |c| needs.binary_search(&c).is_ok())?;
        Ok(Some((ext, at + clusters)))
    }

    /// Clusters with a refcount whose old entry does not hold: allocated by this edit (the
    /// writer read back those it did not write whole) or past the old table's entries.
    fn clusters_to_read(&self, old_len: u64) -> Vec<u64> {
        let rc = self.writer.refcounts();
        (1..rc.used_end())
            .filter(|&c| rc.get(c) > 0 && (rc.committed(c) == 0 || c >= old_len))
            .collect()
    }

    /// Patches the extension's data and the auto-clear bit into the header sector `sector`.
    pub(super) fn patch_checksums(&self, sector: &mut [u8], ext: &ChecksumExtension) {
        use crate::bytes::BigEndian;
        let Some(live) = &self.checksums else { return };
        sector[live.data_at..live.data_at + ext.to_bytes().len()].copy_from_slice(&ext.to_bytes());
        // autoclear_features: bytes 88..96 of a v3 header (spec "Header").
        let autoclear = u64::get(sector, 88) | AUTOCLEAR_CLUSTER_CHECKSUMS;
        autoclear.put(sector, 88);
    }
}
