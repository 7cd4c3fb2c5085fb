//! The first run of an apply up to the first write to the target: open the delta and the
//! target, check that the target holds FROM (identity and fingerprint first; the digest of
//! the replaced blocks during the comparison, before the patch is completed), compare, and
//! write the patch (and the undo file) — or, for a dry run, only report.

use super::compare::{Pass, Written};
use super::delta::{Delta, ToHashes};
use super::report::{self, Report};
use super::states::{self, FromDigest, States};
use crate::delta_record::DeltaRecord;
use crate::patching::Ready;
use crate::patching::{
    open_target, read_target_sb, refuse_dirty_journal, Command, PatchFiles, PatchHeader, RunSink,
    Target, FLAG_DISCARD_ZEROS,
};
use crate::plan::{ApplySource, PatchStart};
use anyhow::{bail, Result};
use ext::{Filesystem, OpenOptions};

/// Feeds the runs that differ to the report's counts and, when writing, to the patch files.
struct Outputs {
    written: Written,
    files: Option<PatchFiles>,
    block_size: usize,
    sb_block: u64,
}

impl RunSink for Outputs {
    fn run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()> {
        self.written.add(first, new, self.block_size, self.sb_block);
        if let Some(f) = &mut self.files {
            f.run(first, old, new)?;
        }
        Ok(())
    }
}

/// Everything before the first write to the target. Returns the report, and the patch and
/// target ready to drive unless it was a dry run.
///
/// # Errors
/// Refusals (nothing written): an existing patch, a delta without a record (unless
/// `--force`) or corrupt, a target that does not hold FROM; I/O errors.
pub fn prepare(s: &PatchStart<ApplySource>) -> Result<(Report, Option<Ready>)> {
    if let Some(p) = s.patch.as_ref().filter(|p| p.exists() && !s.dry_run) {
        bail!(
            "{} exists: it may be needed to resume or undo an earlier apply or rollback; remove it or choose another name",
            p.display()
        );
    }
    let delta = super::stdin::open(&s.source.delta, s.dry_run)?;
    let record = record_of(&delta, s.force)?;
    let t = open_target(&s.target, s.offset, s.dry_run)?;
    let tsb = read_target_sb(&t)?;
    refuse_dirty_journal(&t, &tsb, Command::Apply, s.force, s.dry_run)?;
    check_sizes(&delta, &t, &tsb, record.as_ref())?;
    let st = States::of(record, &delta, &t, &tsb)?;
    let (mut rep, files) = compare(s, &st, &delta, &t, &tsb)?;
    let (Some(files), Some(patch)) = (files, s.patch.clone()) else {
        return Ok((rep, None));
    };
    let header = header(s, &delta, &t, &tsb, rep.label())?;
    let undo_line = files.finish(header, Command::Apply, t.path())?;
    rep.undo = s.undo_file.clone().zip(undo_line);
    rep.patch = Some(patch.clone());
    Ok((rep, Some(Ready { patch, target: t })))
}

/// The pass over the replaced blocks: the report, and the patch files (unless a dry run)
/// holding every differing run. Refuses when the replaced blocks do not hold FROM's bytes.
fn compare(
    s: &PatchStart<ApplySource>,
    st: &States<'_>,
    delta: &Delta,
    t: &Target,
    tsb: &ext::Superblock,
) -> Result<(Report, Option<PatchFiles>)> {
    let (bs, sb_block) = (u64::from(tsb.block_size), u64::from(tsb.s_first_data_block));
    let files = match (&s.patch, s.dry_run) {
        (Some(p), false) => Some(PatchFiles::create(
            p,
            s.undo_file.as_deref(),
            tsb.block_size,
            sb_block,
            t.offset(),
        )?),
        _ => None,
    };
    let mut out = Outputs {
        written: Written::default(),
        files,
        block_size: bs as usize,
        sb_block,
    };
    let pass = Pass {
        delta,
        target: t,
        block_size: bs,
        sb_block,
        replaced: &st.replaced,
        mask: st.mask.as_deref(),
    };
    let mut digest = st.from_set.as_ref().map(FromDigest::new);
    let mut to = ToHashes::default();
    let stats = pass.run(digest.as_mut(), Some(&mut to), &mut out)?;
    delta.finish_stream()?;
    if let Some(r) = &st.record {
        delta.check_to_digest(r, to)?;
    }
    if let (Some(d), Some(r)) = (digest, &st.record) {
        d.check(r, t, delta)?;
    }
    let changed = out.written.all();
    let from_fs = Filesystem::open(states::target_view(t)?, &OpenOptions::default()).ok();
    let patched = patched_to(delta, st, t, out.files.as_ref())?;
    let to_files = match &patched {
        Some(fs) => report::files(Some(fs), from_fs.as_ref(), &changed),
        None => report::files(st.to_fs.as_ref(), from_fs.as_ref(), &changed),
    };
    let rep = Report {
        delta: s.source.delta.clone(),
        target: s.target.clone(),
        record: st.record.clone(),
        cluster_size: delta.cluster,
        replaced_clusters: delta.replaced_clusters(),
        zero_clusters: delta.zero_clusters(),
        block_size: bs,
        stats,
        discard: s.source.discard,
        masked: st.mask.is_some(),
        classes: report::classes(st.from_set.as_ref(), &changed),
        files: to_files,
        written: out.written,
        patch: None,
        undo: None,
    };
    Ok((rep, out.files))
}

/// TO of a streamed delta, read back from the target with the patch laid over it, after
/// checking its fingerprint against the record (the file path checks it before the pass).
///
/// # Errors
/// TO's superblock and group descriptors are not the record's (a corrupt delta).
fn patched_to<'a>(
    delta: &Delta,
    st: &States<'_>,
    t: &Target,
    files: Option<&'a PatchFiles>,
) -> Result<Option<Filesystem<states::PatchedTarget<'a>>>> {
    let (true, Some(r), Some(files)) = (delta.is_streamed(), &st.record, files) else {
        return Ok(None);
    };
    let view = states::PatchedTarget {
        target: states::target_view(t)?,
        files,
    };
    Ok(Some(states::to_filesystem(r, view, &delta.path)?))
}

/// The delta's record; without one, refused unless `force`. A record must agree with the
/// delta's own tables.
fn record_of(d: &Delta, force: bool) -> Result<Option<DeltaRecord>> {
    let Some(r) = d.record.clone() else {
        if force {
            return Ok(None);
        }
        bail!(
            "{} has no delta record (it was not made by `e2image-rs -x FROM..TO`, or its header extension was lost), so nothing says which state it applies to; --force applies it anyway (unallocated clusters keep TARGET's bytes, allocated ones are written, zero ones discarded) without checking that TARGET holds FROM",
            d.path.display()
        );
    };
    let corrupt = |what: String| anyhow::anyhow!("delta {} is corrupt: {what}", d.path.display());
    if r.replaced_clusters != d.replaced_clusters() {
        return Err(corrupt(format!(
            "its tables replace {} clusters, its record says {}",
            d.replaced_clusters(),
            r.replaced_clusters
        )));
    }
    let fs_bytes = r.blocks_count.checked_mul(u64::from(r.block_size));
    if fs_bytes != Some(d.size) {
        return Err(corrupt(format!(
            "its disk is {}, its record names a filesystem of {} {}-byte blocks",
            crate::text::size(d.size),
            r.blocks_count,
            r.block_size
        )));
    }
    Ok(Some(r))
}

/// The delta must lie inside the target's filesystem, and the target hold all of it.
fn check_sizes(
    d: &Delta,
    t: &Target,
    tsb: &ext::Superblock,
    r: Option<&DeltaRecord>,
) -> Result<()> {
    use crate::text::size;
    let fs = tsb.size_bytes();
    if r.is_none() && d.size > fs {
        bail!(
            "delta {} is {}, larger than the filesystem of {} ({})",
            d.path.display(),
            size(d.size),
            t.path().display(),
            size(fs)
        );
    }
    if t.size() < fs {
        bail!(
            "{} is {}, smaller than its filesystem ({})",
            t.path().display(),
            size(t.size()),
            size(fs)
        );
    }
    Ok(())
}

/// The patch header: the filesystem's identity and the delta's (label, path, first cluster).
fn header(
    s: &PatchStart<ApplySource>,
    d: &Delta,
    t: &Target,
    tsb: &ext::Superblock,
    label: String,
) -> Result<PatchHeader> {
    Ok(PatchHeader {
        block_size: tsb.block_size,
        flags: if s.source.discard {
            FLAG_DISCARD_ZEROS
        } else {
            0
        },
        fs_uuid: tsb.s_uuid,
        s_blocks_count: tsb.s_blocks_count,
        target_size: t.size(),
        sb_block: u64::from(tsb.s_first_data_block),
        image_size: d.image_size(),
        image_sha256: d.first_cluster_sha256()?,
        state_label: format!("delta {label}"),
        image_path: match d.path.as_os_str() == crate::qcow_stdin::STDIN {
            true => crate::qcow_stdin::STDIN.to_string(),
            false => std::path::absolute(&d.path)
                .unwrap_or_else(|_| d.path.clone())
                .display()
                .to_string(),
        },
        fs_offset: t.offset(),
        ..PatchHeader::default()
    })
}
