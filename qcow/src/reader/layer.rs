//! One layer of an image (the active L1 table or a snapshot's): guest cluster mappings, guest
//! data, and the host clusters the layer references (spec "Cluster mapping").
//!
//! Design: a [`LayerReader`] holds its L1 table (borrowed for the active layer, read when
//! opened for a snapshot) and reads each L2 entry or table when asked, through the [`Image`]'s
//! bounded positional reads; nothing is cached, so it can serve many threads.

use std::borrow::Cow;

use super::image::Image;
use crate::bytes::{decode_be, BigEndian};
use crate::compression::decompress_cluster;
use crate::error::Error;
use crate::format::table::{compressed_len, l1_entry_l2_offset, l1_entry_table, L2Entry};
use crate::geometry::{guest_clusters, l2_entries};
use crate::types::GuestCluster;

/// Which L1 table to read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The active L1 table (the image's current content).
    Active,
    /// The snapshot at this index of [`Reader::snapshots`](crate::Reader::snapshots).
    Snapshot(usize),
}

/// How one guest cluster is stored (spec "Cluster mapping").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterMapping {
    /// Not allocated: reads as zero (no backing file).
    Unallocated,
    /// Zero flag set (with or without a preallocated host cluster): reads as zero. Unlike
    /// [`ClusterMapping::Unallocated`], the image explicitly holds zeros here (e2image-rs
    /// records copied all-zero clusters this way in v3 images).
    Zero,
    /// Uncompressed data in the host cluster at byte offset `host_offset`.
    Normal {
        /// Host byte offset of the cluster (cluster aligned).
        host_offset: u64,
    },
    /// Compressed data (deflate or zstd, by the image's `compression_type`) starting at host
    /// byte `host_offset`, spanning the rest of its 512-byte sector plus `additional_sectors`
    /// sectors.
    Compressed {
        /// Host byte offset of the first compressed byte.
        host_offset: u64,
        /// Number of 512-byte sectors after the one holding the first byte.
        additional_sectors: u64,
    },
}

impl From<L2Entry> for ClusterMapping {
    fn from(e: L2Entry) -> ClusterMapping {
        match e {
            L2Entry::Unallocated => ClusterMapping::Unallocated,
            L2Entry::ZeroPlain | L2Entry::ZeroAlloc { .. } => ClusterMapping::Zero,
            L2Entry::Normal { host } => ClusterMapping::Normal { host_offset: host },
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => ClusterMapping::Compressed {
                host_offset: host,
                additional_sectors,
            },
        }
    }
}

/// Reads one layer of a [`Reader`](crate::Reader) (spec "Cluster mapping"): guest cluster
/// mappings and guest data, through the layer's L1 table and its L2 tables.
#[derive(Debug)]
pub struct LayerReader<'a> {
    image: &'a Image,
    layer: Layer,
    l1: Cow<'a, [u64]>,
    l1_table_offset: u64,
}

impl<'a> LayerReader<'a> {
    /// The reader of `layer`, whose L1 table `l1` was read at host byte `l1_table_offset`.
    pub(super) fn new(
        image: &'a Image,
        layer: Layer,
        l1: Cow<'a, [u64]>,
        l1_table_offset: u64,
    ) -> LayerReader<'a> {
        LayerReader {
            image,
            layer,
            l1,
            l1_table_offset,
        }
    }
}

impl LayerReader<'_> {
    /// The layer this reader reads.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    /// True if this layer and `other` map every guest cluster through the same L2 tables (their
    /// L1 entries point at the same host clusters; flags and missing tail entries aside), so
    /// they read the same guest data without reading any L2 table.
    pub fn same_tables(&self, other: &LayerReader<'_>) -> bool {
        let n = self.l1.len().max(other.l1.len());
        let at = |l1: &[u64], i: usize| l1.get(i).map_or(0, |&e| l1_entry_table(e));
        (0..n).all(|i| at(&self.l1, i) == at(&other.l1, i))
    }

    fn cluster_bits(&self) -> u32 {
        self.image.header.cluster_bits
    }

    fn guest_clusters(&self) -> u64 {
        guest_clusters(self.image.header.size, self.cluster_bits())
    }

    /// L2 table offset of L1 entry `l1_index` (0 = unallocated), validated.
    fn l2_offset(&self, l1_index: usize) -> Result<u64, Error> {
        let Some(&entry) = self.l1.get(l1_index) else {
            return Ok(0); // a snapshot L1 may be shorter than the active one
        };
        let at = self.l1_table_offset + l1_index as u64 * 8;
        let offset = l1_entry_l2_offset(entry, at)?;
        if !offset.is_multiple_of(self.image.cluster_size()) {
            return Err(Error::corrupt(
                format!("L1 entry {entry:#018x}: L2 table is not cluster aligned"),
                at,
            ));
        }
        if offset != 0 && offset >= self.image.file_len {
            return Err(Error::corrupt(
                format!("L1 entry {entry:#018x}: L2 table is past the end of the file"),
                at,
            ));
        }
        Ok(offset)
    }

    fn decode(&self, raw: u64, at: u64) -> Result<L2Entry, Error> {
        L2Entry::decode(raw, self.cluster_bits(), self.image.header.version, at)
    }

    /// The decoded L2 entry of guest cluster `g` (validated against the disk size).
    pub(crate) fn entry(&self, g: GuestCluster) -> Result<L2Entry, Error> {
        if g.0 >= self.guest_clusters() {
            return Err(Error::InvalidArgument(format!(
                "{g} past the disk's {} clusters",
                self.guest_clusters()
            )));
        }
        // Below the guest cluster count, the L1 index is below l1_size (at most 4 Mi).
        let (l1_index, i) = g.table_indices(self.cluster_bits());
        let l2 = self.l2_offset(l1_index as usize)?;
        if l2 == 0 {
            return Ok(L2Entry::Unallocated);
        }
        let at = l2 + i as u64 * 8;
        let mut raw = [0u8; 8];
        self.image.read_host(&mut raw, at, "reading an L2 entry")?;
        self.decode(u64::get(&raw, 0), at)
    }

    /// How `guest_cluster` is stored.
    ///
    /// Errors: [`Error::InvalidArgument`] if the cluster is past the end of the disk;
    /// [`Error::Corrupt`] for an invalid L1 or L2 entry; [`Error::Io`].
    pub fn mapping(&self, guest_cluster: u64) -> Result<ClusterMapping, Error> {
        Ok(self.entry(GuestCluster(guest_cluster))?.into())
    }

    /// Calls `f(l1_index, l2_offset, entries)` for every allocated L2 table, in L1 order.
    pub(crate) fn for_each_l2_table(
        &self,
        mut f: impl FnMut(usize, u64, &[u64]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut bytes = vec![0u8; self.image.cluster_size() as usize];
        for i in 0..self.l1.len() {
            let l2 = self.l2_offset(i)?;
            if l2 == 0 {
                continue;
            }
            self.image
                .read_host(&mut bytes, l2, "reading an L2 table")?;
            f(i, l2, &decode_be(&bytes))?;
        }
        Ok(())
    }

    /// Calls `f(guest_cluster, mapping)` for every guest cluster whose mapping is not
    /// [`ClusterMapping::Unallocated`], in increasing order; zero clusters are reported (as
    /// [`ClusterMapping::Zero`]), so callers wanting data only filter them. Unallocated L1
    /// entries are skipped without reading anything, so this is fast on huge sparse images.
    /// Stops at the first error, from `f` or from a corrupt entry.
    pub fn for_each_allocated(
        &self,
        mut f: impl FnMut(u64, ClusterMapping) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let epl = l2_entries(self.cluster_bits());
        let total = self.guest_clusters();
        self.for_each_l2_table(|i, l2, entries| {
            for (j, &raw) in entries.iter().enumerate() {
                let g = i as u64 * epl + j as u64;
                if g >= total {
                    break;
                }
                let entry = self.decode(raw, l2 + j as u64 * 8)?;
                if entry != L2Entry::Unallocated {
                    f(g, entry.into())?;
                }
            }
            Ok(())
        })
    }

    /// Reads guest cluster `guest_cluster` into `buf` (exactly one cluster long): decompresses
    /// compressed clusters, zero-fills zero and unallocated ones.
    ///
    /// Errors: [`Error::InvalidArgument`] for a wrong buffer length or a cluster past the end
    /// of the disk; [`Error::Corrupt`] for invalid entries or undecodable compressed data;
    /// [`Error::Io`].
    pub fn read_cluster(&self, guest_cluster: u64, buf: &mut [u8]) -> Result<(), Error> {
        if buf.len() as u64 != self.image.cluster_size() {
            return Err(Error::InvalidArgument(format!(
                "buffer of {} bytes, cluster size {}",
                buf.len(),
                self.image.cluster_size()
            )));
        }
        match self.entry(GuestCluster(guest_cluster))? {
            L2Entry::Unallocated | L2Entry::ZeroPlain | L2Entry::ZeroAlloc { .. } => buf.fill(0),
            L2Entry::Normal { host } => {
                self.image.read_host(buf, host, "reading a data cluster")?
            }
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => self.decompress(host, additional_sectors, buf)?,
        }
        Ok(())
    }

    /// Decodes the payload at `host` into `out` (one cluster), by the image's compression
    /// type. Like QEMU, exactly one cluster must come out; trailing input bytes are ignored.
    fn decompress(&self, host: u64, additional_sectors: u64, out: &mut [u8]) -> Result<(), Error> {
        let len =
            compressed_len(host, additional_sectors).min(self.image.file_len.saturating_sub(host));
        let mut input = vec![0u8; len as usize];
        self.image
            .read_host(&mut input, host, "reading a compressed cluster")?;
        self.inflate(host, &input, out)
    }

    /// Decompresses `input`, the compressed payload found at host byte `host` (as read: its
    /// sector-rounded bytes), into `out` (one cluster), with this image's compression type
    /// (deflate or zstd).
    ///
    /// Errors: [`Error::Corrupt`] for data that does not decompress to exactly one cluster.
    pub(crate) fn inflate(&self, host: u64, input: &[u8], out: &mut [u8]) -> Result<(), Error> {
        decompress_cluster(self.image.compression, input, out, host)
    }

    /// Reads `buf.len()` bytes of the guest disk at guest byte `offset`.
    ///
    /// Errors: [`Error::InvalidArgument`] if the range extends past the virtual size; those of
    /// [`LayerReader::read_cluster`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let size = self.image.header.size;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at guest offset {offset} past the virtual size {size}",
                buf.len()
            )));
        }
        let c = self.image.cluster_size();
        let mut scratch = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % c;
            let n = ((c - within) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match self.entry(GuestCluster::of_offset(pos, self.cluster_bits()))? {
                L2Entry::Unallocated | L2Entry::ZeroPlain | L2Entry::ZeroAlloc { .. } => {
                    part.fill(0)
                }
                L2Entry::Normal { host } => {
                    self.image
                        .read_host(part, host + within, "reading a data cluster")?
                }
                L2Entry::Compressed {
                    host,
                    additional_sectors,
                } => {
                    scratch.resize(c as usize, 0);
                    self.decompress(host, additional_sectors, &mut scratch)?;
                    part.copy_from_slice(&scratch[within as usize..within as usize + n]);
                }
            }
            done += n;
        }
        Ok(())
    }

    /// The host clusters of this layer's own L1 table, as (first cluster, count).
    pub(crate) fn l1_host_clusters(&self) -> (u64, u64) {
        let cb = self.cluster_bits();
        let count = (self.l1.len() as u64 * 8).div_ceil(1 << cb);
        (self.l1_table_offset >> cb, count)
    }

    /// Calls `f(l2_offset)` for every allocated L1 entry, in L1 order, after validating it.
    ///
    /// Errors: [`Error::Corrupt`] for an invalid L1 entry.
    pub(crate) fn for_each_l2_offset(&self, mut f: impl FnMut(u64)) -> Result<(), Error> {
        for i in 0..self.l1.len() {
            match self.l2_offset(i)? {
                0 => {}
                l2 => f(l2),
            }
        }
        Ok(())
    }
}
