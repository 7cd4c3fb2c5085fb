//! The QCOW2 reader: any layer (active or internal snapshot) of v2/v3 images made by this crate
//! or by QEMU, including deflate-compressed and zero clusters.
//!
//! Design: [`Reader::open`] validates the header, refuses features it cannot honour (encryption,
//! backing file, external data file, extended L2, zstd), checks that the tables it uses lie
//! inside the file, reads the snapshot table and the active L1 table. [`Reader::layer`] gives a
//! [`LayerReader`] over one L1 table (a snapshot's is validated and read only then). All reads
//! are positional (`read_exact_at`) and nothing is cached behind a lock, so a `Reader` and its
//! `LayerReader`s are `Send + Sync` and may serve many threads. Every on-disk value is checked
//! before use and errors name the offset; corrupt input never panics.

use std::borrow::Cow;
use std::fs::File;

use flate2::{Decompress, FlushDecompress};

use crate::extension::{self, HeaderExtension};
use crate::header::{
    Header, COMPRESSION_DEFLATE, INCOMPAT_EXTENDED_L2, INCOMPAT_EXTERNAL_DATA, MAX_L1_ENTRIES,
};
use crate::io::read_exact_at;
use crate::snapshot::{read_snapshot_table, SnapshotInfo};
use crate::table::{
    compressed_len, decode_be_u64s, guest_clusters, l1_entry_l2_offset, l2_entries, L2Entry,
};
use crate::Error;

/// Which L1 table to read through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layer {
    /// The active L1 table (the image's current content).
    Active,
    /// The snapshot at this index of [`Reader::snapshots`].
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
    /// Deflate-compressed data starting at host byte `host_offset`, spanning the rest of its
    /// 512-byte sector plus `additional_sectors` sectors.
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

/// An open QCOW2 image; see the module documentation.
#[derive(Debug)]
pub struct Reader {
    file: File,
    file_len: u64,
    header: Header,
    snapshots: Vec<SnapshotInfo>,
    active_l1: Vec<u64>,
    extensions: Vec<HeaderExtension>,
}

/// Refuses valid images whose content this reader cannot produce faithfully.
fn check_supported(h: &Header) -> Result<(), Error> {
    let refuse = |what: &str| Err(Error::Unsupported(what.to_string()));
    if h.crypt_method != 0 {
        return refuse(&format!("encryption (crypt_method {})", h.crypt_method));
    }
    if h.backing_file_offset != 0 {
        return refuse("backing file");
    }
    if h.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0 {
        return refuse("external data file (incompatible bit 2)");
    }
    if h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0 {
        return refuse("extended L2 entries (incompatible bit 4)");
    }
    if h.compression_type != COMPRESSION_DEFLATE {
        return refuse(&format!("compression_type {} (zstd)", h.compression_type));
    }
    Ok(())
}

/// Reads the header extensions: from the end of the header to the end of cluster 0 (the
/// reader refuses backing files, so no backing file name ends the area earlier).
fn read_extensions(file: &File, h: &Header, file_len: u64) -> Result<Vec<HeaderExtension>, Error> {
    let start = u64::from(match h.version {
        crate::Version::V2 => crate::header::V2_HEADER_LENGTH,
        crate::Version::V3 => h.header_length,
    });
    let end = h.cluster_size().min(file_len);
    if end <= start {
        return Ok(Vec::new());
    }
    // cluster_size is at most 2 MiB (MAX_CLUSTER_BITS), which bounds this buffer.
    let mut area = vec![0u8; (end - start) as usize];
    read_exact_at(file, &mut area, start, "reading the header extensions")?;
    extension::parse(&area, start)
}

/// Checks that `[offset, offset + len)` lies inside a file of `file_len` bytes.
fn check_in_file(what: &str, offset: u64, len: u64, file_len: u64) -> Result<(), Error> {
    if offset.checked_add(len).is_none_or(|end| end > file_len) {
        return Err(Error::corrupt(
            format!("{what} of {len} bytes extends past the end of the file ({file_len} bytes)"),
            offset,
        ));
    }
    Ok(())
}

impl Reader {
    /// Opens an image from `file` (opened read-only by the caller).
    ///
    /// Errors: those of [`Header::parse`]; [`Error::Unsupported`] for encryption, a backing
    /// file, an external data file, extended L2 entries or zstd compression;
    /// [`Error::Corrupt`] if the active L1 table, the refcount table or the snapshot table is
    /// outside the file; [`Error::Limit`] for an oversized snapshot table; [`Error::Io`].
    pub fn open(file: File) -> Result<Reader, Error> {
        let file_len = file
            .metadata()
            .map_err(Error::io("reading the file size", 0))?
            .len();
        let mut buf = vec![0u8; file_len.min(crate::header::V3_HEADER_LENGTH.into()) as usize];
        read_exact_at(&file, &mut buf, 0, "reading the header")?;
        let header = Header::parse(&buf)?;
        check_supported(&header)?;
        let c = header.cluster_size();
        let reftable_len = u64::from(header.refcount_table_clusters) * c;
        check_in_file(
            "refcount table",
            header.refcount_table_offset,
            reftable_len,
            file_len,
        )?;
        let snapshots = read_snapshot_table(&file, &header, file_len)?;
        let active_l1 = read_l1(&file, header.l1_table_offset, header.l1_size, file_len)?;
        let extensions = read_extensions(&file, &header, file_len)?;
        Ok(Reader {
            file,
            file_len,
            header,
            snapshots,
            active_l1,
            extensions,
        })
    }

    /// The header extensions, in file order (spec "Header extensions").
    pub fn header_extensions(&self) -> &[HeaderExtension] {
        &self.extensions
    }

    /// The data of the first header extension of type `ext_type`, if any.
    pub fn header_extension(&self, ext_type: u32) -> Option<&[u8]> {
        self.extensions
            .iter()
            .find(|e| e.ext_type == ext_type)
            .map(|e| e.data.as_slice())
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// Size of the image file in bytes (when opened).
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The snapshot table, in on-disk order.
    pub fn snapshots(&self) -> &[SnapshotInfo] {
        &self.snapshots
    }

    /// Index of the snapshot whose id is `id_or_name`, else of the first whose name is, like
    /// QEMU's `-l` lookup.
    pub fn find_snapshot(&self, id_or_name: &str) -> Option<usize> {
        let by_id = self.snapshots.iter().position(|s| s.id == id_or_name);
        by_id.or_else(|| self.snapshots.iter().position(|s| s.name == id_or_name))
    }

    /// A reader for one layer. A snapshot's L1 table is validated (cluster aligned, at most
    /// 32 MiB, inside the file) and read here.
    ///
    /// Errors: [`Error::InvalidArgument`] for a snapshot index out of range; [`Error::Corrupt`]
    /// or [`Error::Limit`] for an invalid snapshot L1 table; [`Error::Io`].
    pub fn layer(&self, layer: Layer) -> Result<LayerReader<'_>, Error> {
        let (l1, l1_table_offset) = match layer {
            Layer::Active => (
                Cow::Borrowed(self.active_l1.as_slice()),
                self.header.l1_table_offset,
            ),
            Layer::Snapshot(i) => {
                let s = self.snapshots.get(i).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "snapshot index {i} out of range ({} snapshots)",
                        self.snapshots.len()
                    ))
                })?;
                if !s.l1_table_offset.is_multiple_of(self.cluster_size())
                    || (s.l1_size > 0 && s.l1_table_offset == 0)
                {
                    return Err(Error::corrupt(
                        format!("snapshot {i} ({}) L1 table is not cluster aligned", s.name),
                        s.l1_table_offset,
                    ));
                }
                (
                    Cow::Owned(read_l1(
                        &self.file,
                        s.l1_table_offset,
                        s.l1_size,
                        self.file_len,
                    )?),
                    s.l1_table_offset,
                )
            }
        };
        Ok(LayerReader {
            reader: self,
            layer,
            l1,
            l1_table_offset,
        })
    }

    /// Reads `buf.len()` bytes at host byte `offset`; bytes past the end of the file read as
    /// zero (QEMU tolerates a short last cluster), but `offset` itself must be inside the file.
    fn read_host(&self, buf: &mut [u8], offset: u64, op: &'static str) -> Result<(), Error> {
        if offset >= self.file_len {
            return Err(Error::corrupt(
                format!(
                    "{op}: host offset is past the end of the file ({} bytes)",
                    self.file_len
                ),
                offset,
            ));
        }
        let available = (self.file_len - offset).min(buf.len() as u64) as usize;
        read_exact_at(&self.file, &mut buf[..available], offset, op)?;
        buf[available..].fill(0);
        Ok(())
    }
}

/// Inflates one raw deflate stream (any window size up to 32 KiB) into `out`, which must come
/// out exactly full, like QEMU; input after the end of the stream is ignored. Returns the
/// reason on failure.
fn inflate_cluster(input: &[u8], out: &mut [u8]) -> Result<(), String> {
    let mut inflater = Decompress::new(false); // raw deflate, window bits 15
    if let Err(e) = inflater.decompress(input, out, FlushDecompress::Finish) {
        return Err(format!("compressed cluster does not inflate: {e}"));
    }
    if inflater.total_out() != out.len() as u64 {
        let n = inflater.total_out();
        return Err(format!(
            "compressed cluster inflates to {n} bytes, not one cluster"
        ));
    }
    Ok(())
}

/// Reads an L1 table of `l1_size` entries at `offset` after checking its size and bounds.
fn read_l1(file: &File, offset: u64, l1_size: u32, file_len: u64) -> Result<Vec<u64>, Error> {
    if u64::from(l1_size) > MAX_L1_ENTRIES {
        return Err(Error::Limit(format!(
            "L1 table at {offset:#x} has {l1_size} entries (> {MAX_L1_ENTRIES})"
        )));
    }
    let len = u64::from(l1_size) * 8;
    check_in_file("L1 table", offset, len, file_len)?;
    let mut bytes = vec![0u8; len as usize];
    read_exact_at(file, &mut bytes, offset, "reading an L1 table")?;
    Ok(decode_be_u64s(&bytes))
}

/// Reads one layer of a [`Reader`]: guest cluster mappings and guest data.
#[derive(Debug)]
pub struct LayerReader<'a> {
    reader: &'a Reader,
    layer: Layer,
    l1: Cow<'a, [u64]>,
    l1_table_offset: u64,
}

impl LayerReader<'_> {
    /// The layer this reader reads.
    pub fn layer(&self) -> Layer {
        self.layer
    }

    fn cluster_bits(&self) -> u32 {
        self.reader.header.cluster_bits
    }

    fn guest_clusters(&self) -> u64 {
        guest_clusters(self.reader.header.size, self.cluster_bits())
    }

    /// L2 table offset of L1 entry `l1_index` (0 = unallocated), validated.
    fn l2_offset(&self, l1_index: usize) -> Result<u64, Error> {
        let Some(&entry) = self.l1.get(l1_index) else {
            return Ok(0); // a snapshot L1 may be shorter than the active one
        };
        let at = self.l1_table_offset + l1_index as u64 * 8;
        let offset = l1_entry_l2_offset(entry, at)?;
        if !offset.is_multiple_of(self.reader.cluster_size()) {
            return Err(Error::corrupt(
                format!("L1 entry {entry:#018x}: L2 table is not cluster aligned"),
                at,
            ));
        }
        if offset != 0 && offset >= self.reader.file_len {
            return Err(Error::corrupt(
                format!("L1 entry {entry:#018x}: L2 table is past the end of the file"),
                at,
            ));
        }
        Ok(offset)
    }

    fn decode(&self, raw: u64, at: u64) -> Result<L2Entry, Error> {
        L2Entry::decode(raw, self.cluster_bits(), self.reader.header.version, at)
    }

    /// The decoded L2 entry of `guest_cluster` (validated against the disk size).
    pub(crate) fn entry(&self, guest_cluster: u64) -> Result<L2Entry, Error> {
        if guest_cluster >= self.guest_clusters() {
            return Err(Error::InvalidArgument(format!(
                "guest cluster {guest_cluster} past the disk's {} clusters",
                self.guest_clusters()
            )));
        }
        let epl = l2_entries(self.cluster_bits());
        let l2 = self.l2_offset((guest_cluster / epl) as usize)?;
        if l2 == 0 {
            return Ok(L2Entry::Unallocated);
        }
        let at = l2 + (guest_cluster % epl) * 8;
        let mut raw = [0u8; 8];
        self.reader.read_host(&mut raw, at, "reading an L2 entry")?;
        self.decode(u64::from_be_bytes(raw), at)
    }

    /// How `guest_cluster` is stored.
    ///
    /// Errors: [`Error::InvalidArgument`] if the cluster is past the end of the disk;
    /// [`Error::Corrupt`] for an invalid L1 or L2 entry; [`Error::Io`].
    pub fn mapping(&self, guest_cluster: u64) -> Result<ClusterMapping, Error> {
        Ok(self.entry(guest_cluster)?.into())
    }

    /// Calls `f(l1_index, l2_offset, entries)` for every allocated L2 table, in L1 order.
    pub(crate) fn for_each_l2_table(
        &self,
        mut f: impl FnMut(usize, u64, &[u64]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut bytes = vec![0u8; self.reader.cluster_size() as usize];
        for i in 0..self.l1.len() {
            let l2 = self.l2_offset(i)?;
            if l2 == 0 {
                continue;
            }
            self.reader
                .read_host(&mut bytes, l2, "reading an L2 table")?;
            f(i, l2, &decode_be_u64s(&bytes))?;
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
        if buf.len() as u64 != self.reader.cluster_size() {
            return Err(Error::InvalidArgument(format!(
                "buffer of {} bytes, cluster size {}",
                buf.len(),
                self.reader.cluster_size()
            )));
        }
        match self.entry(guest_cluster)? {
            L2Entry::Unallocated | L2Entry::ZeroPlain | L2Entry::ZeroAlloc { .. } => buf.fill(0),
            L2Entry::Normal { host } => {
                self.reader.read_host(buf, host, "reading a data cluster")?
            }
            L2Entry::Compressed {
                host,
                additional_sectors,
            } => self.decompress(host, additional_sectors, buf)?,
        }
        Ok(())
    }

    /// Inflates the raw deflate payload at `host` into `out` (one cluster). Like QEMU, exactly
    /// one cluster must come out; trailing input bytes are ignored.
    fn decompress(&self, host: u64, additional_sectors: u64, out: &mut [u8]) -> Result<(), Error> {
        let len =
            compressed_len(host, additional_sectors).min(self.reader.file_len.saturating_sub(host));
        let mut input = vec![0u8; len as usize];
        self.reader
            .read_host(&mut input, host, "reading a compressed cluster")?;
        inflate_cluster(&input, out).map_err(|what| Error::corrupt(what, host))
    }

    /// Reads `buf.len()` bytes of the guest disk at guest byte `offset`.
    ///
    /// Errors: [`Error::InvalidArgument`] if the range extends past the virtual size; those of
    /// [`LayerReader::read_cluster`].
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let size = self.reader.header.size;
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > size)
        {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at guest offset {offset} past the virtual size {size}",
                buf.len()
            )));
        }
        let c = self.reader.cluster_size();
        let mut scratch = Vec::new();
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let within = pos % c;
            let n = ((c - within) as usize).min(buf.len() - done);
            let part = &mut buf[done..done + n];
            match self.entry(pos / c)? {
                L2Entry::Unallocated | L2Entry::ZeroPlain | L2Entry::ZeroAlloc { .. } => {
                    part.fill(0)
                }
                L2Entry::Normal { host } => {
                    self.reader
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

impl Reader {
    /// Calls `f(host_cluster)` for every host cluster the L2 table at `l2` references (refcount
    /// semantics of spec §2.1: the table itself, each normal or preallocated-zero data cluster,
    /// every cluster a compressed payload touches), in entry order; a cluster referenced
    /// several times is visited several times. `buf` (one cluster) receives the table.
    /// Errors: [`Error::Corrupt`] for an invalid entry or a table past the end; [`Error::Io`].
    pub(crate) fn visit_l2_table(
        &self,
        l2: u64,
        buf: &mut [u8],
        mut f: impl FnMut(u64),
    ) -> Result<(), Error> {
        let (cb, version) = (self.header.cluster_bits, self.header.version);
        self.read_host(buf, l2, "reading an L2 table")?;
        f(l2 >> cb);
        for (j, raw) in decode_be_u64s(buf).into_iter().enumerate() {
            let entry = L2Entry::decode(raw, cb, version, l2 + j as u64 * 8)?;
            if let Some((first, last)) = entry.host_cluster_range(cb) {
                (first..=last).for_each(&mut f);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::inflate_cluster;
    use flate2::{Compress, Compression, FlushCompress};

    fn deflate(data: &[u8], window_bits: u8) -> Vec<u8> {
        let mut c = Compress::new_with_window_bits(Compression::new(6), false, window_bits);
        let mut out = Vec::with_capacity(data.len() * 2 + 64);
        c.compress_vec(data, &mut out, FlushCompress::Finish)
            .unwrap();
        out
    }

    #[test]
    fn inflates_any_window_and_ignores_trailing_bytes() {
        let cluster: Vec<u8> = (0..65536u32)
            .map(|i| (i / 7 % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        for bits in [9u8, 12, 15] {
            let mut z = deflate(&cluster, bits);
            z.extend_from_slice(&[0xaa; 300]); // rest of the last sector
            let mut out = vec![0u8; cluster.len()];
            inflate_cluster(&z, &mut out).unwrap();
            assert!(out == cluster, "window bits {bits}");
        }
    }

    #[test]
    fn rejects_short_or_broken_streams() {
        let z = deflate(&[1u8; 4000], 12);
        let mut out = vec![0u8; 4096];
        assert!(inflate_cluster(&z, &mut out).is_err()); // 4000 bytes, not a cluster
        let z = deflate(&[1u8; 4096], 12);
        assert!(inflate_cluster(&z[..z.len() / 2], &mut out).is_err());
        assert!(inflate_cluster(&[0xff; 64], &mut out).is_err());
        let z = deflate(&[1u8; 8192], 12);
        assert!(inflate_cluster(&z, &mut out).is_ok()); // QEMU: one full cluster out is enough
    }
}
