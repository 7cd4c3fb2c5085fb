//! The internal snapshot table (spec "Snapshots").
//!
//! Design: the table is a run of variable-length entries, each starting 8-byte aligned. The
//! writer encodes disk-only snapshots exactly as QEMU 10 does (24 bytes of extra data:
//! vm_state_size_large 0, disk_size = virtual size, icount; vm_clock 0). The reader parses the
//! table entry by entry with positional reads, bounding every length before allocating (entry
//! count, extra data, total table size), and keeps the L1 location of each snapshot for
//! [`crate::Reader::layer`], which validates it only when that layer is opened, so one damaged
//! snapshot does not hide the others.

use std::fs::File;

use crate::header::{Header, MAX_SNAPSHOTS};
use crate::io::read_exact_at;
use crate::writer::StateId;
use crate::Error;

/// Fixed part of a snapshot table entry in bytes (before the extra data).
pub const SNAPSHOT_ENTRY_FIXED_BYTES: u64 = 40;
/// Largest extra data per entry in bytes: 1024 (QEMU QCOW_MAX_SNAPSHOT_EXTRA_DATA).
pub const MAX_SNAPSHOT_EXTRA_BYTES: u32 = 1024;
/// Largest snapshot table in bytes: 64 MiB (QEMU QCOW_MAX_SNAPSHOTS_SIZE: 1 KiB × 65 536).
pub const MAX_SNAPSHOT_TABLE_BYTES: u64 = 64 << 20;
/// Extra data size written by this crate: vm_state_size_large, disk_size, icount (QEMU 10).
pub const WRITTEN_EXTRA_BYTES: u32 = 24;
/// icount value meaning "no instruction count recorded".
pub const ICOUNT_NONE: u64 = u64::MAX;

/// One snapshot to write: which writer state it shows, and its table fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSpec {
    /// The state whose L1 table this snapshot gets (a copy of it).
    pub state: StateId,
    /// Unique id string (QEMU uses a decimal counter: "1", "2", ...); ≤ 65 535 bytes.
    pub id: String,
    /// Unique name, ≤ 65 535 bytes (QEMU listings show 256); must not equal another
    /// snapshot's id (QEMU looks a name up as an id first).
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
}

/// One entry of an image's snapshot table, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Id string (lossily decoded as UTF-8).
    pub id: String,
    /// Name (lossily decoded as UTF-8).
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub date_sec: u32,
    /// Creation time, nanoseconds part.
    pub date_nsec: u32,
    /// Guest run time at snapshot creation, nanoseconds.
    pub vm_clock_nsec: u64,
    /// Byte offset of the snapshot's L1 table (not yet validated).
    pub l1_table_offset: u64,
    /// Number of entries in the snapshot's L1 table (not yet validated).
    pub l1_size: u32,
    /// Virtual disk size in bytes when the snapshot was taken (extra data ≥ 16 bytes).
    pub disk_size: Option<u64>,
    /// Instruction count (extra data ≥ 24 bytes and not −1).
    pub icount: Option<u64>,
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Appends one snapshot table entry (padded to a multiple of 8 bytes) to `out`.
/// Errors: [`Error::InvalidArgument`] if the id or name is longer than 65 535 bytes.
pub(crate) fn encode_entry(
    out: &mut Vec<u8>,
    spec: &SnapshotSpec,
    l1_table_offset: u64,
    l1_size: u32,
    disk_size: u64,
) -> Result<(), Error> {
    let id_len = u16::try_from(spec.id.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "snapshot id of {} bytes exceeds 65535",
            spec.id.len()
        ))
    })?;
    let name_len = u16::try_from(spec.name.len()).map_err(|_| {
        Error::InvalidArgument(format!(
            "snapshot name of {} bytes exceeds 65535",
            spec.name.len()
        ))
    })?;
    out.extend_from_slice(&l1_table_offset.to_be_bytes());
    out.extend_from_slice(&l1_size.to_be_bytes());
    out.extend_from_slice(&id_len.to_be_bytes());
    out.extend_from_slice(&name_len.to_be_bytes());
    out.extend_from_slice(&spec.date_sec.to_be_bytes());
    out.extend_from_slice(&spec.date_nsec.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // vm_clock_nsec
    out.extend_from_slice(&0u32.to_be_bytes()); // vm_state_size (disk-only snapshot)
    out.extend_from_slice(&WRITTEN_EXTRA_BYTES.to_be_bytes());
    out.extend_from_slice(&0u64.to_be_bytes()); // vm_state_size_large
    out.extend_from_slice(&disk_size.to_be_bytes());
    out.extend_from_slice(&ICOUNT_NONE.to_be_bytes());
    out.extend_from_slice(spec.id.as_bytes());
    out.extend_from_slice(spec.name.as_bytes());
    out.resize(out.len().next_multiple_of(8), 0);
    Ok(())
}

/// Checks a list of snapshots to write: at most 65 536, ids non-empty and unique, names unique
/// and never equal to another snapshot's id. Errors: [`Error::InvalidArgument`], [`Error::Limit`].
pub(crate) fn validate_specs(specs: &[SnapshotSpec]) -> Result<(), Error> {
    if specs.len() > MAX_SNAPSHOTS as usize {
        return Err(Error::Limit(format!(
            "{} snapshots exceed {MAX_SNAPSHOTS}",
            specs.len()
        )));
    }
    let mut ids = std::collections::HashSet::new();
    let mut names = std::collections::HashSet::new();
    for s in specs {
        if s.id.is_empty() || !ids.insert(s.id.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "snapshot id {:?} is empty or not unique",
                s.id
            )));
        }
        if !names.insert(s.name.as_str()) {
            return Err(Error::InvalidArgument(format!(
                "snapshot name {:?} is not unique",
                s.name
            )));
        }
    }
    if let Some(s) = specs
        .iter()
        .find(|s| ids.contains(s.name.as_str()) && s.name != s.id)
    {
        return Err(Error::InvalidArgument(format!(
            "snapshot name {:?} equals another snapshot's id",
            s.name
        )));
    }
    Ok(())
}

/// Reads the snapshot table described by `header` from `file` (`file_len` bytes long).
/// Errors: [`Error::Corrupt`] if an entry lies outside the file; [`Error::Limit`] for extra data
/// over 1024 bytes or a table over 64 MiB; [`Error::Io`].
pub(crate) fn read_snapshot_table(
    file: &File,
    header: &Header,
    file_len: u64,
) -> Result<Vec<SnapshotInfo>, Error> {
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
        out.push(info);
        offset = next;
    }
    Ok(out)
}

/// Reads entry `index` at `offset`; returns it and the offset just past it (before padding).
/// v3 entries should carry ≥ 16 bytes of extra data; shorter ones are tolerated when reading.
fn read_entry(
    file: &File,
    offset: u64,
    file_len: u64,
    index: u32,
) -> Result<(SnapshotInfo, u64), Error> {
    let fixed_end = offset
        .checked_add(SNAPSHOT_ENTRY_FIXED_BYTES)
        .filter(|&e| e <= file_len);
    let fixed_end = fixed_end.ok_or_else(|| {
        Error::corrupt(
            format!("snapshot table entry {index} extends past the end of the file"),
            offset,
        )
    })?;
    let mut fixed = [0u8; SNAPSHOT_ENTRY_FIXED_BYTES as usize];
    read_exact_at(file, &mut fixed, offset, "reading snapshot table entry")?;
    let extra_len = be_u32(&fixed, 36);
    if extra_len > MAX_SNAPSHOT_EXTRA_BYTES {
        return Err(Error::Limit(format!("snapshot table entry {index} at {offset:#x} has {extra_len} bytes of extra data (> 1024)")));
    }
    let (id_len, name_len) = (be_u16(&fixed, 12) as usize, be_u16(&fixed, 14) as usize);
    let var_len = extra_len as usize + id_len + name_len;
    let end = fixed_end + var_len as u64;
    if end > file_len {
        return Err(Error::corrupt(
            format!("snapshot table entry {index} extends past the end of the file"),
            offset,
        ));
    }
    let mut var = vec![0u8; var_len];
    read_exact_at(file, &mut var, fixed_end, "reading snapshot table entry")?;
    let (extra, strings) = var.split_at(extra_len as usize);
    let (id, name) = strings.split_at(id_len);
    let info = SnapshotInfo {
        id: String::from_utf8_lossy(id).into_owned(),
        name: String::from_utf8_lossy(name).into_owned(),
        date_sec: be_u32(&fixed, 16),
        date_nsec: be_u32(&fixed, 20),
        vm_clock_nsec: be_u64(&fixed, 24),
        l1_table_offset: be_u64(&fixed, 0),
        l1_size: be_u32(&fixed, 8),
        disk_size: (extra.len() >= 16).then(|| be_u64(extra, 8)),
        icount: (extra.len() >= 24)
            .then(|| be_u64(extra, 16))
            .filter(|&v| v != ICOUNT_NONE),
    };
    Ok((info, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, name: &str) -> SnapshotSpec {
        SnapshotSpec {
            state: StateId::for_tests(0),
            id: id.into(),
            name: name.into(),
            date_sec: 1,
            date_nsec: 2,
        }
    }

    #[test]
    fn entry_layout_matches_qemu() {
        let mut out = Vec::new();
        encode_entry(&mut out, &spec("1", "s1"), 0x70000, 1, 0x800_0000).unwrap();
        // 40 + 24 + 1 + 2 = 67 bytes, padded to 72.
        assert_eq!(out.len(), 72);
        assert_eq!(&out[..8], &0x70000u64.to_be_bytes());
        assert_eq!(&out[36..40], &24u32.to_be_bytes());
        assert_eq!(&out[48..56], &0x800_0000u64.to_be_bytes());
        assert_eq!(&out[64..67], b"1s1");
    }

    #[test]
    fn spec_validation() {
        assert!(validate_specs(&[spec("1", "a"), spec("2", "b")]).is_ok());
        assert!(validate_specs(&[spec("1", "a"), spec("1", "b")]).is_err());
        assert!(validate_specs(&[spec("1", "a"), spec("2", "a")]).is_err());
        assert!(validate_specs(&[spec("1", "2"), spec("2", "b")]).is_err());
        assert!(validate_specs(&[spec("", "a")]).is_err());
        assert!(validate_specs(&[spec("1", "1")]).is_ok());
    }
}
