//! Reading the snapshot table (spec "Snapshots") with positional reads, every length bounded
//! before anything is allocated: the entry count (by the header), each entry's extra data and
//! the whole table's size.

use super::image::Backing;
use crate::error::Error;
use crate::format::header::Header;
use crate::format::snapshot::{RawSnapshotEntry, SnapshotInfo};
use crate::geometry::MAX_SNAPSHOT_TABLE_BYTES;

/// A snapshot table entry and its byte extent in the file (start, end before padding).
pub(super) type EntryWithExtent = (SnapshotInfo, (u64, u64));

/// Reads the snapshot table described by `header` from `file` (`file_len` bytes long): each
/// entry, and its extent in the file.
/// Errors: [`Error::Corrupt`] if an entry lies outside the file; [`Error::Limit`] for extra data
/// over 1024 bytes or a table over 64 MiB; [`Error::Io`].
pub(super) fn read_snapshot_table(
    file: &Backing,
    header: &Header,
    file_len: u64,
) -> Result<Vec<EntryWithExtent>, Error> {
    let start = header.snapshots_offset;
    let mut offset = start;
    let mut out = Vec::with_capacity(header.nb_snapshots.min(1024) as usize);
    for i in 0..header.nb_snapshots {
        offset = offset.next_multiple_of(8);
        let (info, next) = read_entry(file, offset, file_len, i)?;
        if next - start > MAX_SNAPSHOT_TABLE_BYTES {
            return Err(Error::Limit(format!(
                "snapshot table at {start:#x} exceeds {MAX_SNAPSHOT_TABLE_BYTES} bytes"
            )));
        }
        out.push((info, (offset, next)));
        offset = next;
    }
    Ok(out)
}

/// Reads entry `index` at `offset`; returns it and the offset just past it (before padding).
/// v3 entries should carry ≥ 16 bytes of extra data; shorter ones are tolerated when reading.
fn read_entry(
    file: &Backing,
    offset: u64,
    file_len: u64,
    index: u32,
) -> Result<(SnapshotInfo, u64), Error> {
    let past_the_end = || {
        Error::corrupt(
            format!("snapshot table entry {index} extends past the end of the file"),
            offset,
        )
    };
    let fixed_end = offset
        .checked_add(RawSnapshotEntry::LEN as u64)
        .filter(|&e| e <= file_len)
        .ok_or_else(past_the_end)?;
    let mut fixed = [0u8; RawSnapshotEntry::LEN];
    file.read_exact_at(&mut fixed, offset, "reading snapshot table entry")?;
    let raw = RawSnapshotEntry::decode(&fixed);
    let var_len = raw.var_len(index, offset)?;
    let end = fixed_end + var_len as u64;
    if end > file_len {
        return Err(past_the_end());
    }
    let mut var = vec![0u8; var_len];
    file.read_exact_at(&mut var, fixed_end, "reading snapshot table entry")?;
    Ok((SnapshotInfo::decode(&raw, &var), end))
}
