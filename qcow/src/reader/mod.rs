//! The QCOW2 reader: any layer (active or internal snapshot) of v2/v3 images made by this crate
//! or by QEMU, including deflate- and zstd-compressed clusters and zero clusters.
//!
//! Design: [`Reader::open`] validates the header, refuses features it cannot honour (encryption,
//! backing file, external data file, extended L2), checks that the tables it uses lie
//! inside the file, reads the snapshot table and the active L1 table. [`Reader::layer`] gives a
//! [`LayerReader`] over one L1 table (a snapshot's is validated and read only then). All reads
//! are positional (`read_exact_at`) and nothing is cached behind a lock, so a `Reader` and its
//! `LayerReader`s are `Send + Sync` and may serve many threads. Every on-disk value is checked
//! before use and errors name the offset; corrupt input never panics.
//!
//! Files: `image.rs` (the file and its header, bounded reads), `snapshot_table.rs`,
//! `layer.rs` ([`LayerReader`]); compressed clusters decode through `crate::compression`.

mod image;
mod layer;
mod snapshot_table;

use std::borrow::Cow;
use std::fs::File;

use image::Image;
pub use layer::{ClusterMapping, Layer, LayerReader};
use snapshot_table::read_snapshot_table;

use crate::error::Error;
use crate::format::extension::HeaderExtension;
use crate::format::header::Header;
use crate::format::snapshot::SnapshotInfo;

/// An open QCOW2 image (v2 or v3, spec "Header"): its validated header, snapshot table, header
/// extensions and active L1 table. [`Reader::layer`] reads the active layer or one snapshot.
/// All reads are positional and nothing is cached behind a lock, so a `Reader` and its
/// [`LayerReader`]s are `Send + Sync`; corrupt input gives an [`Error`], never a panic.
#[derive(Debug)]
pub struct Reader {
    image: Image,
    snapshots: Vec<SnapshotInfo>,
    /// Byte extent of each snapshot table entry: (start, end before padding).
    snapshot_extents: Vec<(u64, u64)>,
    active_l1: Vec<u64>,
    extensions: Vec<HeaderExtension>,
}

impl Reader {
    /// Opens an image from `file` (opened read-only by the caller).
    ///
    /// Errors: those of [`Header::parse`]; [`Error::Unsupported`] for encryption, a backing
    /// file, an external data file or extended L2 entries;
    /// [`Error::Corrupt`] if the active L1 table, the refcount table or the snapshot table is
    /// outside the file; [`Error::Limit`] for an oversized snapshot table; [`Error::Io`].
    pub fn open(file: File) -> Result<Reader, Error> {
        Reader::open_image(Image::open(file, false)?)
    }

    /// Like [`Reader::open`], but also opens an image with a backing file: a delta, whose
    /// unallocated clusters belong to the backing image. Its layers then read only what the
    /// image itself maps (unallocated clusters read as zeros, not as the backing file's); use
    /// [`Reader::backing_file`] and the cluster mappings to tell them apart.
    ///
    /// Errors: as [`Reader::open`], a backing file excepted.
    pub fn open_with_backing(file: File) -> Result<Reader, Error> {
        Reader::open_image(Image::open(file, true)?)
    }

    /// The backing file name recorded in the header, if any (lossy UTF-8).
    ///
    /// Errors: [`Error::Io`] reading cluster 0.
    pub fn backing_file(&self) -> Result<Option<String>, Error> {
        self.image.backing_file()
    }

    /// Opens the image whose first bytes are `bytes`, which hold its header and every table it
    /// uses (an image arriving on a stream, `crate::stream`); a backing file is allowed. Its
    /// layers give every mapping; reading data past `bytes` is the caller's.
    ///
    /// Errors: as [`Reader::open_with_backing`], a table outside `bytes` being corrupt.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> Result<Reader, Error> {
        Reader::open_image(Image::from_bytes(bytes, true)?)
    }

    /// The bytes a reader made by [`Reader::from_bytes`] holds (empty for a file).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.image.file {
            image::Backing::Bytes(b) => b,
            image::Backing::File(_) => &[],
        }
    }

    /// The bytes a reader made by [`Reader::from_bytes`] holds (empty for a file), given up.
    pub(crate) fn into_bytes(self) -> Vec<u8> {
        match self.image.file {
            image::Backing::Bytes(b) => b,
            image::Backing::File(_) => Vec::new(),
        }
    }

    fn open_image(image: Image) -> Result<Reader, Error> {
        let h = &image.header;
        let reftable_len = u64::from(h.refcount_table_clusters) * image.cluster_size();
        image.check_in_file("refcount table", h.refcount_table_offset, reftable_len)?;
        let (snapshots, snapshot_extents) = read_snapshot_table(&image.file, h, image.file_len)?
            .into_iter()
            .unzip();
        let active_l1 = image.read_l1(h.l1_table_offset, h.l1_size)?;
        let extensions = image.read_extensions()?;
        Ok(Reader {
            image,
            snapshots,
            snapshot_extents,
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
        &self.image.header
    }

    /// Virtual disk size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.image.header.size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.image.header.cluster_size()
    }

    /// How the image's compressed clusters are compressed (the header's `compression_type`;
    /// deflate for v2 and for headers without the field).
    pub fn compression_type(&self) -> crate::CompressionType {
        self.image.compression
    }

    /// Size of the image file in bytes (when opened).
    pub fn file_len(&self) -> u64 {
        self.image.file_len
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
                self.image.header.l1_table_offset,
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
                    Cow::Owned(self.image.read_l1(s.l1_table_offset, s.l1_size)?),
                    s.l1_table_offset,
                )
            }
        };
        Ok(LayerReader::new(&self.image, layer, l1, l1_table_offset))
    }
}

impl Reader {
    /// The byte extent of snapshot table entry `i`: (start, end before padding).
    pub(crate) fn snapshot_extent(&self, i: usize) -> Option<(u64, u64)> {
        self.snapshot_extents.get(i).copied()
    }

    /// The active L1 table as read (entries with flags).
    pub(crate) fn active_l1(&self) -> &[u64] {
        &self.active_l1
    }

    /// Reads `len` bytes at host byte `offset`, which must lie inside the file (the caller
    /// bounds `len`). Errors: [`Error::Corrupt`] past the end; [`Error::Io`].
    pub(crate) fn read_bytes(&self, offset: u64, len: u64, op: &str) -> Result<Vec<u8>, Error> {
        self.image.check_in_file(op, offset, len)?;
        let mut buf = vec![0u8; len as usize];
        self.image
            .file
            .read_exact_at(&mut buf, offset, "reading image metadata")?;
        Ok(buf)
    }

    /// Reads an L1 table of `l1_size` entries at `offset` (at most 4 Mi entries, inside the
    /// file). Errors: [`Error::Limit`], [`Error::Corrupt`], [`Error::Io`].
    pub(crate) fn read_l1(&self, offset: u64, l1_size: u32) -> Result<Vec<u64>, Error> {
        self.image.read_l1(offset, l1_size)
    }

    /// Calls `f(host_cluster)` for every host cluster the L2 table at `l2` references (refcount
    /// semantics of spec §2.1: the table itself, each normal or preallocated-zero data cluster,
    /// every cluster a compressed payload touches), in entry order; a cluster referenced
    /// several times is visited several times. `buf` (one cluster) receives the table.
    ///
    /// Errors: [`Error::Corrupt`] for an invalid entry or a table past the end; [`Error::Io`].
    pub(crate) fn visit_l2_table(
        &self,
        l2: u64,
        buf: &mut [u8],
        mut f: impl FnMut(u64),
    ) -> Result<(), Error> {
        let (cb, version) = (self.image.header.cluster_bits, self.image.header.version);
        self.image.read_host(buf, l2, "reading an L2 table")?;
        f(l2 >> cb);
        for (j, raw) in crate::bytes::decode_be::<u64>(buf).into_iter().enumerate() {
            let entry = crate::format::table::L2Entry::decode(raw, cb, version, l2 + j as u64 * 8)?;
            if let Some((first, last)) = entry.host_cluster_range(cb) {
                (first..=last).for_each(&mut f);
            }
        }
        Ok(())
    }
}
