//! The cluster checksum table of a written image (`format/checksums.rs`, docs/verify.md): asked
//! for with [`Writer::set_cluster_checksums`], written by [`Writer::finish`] past the
//! refcounted clusters, and by the editor's commit for an image that has a current table.

use super::Writer;
use crate::error::Error;
use crate::format::checksums::{encode_table, ChecksumExtension, ALGORITHM_CRC32C};
use crate::geometry::Version;

impl Writer {
    /// Gives the image a cluster checksum table (a CRC-32C per host cluster, in a private
    /// header extension, with auto-clear bit 40 set; docs/verify.md). Must be called before
    /// the first cluster is written. Costs 4 bytes of memory per host cluster and one CRC-32C
    /// pass over what is written.
    ///
    /// Errors: [`Error::InvalidArgument`] for a v2 image (no auto-clear bits), the writer of an
    /// editor (which keeps an image's table current by itself), or after clusters were written.
    pub fn set_cluster_checksums(&mut self) -> Result<(), Error> {
        if self.version != Version::V3 || self.editing || self.refcounts.allocated() > 1 {
            return Err(Error::InvalidArgument(
                "cluster checksums need a new v3 image, asked for before any cluster is written"
                    .into(),
            ));
        }
        self.out.keep_sums(self.cluster_bits, Vec::new());
        self.checksums = true;
        Ok(())
    }

    /// Starts keeping the checksums of what this writer (over an existing image) writes, on
    /// top of the image's current table `base`.
    pub(crate) fn keep_checksums(&mut self, base: Vec<u32>) {
        self.out.keep_sums(self.cluster_bits, base);
        self.checksums = true;
    }

    /// Writes the checksum table of host clusters `0..covered` at cluster `table_at` (not
    /// allocated: the table's clusters keep refcount 0). Clusters `needs_read` names that this
    /// writer did not write whole are read back (compressed payloads, and holes). Returns the
    /// extension describing the table, and its length in clusters.
    ///
    /// Errors: [`Error::Io`].
    pub(crate) fn write_checksum_table(
        &mut self,
        covered: u64,
        table_at: u64,
        needs_read: impl FnMut(u64) -> bool,
    ) -> Result<(ChecksumExtension, u64), Error> {
        self.out.flush()?;
        let Some(mut sums) = self.out.take_sums() else {
            return Err(Error::InvalidArgument("no cluster checksums kept".into()));
        };
        let out = &mut self.out;
        let table = sums.fill(covered, needs_read, |offset, buf| {
            out.read_at_padded(buf, offset)
        })?;
        let (bytes, table_crc) = encode_table(&table, self.cluster_bits);
        let table_offset = table_at << self.cluster_bits;
        self.out.append(table_offset, &bytes)?;
        self.out.flush()?;
        let ext = ChecksumExtension {
            table_offset,
            covered_clusters: covered,
            algorithm: ALGORITHM_CRC32C,
            table_crc,
            flags: 0,
        };
        Ok((ext, (bytes.len() as u64) >> self.cluster_bits))
    }
}
