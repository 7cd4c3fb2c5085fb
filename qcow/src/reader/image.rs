//! The open image file and its validated header: what every layer of the reader reads through.
//!
//! Design: [`Image::open`] reads and validates the header (spec "Header") and refuses the
//! features the reader cannot honour; every later read is positional and bounded by the file
//! length taken at open time, so an [`Image`] can serve many threads.

use std::fs::File;

use crate::bytes::decode_be;
use crate::compression::CompressionType;
use crate::error::Error;
use crate::format::extension::{self, HeaderExtension};
use crate::format::header::{
    Header, INCOMPAT_EXTENDED_L2, INCOMPAT_EXTERNAL_DATA, V2_HEADER_LENGTH, V3_HEADER_LENGTH,
};
use crate::geometry::{Version, MAX_L1_ENTRIES};
use crate::io::read_exact_at;

/// Where an image's bytes are: its file, or (for an image arriving on a stream) the bytes of
/// its first part, which hold every table (`crate::stream`).
#[derive(Debug)]
pub(super) enum Backing {
    /// An image file, read with positional reads.
    File(File),
    /// The first bytes of an image, in memory.
    Bytes(Vec<u8>),
}

impl Backing {
    /// Reads exactly `buf.len()` bytes at host byte `offset` (see [`read_exact_at`]).
    pub(super) fn read_exact_at(
        &self,
        buf: &mut [u8],
        offset: u64,
        op: &'static str,
    ) -> Result<(), Error> {
        match self {
            Backing::File(f) => read_exact_at(f, buf, offset, op),
            Backing::Bytes(b) => {
                let start = usize::try_from(offset).ok().filter(|&s| s <= b.len());
                match start.and_then(|s| b.get(s..s.checked_add(buf.len())?)) {
                    Some(src) => {
                        buf.copy_from_slice(src);
                        Ok(())
                    }
                    None => Err(Error::corrupt(
                        format!(
                            "{op}: {} bytes extend past the {} bytes of tables read first",
                            buf.len(),
                            b.len()
                        ),
                        offset,
                    )),
                }
            }
        }
    }
}

/// An image file opened for reading, with its validated header.
#[derive(Debug)]
pub(super) struct Image {
    pub(super) file: Backing,
    /// Size of the file in bytes when it was opened.
    pub(super) file_len: u64,
    pub(super) header: Header,
    /// How its compressed clusters are compressed (the header's `compression_type`).
    pub(super) compression: CompressionType,
}

/// Refuses valid images whose content this reader cannot produce faithfully (a backing file
/// only when `backing_ok` is false).
fn check_supported(h: &Header, backing_ok: bool) -> Result<(), Error> {
    let refuse = |what: &str| Err(Error::Unsupported(what.to_string()));
    if h.crypt_method != 0 {
        return refuse(&format!("encryption (crypt_method {})", h.crypt_method));
    }
    if h.backing_file_offset != 0 && !backing_ok {
        return refuse("backing file (the image is not complete on its own)");
    }
    if h.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0 {
        return refuse("external data file (incompatible bit 2)");
    }
    if h.incompatible_features & INCOMPAT_EXTENDED_L2 != 0 {
        return refuse("extended L2 entries (incompatible bit 4)");
    }
    Ok(())
}

impl Image {
    /// Reads and validates the header of `file` and refuses unsupported features.
    ///
    /// Errors: those of [`Header::parse`]; [`Error::Unsupported`] for encryption, a backing
    /// file, an external data file or extended L2 entries; [`Error::Io`].
    pub(super) fn open(file: File, backing_ok: bool) -> Result<Image, Error> {
        let file_len = file
            .metadata()
            .map_err(Error::io("reading the file size", 0))?
            .len();
        let mut buf = vec![0u8; file_len.min(V3_HEADER_LENGTH.into()) as usize];
        read_exact_at(&file, &mut buf, 0, "reading the header")?;
        let header = Header::parse(&buf)?;
        check_supported(&header, backing_ok)?;
        // Header::parse accepts compression types 0 and 1 only.
        let compression = CompressionType::from_header(header.compression_type).unwrap_or_default();
        Ok(Image {
            file: Backing::File(file),
            file_len,
            header,
            compression,
        })
    }

    /// The image whose first bytes are `bytes` (every table among them; data clusters past
    /// them are read by the caller): its header validated as by [`Image::open`].
    pub(super) fn from_bytes(bytes: Vec<u8>, backing_ok: bool) -> Result<Image, Error> {
        let head = &bytes[..bytes.len().min(V3_HEADER_LENGTH as usize)];
        let header = Header::parse(head)?;
        check_supported(&header, backing_ok)?;
        let compression = CompressionType::from_header(header.compression_type).unwrap_or_default();
        Ok(Image {
            file_len: bytes.len() as u64,
            file: Backing::Bytes(bytes),
            header,
            compression,
        })
    }

    /// Cluster size in bytes.
    pub(super) fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The backing file name stored in cluster 0, if any (lossy UTF-8).
    pub(super) fn backing_file(&self) -> Result<Option<String>, Error> {
        let h = &self.header;
        if h.backing_file_offset == 0 {
            return Ok(None);
        }
        // Header::parse checked the name lies in cluster 0 and is at most 1023 bytes.
        let mut name = vec![0u8; h.backing_file_size as usize];
        self.file.read_exact_at(
            &mut name,
            h.backing_file_offset,
            "reading the backing file name",
        )?;
        Ok(Some(String::from_utf8_lossy(&name).into_owned()))
    }

    /// Checks that `[offset, offset + len)` lies inside the file. Errors: [`Error::Corrupt`].
    pub(super) fn check_in_file(&self, what: &str, offset: u64, len: u64) -> Result<(), Error> {
        let file_len = self.file_len;
        if offset.checked_add(len).is_none_or(|end| end > file_len) {
            return Err(Error::corrupt(
                format!(
                    "{what} of {len} bytes extends past the end of the file ({file_len} bytes)"
                ),
                offset,
            ));
        }
        Ok(())
    }

    /// Reads the header extensions: from the end of the header to the backing file name, or
    /// to the end of cluster 0 without one. Bytes of cluster 0 past the end of a short file
    /// read as zeros, as QEMU reads them.
    pub(super) fn read_extensions(&self) -> Result<Vec<HeaderExtension>, Error> {
        let h = &self.header;
        let start = u64::from(match h.version {
            Version::V2 => V2_HEADER_LENGTH,
            Version::V3 => h.header_length,
        });
        let mut end = h.cluster_size();
        if h.backing_file_offset != 0 {
            end = end.min(h.backing_file_offset);
        }
        if end <= start {
            return Ok(Vec::new());
        }
        // cluster_size is at most 2 MiB (MAX_CLUSTER_BITS), which bounds this buffer.
        let mut area = vec![0u8; (end - start) as usize];
        let in_file = self.file_len.clamp(start, end) - start;
        self.file.read_exact_at(
            &mut area[..in_file as usize],
            start,
            "reading the header extensions",
        )?;
        extension::parse(&area, start)
    }

    /// Reads an L1 table of `l1_size` entries at `offset` after checking its size and bounds.
    pub(super) fn read_l1(&self, offset: u64, l1_size: u32) -> Result<Vec<u64>, Error> {
        if u64::from(l1_size) > MAX_L1_ENTRIES {
            return Err(Error::Limit(format!(
                "L1 table at {offset:#x} has {l1_size} entries (> {MAX_L1_ENTRIES})"
            )));
        }
        let len = u64::from(l1_size) * 8;
        self.check_in_file("L1 table", offset, len)?;
        let mut bytes = vec![0u8; len as usize];
        self.file
            .read_exact_at(&mut bytes, offset, "reading an L1 table")?;
        Ok(decode_be(&bytes))
    }

    /// Reads `buf.len()` bytes at host byte `offset`; bytes past the end of the file read as
    /// zero (QEMU tolerates a short last cluster), but `offset` itself must be inside the file.
    pub(super) fn read_host(
        &self,
        buf: &mut [u8],
        offset: u64,
        op: &'static str,
    ) -> Result<(), Error> {
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
        self.file.read_exact_at(&mut buf[..available], offset, op)?;
        buf[available..].fill(0);
        Ok(())
    }
}
