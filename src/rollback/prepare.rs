//! The first run of a rollback up to the first write to the target: open the image state and
//! the target, check they hold the same filesystem, compute the held blocks and the
//! conflicts, then write the patch (and the undo file) — or, for a dry run, only report.

use super::conflicts;
use super::diff;
use super::held::{self, Held};
use super::report;
use crate::patching::{
    identity_diffs, open_target, read_target_sb, refuse_dirty_journal, sha256, Command, PatchFiles,
    PatchHeader, RunSink, Target,
};
use crate::plan::{PatchStart, RollbackSource};
use crate::qcow_view::{choose_layer, QcowView};
use crate::record::ExportRecord;
use anyhow::{bail, Context, Result};
use ext::{Filesystem, OpenOptions, WalkOptions};
use qcow::{LayerReader, Reader};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Everything before the first write to the target: checks, plan, patch and undo file.
/// Returns what the report says, and the patch path and the opened target unless it was a
/// dry run.
pub(super) fn prepare(
    args: &PatchStart<RollbackSource>,
) -> Result<(report::Facts, Option<(PathBuf, Target)>)> {
    let (image, target) = (args.source.image.as_path(), args.target.as_path());
    if let Some(p) = args.patch.as_ref().filter(|p| p.exists() && !args.dry_run) {
        bail!(
            "{} exists: it may be needed to resume or undo an earlier rollback; remove it or choose another name",
            p.display()
        );
    }
    let reader = crate::qcow_view::open_image(image, true)?;
    let chosen = choose_layer(&reader, args.source.snapshot.as_deref())
        .with_context(|| image.display().to_string())?;
    let (layer_id, label) = (chosen.layer, chosen.label);
    let layer = reader
        .layer(layer_id)
        .context("cannot read the image state")?;
    let ours = crate::record::ExportRecord::of(&reader).is_some();
    let state = format!("{} ({label})", image.display());
    crate::qcow_view::check_state_size(&reader, &layer, chosen.size, &state, ours)?;
    let view = QcowView::new(&layer, chosen.size);
    let fs = Filesystem::open(view, &OpenOptions::default())
        .with_context(|| format!("{} ({label}) holds no readable filesystem", image.display()))?;
    let t = open_target(target, args.offset, args.dry_run)?;
    check_same_fs(&fs, &t, image, &label)?;
    let tsb = read_target_sb(&t)?;
    refuse_dirty_journal(&t, &tsb, Command::Rollback, args.force, args.dry_run)?;
    let walk = ext::walk(
        &fs,
        &WalkOptions {
            data: true,
            no_snapshot_files: false,
        },
    );
    for w in &walk.warnings {
        crate::sys::report::warning(&format!("[{label}] {w}"));
    }
    let held = held_of(&reader, &layer, &fs, &walk.blocks)?;
    let conflicts = conflicts::check(&fs, &walk.blocks, &held, &t)?;
    let plan = Plan {
        image,
        reader: &reader,
        layer: &layer,
        fs: &fs,
        walk: &walk.blocks,
        held: &held,
        target: &t,
        label: &label,
    };
    let (facts, patch_path) = report_or_write(&plan, &conflicts, args)?;
    Ok((facts, patch_path.map(|p| (p, t))))
}

/// The blocks the image state holds.
fn held_of(
    reader: &Reader,
    layer: &LayerReader<'_>,
    fs: &Filesystem<QcowView<'_>>,
    walk: &ext::BlockSet,
) -> Result<Held> {
    let sb = &fs.sb;
    let geo = held::Geometry {
        cluster_size: reader.cluster_size(),
        block_size: u64::from(sb.block_size),
        blocks_count: sb.s_blocks_count,
        v3: reader.header().version == qcow::Version::V3,
    };
    held::held_blocks(layer, geo, walk, ExportRecord::of(reader))
}

/// The dry run's report (no patch path), or the refusal for conflicts without `--force`, or
/// the patch written (its path) and its report.
fn report_or_write(
    plan: &Plan<'_>,
    conflicts: &conflicts::Conflicts,
    args: &PatchStart<RollbackSource>,
) -> Result<(report::Facts, Option<PathBuf>)> {
    if args.dry_run {
        let rep = plan.dry_run()?;
        return Ok((rep.facts(&plan.subject(), conflicts), None));
    }
    if !conflicts.is_empty() && !args.force {
        bail!("{}\n--force rolls back anyway", conflicts.render(10));
    }
    let patch_path = args.patch.clone().unwrap_or_default();
    let (rep, undo_line) = plan.write_patch(&patch_path, args.undo_file.as_deref())?;
    let mut facts = rep.facts(&plan.subject(), conflicts);
    facts.undo_line = args.undo_file.clone().zip(undo_line);
    Ok((facts, Some(patch_path)))
}

/// Refuses unless the target holds the image state's filesystem: same UUID, block size and
/// block count, and room for all of it.
fn check_same_fs<V: ext::BlockView>(
    fs: &Filesystem<V>,
    t: &Target,
    image: &Path,
    label: &str,
) -> Result<()> {
    let tsb = read_target_sb(t)?;
    let sb = &fs.sb;
    let diffs = identity_diffs(&tsb, &sb.s_uuid, sb.block_size, sb.s_blocks_count);
    if !diffs.is_empty() {
        bail!(
            "{} does not hold the filesystem of {} ({label}): {}",
            t.path().display(),
            image.display(),
            diffs.join(", ")
        );
    }
    if t.size() < sb.size_bytes() {
        bail!(
            "{} is {}, smaller than the filesystem ({})",
            t.path().display(),
            crate::text::size(t.size()),
            crate::text::size(sb.size_bytes())
        );
    }
    Ok(())
}

/// Everything the patch is made from.
pub(super) struct Plan<'a> {
    pub(super) image: &'a Path,
    pub(super) reader: &'a Reader,
    pub(super) layer: &'a LayerReader<'a>,
    pub(super) fs: &'a Filesystem<QcowView<'a>>,
    pub(super) walk: &'a ext::BlockSet,
    pub(super) held: &'a Held,
    pub(super) target: &'a Target,
    pub(super) label: &'a str,
}

/// Feeds differing runs to the report and, when writing, to the patch and undo file.
struct Outputs {
    report: report::Report,
    files: Option<PatchFiles>,
}

impl RunSink for Outputs {
    fn run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()> {
        self.report.add(first, old.len());
        if let Some(f) = &mut self.files {
            f.run(first, old, new)?;
        }
        Ok(())
    }
}

impl<'a> Plan<'a> {
    /// What the report is about.
    fn subject(&self) -> report::Subject<'a> {
        report::Subject {
            image: self.image,
            label: self.label,
            target: self.target.path(),
            held: self.held,
            walk: self.walk,
            reader: self.reader,
            fs: self.fs,
        }
    }

    fn sb_block(&self) -> u64 {
        u64::from(self.fs.sb.s_first_data_block)
    }

    fn diff(&self, out: &mut Outputs) -> Result<diff::DiffStats> {
        diff::diff(
            self.layer,
            self.target,
            self.held,
            self.fs.sb.block_size,
            self.sb_block(),
            out,
        )
    }

    /// Compares without writing anything.
    fn dry_run(&self) -> Result<report::Report> {
        let mut out = Outputs {
            report: report::Report::new(self.fs.sb.block_size),
            files: None,
        };
        out.report.stats = self.diff(&mut out)?;
        Ok(out.report)
    }

    /// Writes the patch (and the undo file) under temporary names, flushes and renames them
    /// (never over an existing file). Returns the report and the line about the undo file.
    fn write_patch(
        &self,
        path: &Path,
        undo_file: Option<&Path>,
    ) -> Result<(report::Report, Option<String>)> {
        let bs = self.fs.sb.block_size;
        let mut out = Outputs {
            report: report::Report::new(bs),
            files: Some(PatchFiles::create(
                path,
                undo_file,
                bs,
                self.sb_block(),
                self.target.offset(),
            )?),
        };
        out.report.stats = self.diff(&mut out)?;
        let files = out.files.take().context("no patch writer")?;
        let undo_line = files.finish(self.header()?, Command::Rollback, self.target.path())?;
        Ok((out.report, undo_line))
    }

    fn header(&self) -> Result<PatchHeader> {
        let sb = &self.fs.sb;
        let mut first = vec![0u8; self.reader.cluster_size().min(self.reader.file_len()) as usize];
        File::open(self.image)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut first, 0))
            .with_context(|| format!("cannot read {}", self.image.display()))?;
        Ok(PatchHeader {
            block_size: sb.block_size,
            fs_uuid: sb.s_uuid,
            s_blocks_count: sb.s_blocks_count,
            target_size: self.target.size(),
            sb_block: self.sb_block(),
            image_size: self.reader.file_len(),
            image_sha256: sha256(&first),
            state_label: self.label.to_string(),
            image_path: absolute(self.image).display().to_string(),
            fs_offset: self.target.offset(),
            ..PatchHeader::default()
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
