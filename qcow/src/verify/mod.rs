//! [`verify`]: an image checked as `qemu-img check` checks it (every reference counted and
//! compared with the refcounts, tables bounded), then, when it has a current cluster checksum
//! table (`format/checksums.rs`), every cluster with a refcount read once in host order and
//! compared with its CRC-32C; the bad ones are named by what uses them (`walk.rs`).
//!
//! Design: structure first, reusing the editor's census (the same counting the editor trusts
//! before it changes anything); its first disagreement is reported, not repaired. The content
//! pass reads runs of consecutive refcounted clusters in reads of at most [`READ_BYTES`], so
//! an image is read front to back once. Naming reads the L1 and L2 tables of every state again,
//! only when some cluster is bad. Cost: one read of every allocated byte, plus the census.

mod walk;

use std::fs::File;

use crate::editor::{check_refcounts, load_refcounts};
use crate::error::Error;
use crate::format::checksums::{
    crc32c, decode_table, ChecksumExtension, AUTOCLEAR_CLUSTER_CHECKSUMS, EXT_CLUSTER_CHECKSUMS,
};
use crate::format::refcount::DEFAULT_REFCOUNT_ORDER;
use crate::geometry::Version;
use crate::reader::{Layer, Reader};

/// Bytes read at a time by the content pass.
const READ_BYTES: u64 = 4 << 20;

/// What a host cluster holds, as the image's tables say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterKind {
    /// Guest data (plain or compressed), mapped by an L2 table.
    Data,
    /// An L2 table.
    L2,
    /// A cluster of an L1 table (the active one or a snapshot's).
    L1,
    /// A refcount block.
    RefcountBlock,
    /// A cluster of the refcount table.
    RefcountTable,
    /// A cluster of the snapshot table.
    SnapshotTable,
    /// The cluster checksum table itself (its own checksum failed).
    Table,
    /// No table references it (a leak).
    Unreferenced,
}

impl ClusterKind {
    /// The kind's name in reports: `data`, `l2`, `l1`, `refcount_block`, `refcount_table`,
    /// `snapshot_table`, `table`, `unreferenced`.
    pub fn name(self) -> &'static str {
        match self {
            ClusterKind::Data => "data",
            ClusterKind::L2 => "l2",
            ClusterKind::L1 => "l1",
            ClusterKind::RefcountBlock => "refcount_block",
            ClusterKind::RefcountTable => "refcount_table",
            ClusterKind::SnapshotTable => "snapshot_table",
            ClusterKind::Table => "table",
            ClusterKind::Unreferenced => "unreferenced",
        }
    }
}

/// One use of a bad cluster by a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClusterUse {
    /// The state whose tables map it.
    pub layer: Layer,
    /// Guest byte offset it holds (data), or the first one it maps (L2 table); `None` for an
    /// L1 table's cluster.
    pub guest_offset: Option<u64>,
}

/// A cluster whose bytes do not match its checksum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadCluster {
    /// Host byte offset of the cluster.
    pub host_offset: u64,
    /// What it holds.
    pub kind: ClusterKind,
    /// The states using it (for data and L2 tables, with the guest offset).
    pub uses: Vec<ClusterUse>,
}

/// The state of an image's cluster checksum table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableStatus {
    /// Present and current (auto-clear bit set): the content pass ran.
    Current,
    /// No table (an image QEMU wrote, a v2 image, or one written before tables existed).
    Absent,
    /// A table whose auto-clear bit was cleared: another program opened the image read-write.
    Stale,
    /// The table itself is damaged (the reason): nothing can be checked against it.
    Damaged(String),
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    /// Clusters read and compared with their checksum.
    pub clusters_checked: u64,
    /// Clusters whose bytes do not match, in host order.
    pub bad: Vec<BadCluster>,
    /// Structure errors (refcounts that disagree with references, tables out of bounds).
    pub structure_errors: Vec<String>,
    /// Leaked clusters: refcount above the references counted.
    pub leaks: Vec<String>,
    /// The checksum table's state.
    pub table: TableStatus,
}

/// Checks the image in `file` (opened read-only): structure, then content against the
/// cluster checksum table if it has a current one. Backing files are not opened.
///
/// Errors: [`Error::Io`] when the file cannot be read, and what [`Reader::open_with_backing`]
/// refuses (the header or its tables cannot be located); damage found after that is in the
/// report, not an error.
pub fn verify(file: File) -> Result<VerifyReport, Error> {
    let r = Reader::open_with_backing(file)?;
    let mut report = VerifyReport {
        clusters_checked: 0,
        bad: Vec::new(),
        structure_errors: Vec::new(),
        leaks: Vec::new(),
        table: table_status(&r),
    };
    if r.header().refcount_order != DEFAULT_REFCOUNT_ORDER {
        report.structure_errors.push(format!(
            "refcount_order {} is not checked (only 4, 16-bit refcounts)",
            r.header().refcount_order
        ));
        return Ok(report);
    }
    let (refblocks, blocks) = match load_refcounts(&r) {
        Ok(x) => x,
        Err(Error::Corrupt { what, offset }) => {
            report
                .structure_errors
                .push(format!("{what} (at byte {offset:#x})"));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    match check_refcounts(&r, &refblocks, &blocks) {
        Ok(_) => {}
        Err(Error::Corrupt { what, offset }) if what.contains("leaked") => {
            report.leaks.push(format!("{what} (at byte {offset:#x})"));
        }
        Err(Error::Corrupt { what, offset }) => {
            report
                .structure_errors
                .push(format!("{what} (at byte {offset:#x})"));
        }
        Err(e @ Error::Io { .. }) => return Err(e),
        Err(e) => report.structure_errors.push(e.to_string()),
    }
    if report.table == TableStatus::Current {
        check_content(&r, &blocks, &mut report)?;
    }
    if !report.bad.is_empty() {
        walk::name_clusters(&r, &refblocks, &mut report.bad)?;
    }
    Ok(report)
}

/// Whether `r` has a current table (not yet read: [`check_content`] reads it).
fn table_status(r: &Reader) -> TableStatus {
    let h = r.header();
    let Some(_) = r.header_extension(EXT_CLUSTER_CHECKSUMS) else {
        return TableStatus::Absent;
    };
    if h.version != Version::V3 || h.autoclear_features & AUTOCLEAR_CLUSTER_CHECKSUMS == 0 {
        return TableStatus::Stale;
    }
    TableStatus::Current
}

/// The content pass: every cluster with a stored refcount compared with its table entry.
fn check_content(
    r: &Reader,
    blocks: &[Option<Box<[u16]>>],
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let cb = r.header().cluster_bits;
    let data = r
        .header_extension(EXT_CLUSTER_CHECKSUMS)
        .unwrap_or_default();
    let ext = match ChecksumExtension::parse(data, cb, r.file_len()) {
        Ok(ext) => ext,
        Err(e) => {
            report.table = TableStatus::Damaged(e.to_string());
            return Ok(());
        }
    };
    let bytes = r.read_bytes(
        ext.table_offset,
        ext.table_bytes(),
        "cluster checksum table",
    )?;
    let sums = match decode_table(&bytes, &ext) {
        Ok(s) => s,
        Err(e) => {
            report.table = TableStatus::Damaged(e.to_string());
            report.bad.push(BadCluster {
                host_offset: ext.table_offset,
                kind: ClusterKind::Table,
                uses: Vec::new(),
            });
            return Ok(());
        }
    };
    let epb = 1usize << (cb - 1);
    let refcounted = |c: u64| {
        blocks
            .get((c as usize) / epb)
            .and_then(|b| b.as_ref())
            .is_some_and(|b| b[(c as usize) % epb] != 0)
    };
    let file_clusters = r.file_len().div_ceil(1u64 << cb);
    let mut c = 1;
    while c < file_clusters {
        if !refcounted(c) {
            c += 1;
            continue;
        }
        let max_run = (READ_BYTES >> cb).max(1);
        let mut n = 1;
        while n < max_run && c + n < file_clusters && refcounted(c + n) {
            n += 1;
        }
        check_run(r, &sums, c, n, report)?;
        c += n;
    }
    Ok(())
}

/// Compares clusters `first..first + n` with `sums`.
fn check_run(
    r: &Reader,
    sums: &[u32],
    first: u64,
    n: u64,
    report: &mut VerifyReport,
) -> Result<(), Error> {
    let cb = r.header().cluster_bits;
    let c = 1usize << cb;
    let mut buf = vec![0u8; (n as usize) << cb];
    let offset = first << cb;
    let len = (r.file_len() - offset).min(buf.len() as u64) as usize;
    buf[..len].copy_from_slice(&r.read_bytes(offset, len as u64, "a cluster")?);
    for (k, cluster) in buf.chunks_exact(c).enumerate() {
        let host = first + k as u64;
        report.clusters_checked += 1;
        let Some(&want) = sums.get(host as usize) else {
            report.structure_errors.push(format!(
                "host cluster {host} has a refcount but the checksum table covers only {} clusters",
                sums.len()
            ));
            continue;
        };
        if crc32c(cluster) != want {
            report.bad.push(BadCluster {
                host_offset: host << cb,
                kind: ClusterKind::Unreferenced,
                uses: Vec::new(),
            });
        }
    }
    Ok(())
}
