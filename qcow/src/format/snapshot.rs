//! The internal snapshot table (spec "Snapshots").
//!
//! Design: the table is a run of variable-length entries, each starting 8-byte aligned: a fixed
//! part ([`RawSnapshotEntry`], 40 bytes), the extra data, the id and the name. The writer
//! encodes disk-only snapshots exactly as QEMU 10 does (24 bytes of extra data:
//! vm_state_size_large 0, disk_size = virtual size, icount; vm_clock 0). The reader reads the
//! table entry by entry (in `reader/snapshot_table.rs`), bounding every length before
//! allocating, and keeps the L1 location of each snapshot as read: it is validated only when
//! that layer is opened, so one damaged snapshot does not hide the others.

use std::collections::HashSet;
use std::mem::offset_of;

use crate::bytes::be_struct;
use crate::error::Error;
use crate::geometry::{MAX_SNAPSHOTS, MAX_SNAPSHOT_EXTRA_BYTES};
use crate::types::StateId;

be_struct! {
    /// The fixed part of a snapshot table entry, before its extra data, id and name.
    pub(crate) struct RawSnapshotEntry {
        pub(crate) l1_table_offset: u64,
        pub(crate) l1_size: u32,
        pub(crate) id_str_size: u16,
        pub(crate) name_size: u16,
        pub(crate) date_sec: u32,
        pub(crate) date_nsec: u32,
        pub(crate) vm_clock_nsec: u64,
        pub(crate) vm_state_size: u32,
        pub(crate) extra_data_size: u32,
    }
}

const _: () = assert!(RawSnapshotEntry::LEN == 40);
const _: () = assert!(offset_of!(RawSnapshotEntry, id_str_size) == 12);
const _: () = assert!(offset_of!(RawSnapshotEntry, date_sec) == 16);
const _: () = assert!(offset_of!(RawSnapshotEntry, vm_clock_nsec) == 24);
const _: () = assert!(offset_of!(RawSnapshotEntry, extra_data_size) == 36);

be_struct! {
    /// The extra data of a snapshot table entry as QEMU 10 writes it (a v3 entry has at least
    /// the first 16 bytes; a reader tolerates less).
    struct RawSnapshotExtra {
        vm_state_size_large: u64,
        disk_size: u64,
        icount: u64,
    }
}

const _: () = assert!(RawSnapshotExtra::LEN == 24);

/// Extra data size written by this crate: vm_state_size_large, disk_size, icount (QEMU 10).
const WRITTEN_EXTRA_BYTES: u32 = RawSnapshotExtra::LEN as u32;
/// Extra data bytes that hold `disk_size`.
const EXTRA_WITH_DISK_SIZE: usize = offset_of!(RawSnapshotExtra, icount);
/// icount value meaning "no instruction count recorded".
const ICOUNT_NONE: u64 = u64::MAX;

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
    let entry = RawSnapshotEntry {
        l1_table_offset,
        l1_size,
        id_str_size: id_len,
        name_size: name_len,
        date_sec: spec.date_sec,
        date_nsec: spec.date_nsec,
        vm_clock_nsec: 0,
        vm_state_size: 0, // a disk-only snapshot
        extra_data_size: WRITTEN_EXTRA_BYTES,
    };
    let extra = RawSnapshotExtra {
        vm_state_size_large: 0,
        disk_size,
        icount: ICOUNT_NONE,
    };
    out.extend_from_slice(&entry.encode());
    out.extend_from_slice(&extra.encode());
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
    let mut ids = HashSet::new();
    let mut names = HashSet::new();
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

/// Checks snapshots to add to a table that keeps the entries `kept` (their infos): at most
/// 65 536 entries in all, the new ones valid among themselves ([`validate_specs`]), and no new
/// id or name equal to a kept entry's id or name. Errors: [`Error::InvalidArgument`],
/// [`Error::Limit`].
pub(crate) fn validate_new_specs<'a>(
    specs: &[SnapshotSpec],
    kept: impl Iterator<Item = &'a SnapshotInfo> + Clone,
) -> Result<(), Error> {
    let total = specs.len() + kept.clone().count();
    if total > MAX_SNAPSHOTS as usize {
        return Err(Error::Limit(format!(
            "{total} snapshots exceed {MAX_SNAPSHOTS}"
        )));
    }
    validate_specs(specs)?;
    let taken: HashSet<&str> = kept
        .flat_map(|k| [k.id.as_str(), k.name.as_str()])
        .collect();
    if let Some(s) = specs
        .iter()
        .find(|s| taken.contains(s.id.as_str()) || taken.contains(s.name.as_str()))
    {
        return Err(Error::InvalidArgument(format!(
            "snapshot id {:?} or name {:?} equals a kept snapshot's id or name",
            s.id, s.name
        )));
    }
    Ok(())
}

impl RawSnapshotEntry {
    /// Bytes of the entry's variable part (extra data, id, name) for entry `index` at host byte
    /// `offset`. Errors: [`Error::Limit`] for extra data over 1024 bytes.
    pub(crate) fn var_len(&self, index: u32, offset: u64) -> Result<usize, Error> {
        let extra_len = self.extra_data_size;
        if extra_len > MAX_SNAPSHOT_EXTRA_BYTES {
            return Err(Error::Limit(format!("snapshot table entry {index} at {offset:#x} has {extra_len} bytes of extra data (> 1024)")));
        }
        Ok(extra_len as usize + usize::from(self.id_str_size) + usize::from(self.name_size))
    }
}

impl SnapshotInfo {
    /// The entry whose fixed part is `raw` and whose variable part ([`RawSnapshotEntry::var_len`]
    /// bytes: extra data, id, name) is `var`. Short extra data leaves `disk_size` and `icount`
    /// out.
    pub(crate) fn decode(raw: &RawSnapshotEntry, var: &[u8]) -> SnapshotInfo {
        let (extra, strings) = var.split_at(raw.extra_data_size as usize);
        let (id, name) = strings.split_at(usize::from(raw.id_str_size));
        let mut known = [0u8; RawSnapshotExtra::LEN];
        let n = extra.len().min(known.len());
        known[..n].copy_from_slice(&extra[..n]);
        let known = RawSnapshotExtra::decode(&known);
        SnapshotInfo {
            id: String::from_utf8_lossy(id).into_owned(),
            name: String::from_utf8_lossy(name).into_owned(),
            date_sec: raw.date_sec,
            date_nsec: raw.date_nsec,
            vm_clock_nsec: raw.vm_clock_nsec,
            l1_table_offset: raw.l1_table_offset,
            l1_size: raw.l1_size,
            disk_size: (extra.len() >= EXTRA_WITH_DISK_SIZE).then_some(known.disk_size),
            icount: (extra.len() >= RawSnapshotExtra::LEN)
                .then_some(known.icount)
                .filter(|&v| v != ICOUNT_NONE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: &str, name: &str) -> SnapshotSpec {
        SnapshotSpec {
            state: StateId::from_index(0),
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
