//! QCOW2 header extensions (spec "Header extensions", notes §1.3).
//!
//! Design: extensions are `(type, data)` records that follow the header (at byte 72 in v2, at
//! `header_length` in v3) up to an end marker of type 0, the backing file name or the end of
//! cluster 0. Each is a big-endian u32 type, a u32 length in bytes and the data, padded with
//! zeros to a multiple of 8 bytes. None changes how clusters are read, so the reader keeps
//! every extension as opaque bytes, and the writer writes only what its caller asks for:
//! private records of the caller's own type, which QEMU ignores and preserves (notes §1.3).

use crate::bytes::{push_be, BigEndian};
use crate::error::Error;

/// Header extension type of the end marker that closes the extension area (spec "Header
/// extensions").
pub const EXT_END: u32 = 0;
/// Header extension type: backing file format name (spec "Header extensions").
pub const EXT_BACKING_FORMAT: u32 = 0xe279_2aca;
/// Header extension type: feature name table (spec "Header extensions").
pub const EXT_FEATURE_TABLE: u32 = 0x6803_f857;
/// Header extension type: persistent dirty bitmaps (spec "Header extensions").
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Header extension type: full disk encryption header pointer (spec "Header extensions").
pub const EXT_FULL_DISK_ENCRYPTION: u32 = 0x0537_be77;
/// Header extension type: external data file name (spec "Header extensions").
pub const EXT_EXTERNAL_DATA_FILE: u32 = 0x4441_5441;

/// Types the spec defines; the writer refuses them, since their meaning is QEMU's.
const SPEC_TYPES: [u32; 6] = [
    EXT_END,
    EXT_BACKING_FORMAT,
    EXT_FEATURE_TABLE,
    EXT_BITMAPS,
    EXT_FULL_DISK_ENCRYPTION,
    EXT_EXTERNAL_DATA_FILE,
];

/// Bytes of an extension's type and length fields.
const EXT_HEADER_LEN: usize = 8;

/// One header extension (spec "Header extensions"): its type and its data, as stored after
/// the header in cluster 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderExtension {
    /// The extension type (spec "Header extension type").
    pub ext_type: u32,
    /// The data, without its padding.
    pub data: Vec<u8>,
}

/// Parses the extensions in `area`: the bytes from the end of the header to the end of
/// cluster 0 (or to the backing file name). `base` is the byte offset of `area` in the
/// file, used in error messages. Stops at the end marker or at the end of the area.
///
/// Refuses exactly what QEMU 10 refuses when it opens an image ("Header extension too
/// large", checked with `qemu-img info` on crafted images): an extension, the end marker
/// included, whose length runs past the area, and 1 to 7 bytes left where an extension's type
/// and length would be. The padding of the last extension may run past the area.
///
/// Errors: [`Error::Corrupt`] naming the byte offset of the offending extension.
pub(crate) fn parse(area: &[u8], base: u64) -> Result<Vec<HeaderExtension>, Error> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < area.len() {
        let at = base + pos as u64;
        let Some(head) = area.get(pos..pos + EXT_HEADER_LEN) else {
            let left = area.len() - pos;
            return Err(Error::corrupt(
                format!("{left} bytes left after the header extensions, fewer than a type and a length (8 bytes)"),
                at,
            ));
        };
        let ext_type = u32::get(head, 0);
        let len = u32::get(head, 4) as usize;
        let start = pos + EXT_HEADER_LEN;
        let Some(data) = start.checked_add(len).and_then(|end| area.get(start..end)) else {
            let what = if ext_type == EXT_END {
                format!("the end of the header extensions has length {len}, running past cluster 0 or the backing file name")
            } else {
                format!("header extension {ext_type:#010x} of {len} bytes runs past cluster 0 or the backing file name")
            };
            return Err(Error::corrupt(what, at));
        };
        if ext_type == EXT_END {
            break;
        }
        out.push(HeaderExtension {
            ext_type,
            data: data.to_vec(),
        });
        pos = start + len.next_multiple_of(8);
    }
    Ok(out)
}

/// Encodes `exts` followed by the end marker.
pub(crate) fn encode(exts: &[HeaderExtension]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in exts {
        push_be(&mut out, e.ext_type);
        push_be(&mut out, e.data.len() as u32);
        out.extend_from_slice(&e.data);
        out.resize(out.len().next_multiple_of(8), 0);
    }
    out.extend_from_slice(&[0u8; EXT_HEADER_LEN]);
    out
}

/// Checks that a writer may add an extension of `ext_type` with `len` bytes of data next to
/// `existing`.
///
/// Errors: [`Error::InvalidArgument`] for a type the spec defines (or the end marker), a type
/// already present, or data over 64 KiB (a private record has no business being larger).
pub(crate) fn check_new(
    existing: &[HeaderExtension],
    ext_type: u32,
    len: usize,
) -> Result<(), Error> {
    /// Largest data of one extension the writer accepts, in bytes.
    const MAX_EXT_DATA: usize = 64 << 10;
    if SPEC_TYPES.contains(&ext_type) {
        return Err(Error::InvalidArgument(format!(
            "header extension type {ext_type:#010x} is defined by the QCOW2 spec"
        )));
    }
    if existing.iter().any(|e| e.ext_type == ext_type) {
        return Err(Error::InvalidArgument(format!(
            "header extension type {ext_type:#010x} added twice"
        )));
    }
    if len > MAX_EXT_DATA {
        return Err(Error::InvalidArgument(format!(
            "header extension of {len} bytes (at most {MAX_EXT_DATA})"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_parse() {
        let exts = vec![
            HeaderExtension {
                ext_type: 0x1234_5678,
                data: vec![1, 2, 3, 4, 5],
            },
            HeaderExtension {
                ext_type: 0x6532_6972,
                data: vec![9; 8],
            },
        ];
        let mut b = encode(&exts);
        assert_eq!(b.len(), 8 + 8 + 8 + 8 + 8);
        b.resize(512, 0);
        assert_eq!(parse(&b, 72).unwrap(), exts);
        assert_eq!(parse(&[0u8; 8], 72).unwrap(), vec![]);
        assert_eq!(parse(&[], 72).unwrap(), vec![]);
    }

    #[test]
    fn end_marker_and_tail_as_qemu() {
        // The end marker's length is checked like any other, then ignored.
        let mut b = vec![0u8; 64];
        b[4..8].copy_from_slice(&56u32.to_be_bytes());
        assert_eq!(parse(&b, 112).unwrap(), vec![]);
        b[4..8].copy_from_slice(&57u32.to_be_bytes());
        let e = parse(&b, 112).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 112, .. }), "{e}");
        assert!(e.to_string().contains("length 57"), "{e}");
        // 1 to 7 bytes where a type and a length would be.
        let mut b = encode(&[HeaderExtension {
            ext_type: 7,
            data: vec![1; 8],
        }]);
        b.truncate(20);
        let e = parse(&b, 112).unwrap_err();
        assert!(matches!(e, Error::Corrupt { offset: 128, .. }), "{e}");
        // The last extension's padding may run past the area.
        let b = &encode(&[HeaderExtension {
            ext_type: 7,
            data: vec![1; 12],
        }])[..20];
        assert_eq!(parse(b, 112).unwrap().len(), 1);
    }

    #[test]
    fn overlong_extension_is_corrupt() {
        let mut b = encode(&[HeaderExtension {
            ext_type: 7,
            data: vec![1; 16],
        }]);
        b.truncate(20);
        let e = parse(&b, 112).unwrap_err().to_string();
        assert!(e.contains("0x00000007") && e.contains("0x70"), "{e}");
    }

    #[test]
    fn writer_rules() {
        assert!(check_new(&[], EXT_FEATURE_TABLE, 8).is_err());
        assert!(check_new(&[], EXT_END, 8).is_err());
        assert!(check_new(&[], 5, 1 << 20).is_err());
        let one = [HeaderExtension {
            ext_type: 5,
            data: vec![],
        }];
        assert!(check_new(&one, 5, 0).is_err());
        assert!(check_new(&one, 6, 8).is_ok());
    }
}
