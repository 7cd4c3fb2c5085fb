//! The two states a delta goes between, as one run sees them: FROM is the target (checked
//! against the delta record: identity, fingerprint, and through [`FromDigest`] the bytes of
//! the blocks the delta replaces), TO is the target with the delta laid over it
//! ([`Overlay`]; its fingerprint is checked against the record too, which catches a corrupt
//! delta). Where a cluster spans several blocks, only the blocks of FROM's or TO's copy set
//! in it are changed: the others (a file's data, in a metadata-only delta) belong to neither
//! state's copy and read as zeros in the delta.

use super::delta::Delta;
use crate::delta_record::{fingerprint, DeltaFlags, DeltaRecord};
use crate::patching::{identity_diffs, Target};
use crate::ranges::push;
use anyhow::{bail, Context, Result};
use ext::{BlockSet, BlockView, FileView, Filesystem, OpenOptions, WalkOptions};
use sha2::{Digest, Sha256};
use std::io;
use std::ops::Range;
use std::path::Path;

/// What one run knows of FROM and TO.
pub struct States<'a> {
    /// The delta record (`None`: a forced delta without one).
    pub record: Option<DeltaRecord>,
    /// The blocks the replaced clusters touch.
    pub replaced: Vec<Range<u64>>,
    /// FROM's copy set (walked on the target), with a record.
    pub from_set: Option<BlockSet>,
    /// TO's filesystem through the overlay, when it opens (always with a record).
    pub to_fs: Option<Filesystem<Overlay<'a>>>,
    /// The blocks the delta may change, where its clusters span several blocks.
    pub mask: Option<Vec<Range<u64>>>,
}

impl<'a> States<'a> {
    /// Checks the target against the record (identity, FROM's fingerprint; TO's through the
    /// overlay) and walks what the comparison needs.
    ///
    /// # Errors
    /// The target does not hold FROM; the delta gives a TO that is not its record's.
    pub fn of(
        record: Option<DeltaRecord>,
        delta: &'a Delta,
        t: &Target,
        tsb: &ext::Superblock,
    ) -> Result<States<'a>> {
        let bs = u64::from(tsb.block_size);
        let overlay = Overlay::new(t, delta)?;
        let Some(r) = record else {
            return Ok(States {
                record: None,
                replaced: delta.blocks(bs),
                from_set: None,
                to_fs: Filesystem::open(overlay, &OpenOptions::default()).ok(),
                mask: None,
            });
        };
        check_identity(&r, tsb, t, delta)?;
        let from = from_copy_set(&r, t, delta)?;
        let replaced = delta.blocks(bs);
        if delta.is_streamed() {
            // TO is read back from the patch after the pass (`patched_to`); a streamed delta's
            // clusters are never larger than a block (`stdin.rs`), so no mask is needed.
            return Ok(States {
                record: Some(r),
                replaced,
                from_set: Some(from),
                to_fs: None,
                mask: None,
            });
        }
        let to_fs = to_filesystem(&r, overlay, &delta.path)?;
        let mask = (delta.cluster > bs).then(|| mask(&replaced, &from, &to_fs, &r));
        Ok(States {
            record: Some(r),
            replaced,
            from_set: Some(from),
            to_fs: Some(to_fs),
            mask,
        })
    }
}

/// The target with the patch being written laid over it: state TO, read back after the pass
/// of a streamed delta (whose bytes cannot be read again).
pub struct PatchedTarget<'a> {
    /// The target.
    pub target: FileView,
    /// The patch files, every run written.
    pub files: &'a crate::patching::PatchFiles,
}

impl BlockView for PatchedTarget<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.target.read_at(offset, buf)?;
        self.files.read_new(offset, buf).map_err(io::Error::other)
    }

    fn size(&self) -> u64 {
        self.target.size()
    }
}

/// The target with the delta laid over it: state TO wherever the delta replaces clusters.
pub struct Overlay<'a> {
    target: FileView,
    delta: &'a Delta,
}

impl<'a> Overlay<'a> {
    /// The overlay of `delta` on `target`.
    ///
    /// # Errors
    /// The target's file cannot be duplicated.
    pub fn new(target: &Target, delta: &'a Delta) -> Result<Overlay<'a>> {
        Ok(Overlay {
            target: target_view(target)?,
            delta,
        })
    }
}

impl BlockView for Overlay<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.target.read_at(offset, buf)?;
        self.delta.overlay(offset, buf).map_err(io::Error::other)
    }

    fn size(&self) -> u64 {
        self.target.size()
    }
}

/// A read-only view of the target for the filesystem reader.
///
/// # Errors
/// The target's file cannot be duplicated.
pub fn target_view(t: &Target) -> Result<FileView> {
    t.view()
}

/// The walk options a record's copy sets were made with.
fn walk_options(r: &DeltaRecord) -> WalkOptions {
    WalkOptions {
        data: r.has(DeltaFlags::FILE_DATA),
        no_snapshot_files: !r.has(DeltaFlags::SNAPSHOT_FILES),
    }
}

/// Walks `fs` as the record says; warnings are printed with `who`.
fn copy_set<V: BlockView>(fs: &Filesystem<V>, r: &DeltaRecord, who: &str) -> BlockSet {
    let walk = ext::walk(fs, &walk_options(r));
    for w in &walk.warnings {
        crate::sys::report::warning(&format!("[{who}] {w}"));
    }
    walk.blocks
}

/// Refuses a target whose filesystem is not the record's: UUID, block size, block count.
///
/// # Errors
/// The differences, named.
fn check_identity(r: &DeltaRecord, tsb: &ext::Superblock, t: &Target, d: &Delta) -> Result<()> {
    let diffs = identity_diffs(tsb, &r.fs_uuid, r.block_size, r.blocks_count);
    if !diffs.is_empty() {
        bail!(
            "{} does not hold the filesystem of delta {} ({}..{}): {}",
            t.path().display(),
            d.path.display(),
            r.from_name,
            r.to_name,
            diffs.join(", ")
        );
    }
    Ok(())
}

/// FROM's copy set on the target, after checking the target's fingerprint is FROM's.
///
/// # Errors
/// The target's filesystem cannot be opened, or is not in state FROM.
fn from_copy_set(r: &DeltaRecord, t: &Target, d: &Delta) -> Result<BlockSet> {
    let fs = Filesystem::open(target_view(t)?, &OpenOptions::default())
        .with_context(|| format!("{}: cannot open the filesystem", t.path().display()))?;
    let held = fingerprint(&fs)?;
    if held == r.to_fingerprint && held != r.from_fingerprint {
        bail!(
            "{} already holds TO ({}) of delta {}: its superblock and group descriptors are TO's; nothing to apply",
            t.path().display(),
            r.to_name,
            d.path.display()
        );
    }
    if held != r.from_fingerprint {
        bail!(
            "{} does not hold FROM ({}) of delta {}: its superblock or group descriptors differ from FROM's (the filesystem was changed, mounted or checked since, or holds another state)",
            t.path().display(),
            r.from_name,
            d.path.display()
        );
    }
    Ok(copy_set(&fs, r, "TARGET"))
}

/// TO's filesystem through the overlay, after checking its fingerprint against the record.
///
/// # Errors
/// TO's superblock or group descriptors cannot be read or are not the record's (a corrupt
/// delta).
pub fn to_filesystem<V: BlockView>(r: &DeltaRecord, o: V, path: &Path) -> Result<Filesystem<V>> {
    let corrupt = || format!("delta {} is corrupt", path.display());
    let fs = Filesystem::open(o, &OpenOptions::default()).with_context(|| {
        format!(
            "{}: TO ({}) holds no readable filesystem",
            corrupt(),
            r.to_name
        )
    })?;
    if fingerprint(&fs)? != r.to_fingerprint {
        bail!(
            "{}: the superblock and group descriptors it gives for TO ({}) do not match its record",
            corrupt(),
            r.to_name
        );
    }
    Ok(fs)
}

/// The blocks of `replaced` the delta may change when its clusters span several blocks: those
/// in FROM's or TO's copy set (TO's walked through the overlay).
fn mask<V: BlockView>(
    replaced: &[Range<u64>],
    from: &BlockSet,
    to_fs: &Filesystem<V>,
    r: &DeltaRecord,
) -> Vec<Range<u64>> {
    let to = copy_set(to_fs, r, "TO");
    let mut parts = Vec::new();
    for set in [from, &to] {
        for x in replaced {
            let ext = set.extents();
            let i = ext.partition_point(|e| e.end() <= x.start);
            for e in ext[i..].iter().take_while(|e| e.start < x.end) {
                parts.push(e.start.max(x.start)..e.end().min(x.end));
            }
        }
    }
    parts.sort_by_key(|p| p.start);
    let mut out = Vec::with_capacity(parts.len());
    for p in parts {
        push(&mut out, p);
    }
    out
}

/// The digest of FROM's bytes on the replaced clusters (`crate::delta_record`'s definition),
/// fed the target's blocks in increasing order.
pub struct FromDigest<'a> {
    set: &'a BlockSet,
    hash: Sha256,
}

impl<'a> FromDigest<'a> {
    /// A digest over the blocks of FROM's copy set `set`.
    pub fn new(set: &'a BlockSet) -> FromDigest<'a> {
        FromDigest {
            set,
            hash: Sha256::new(),
        }
    }

    /// Feeds the target's blocks from `first` (`bs` bytes each, in `old`): each block of
    /// FROM's copy set once per replaced cluster it lies in (a block in several clusters
    /// smaller than itself is hashed once for each, as the definition goes cluster by
    /// cluster).
    pub fn feed(&mut self, first: u64, old: &[u8], bs: usize, d: &Delta) {
        for (i, block) in old.chunks(bs).enumerate() {
            let b = first + i as u64;
            if !self.set.contains(b) {
                continue;
            }
            let start = b * bs as u64;
            for _ in 0..d.clusters_touching(start, start + bs as u64) {
                self.hash.update(b.to_be_bytes());
                self.hash.update(block);
            }
        }
    }

    /// Refuses unless the digest is the record's.
    ///
    /// # Errors
    /// The target does not hold FROM's bytes on the replaced blocks.
    pub fn check(self, r: &DeltaRecord, t: &Target, d: &Delta) -> Result<()> {
        let got: [u8; 32] = self.hash.finalize().into();
        if got != r.from_digest {
            bail!(
                "{} does not hold FROM ({}) of delta {}: blocks the delta replaces differ from FROM's (they were written since FROM, behind the filesystem's back or by another tool)",
                t.path().display(),
                r.from_name,
                d.path.display()
            );
        }
        Ok(())
    }
}
