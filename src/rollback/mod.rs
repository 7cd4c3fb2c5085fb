//! `e2image-rs rollback`: writes one state of a QCOW2 image back onto the device (or image
//! file) holding the same filesystem, atomically in effect, through a rollback patch file.
//!
//! Pipeline: open the image state and the target (refused when mounted; block devices opened
//! exclusively) → check they hold the same filesystem (UUID, block size, block count) →
//! compute the blocks the state holds (`held`) → for metadata-only images, refuse when the
//! restored files would read data blocks the target now uses otherwise (`conflicts`) →
//! compare held blocks with the target and stream the differing runs into the patch and the
//! optional e2undo file (`diff`) → flush and rename both → drive the target to the new side
//! (`engine`). `--resume` and `--undo` reopen a patch, verify every checksum in it, and drive
//! the target to the new or the old side. The patch format is in `patch` and README.md.

mod conflicts;
mod diff;
mod engine;
mod held;
mod patch;
mod report;
mod target;

use crate::cli::RollbackArgs;
use crate::e2undo::UndoFileWriter;
use crate::export_record::ExportRecord;
use crate::qcow_view::QcowView;
use crate::states::uuid;
use crate::summary::{EXIT_OK, EXIT_USAGE};
use crate::sys::identity::same_name_or_target;
use crate::sys::output::TempOutput;
use anyhow::{bail, Context, Result};
use diff::RunSink;
use engine::{drive, DriveError, Faults, Goal};
use ext::{Filesystem, OpenOptions, WalkOptions};
use held::Held;
use patch::{Patch, PatchHeader, PatchState, PatchWriter};
use qcow::{Layer, Reader};
use std::fs::File;
use std::path::{Path, PathBuf};
use target::{not_clean, part_way_patch, Target, SUPERBLOCK_BYTES, SUPERBLOCK_OFFSET};

/// Runs the `rollback` subcommand and returns the exit status (0 done, 1 refused or failed —
/// the message says where the target stands —, 2 usage error); prints its own messages.
pub fn run(args: &RollbackArgs) -> i32 {
    let r = match (&args.resume, &args.undo) {
        (Some(p), None) => finish(p, one_target(args), Goal::New),
        (None, Some(p)) => finish(p, one_target(args), Goal::Old),
        _ => apply(args),
    };
    match r {
        Ok(()) => EXIT_OK,
        Err(Failure::Usage(m)) => {
            eprintln!("e2image-rs: error: {m}");
            eprintln!("usage: e2image-rs rollback IMAGE TARGET [--snapshot ID|NAME] --patch PATCH [--undo-file FILE] [--dry-run] [--force]");
            eprintln!("       e2image-rs rollback --resume PATCH TARGET | --undo PATCH TARGET");
            EXIT_USAGE
        }
        Err(Failure::Refused(e)) => crate::fail(&e, false),
    }
}

/// Refuses (usage error) when two of the named paths are the same file or device, or the same
/// name for files still to be created: a patch or undo file written over the target or the
/// image would destroy it.
fn check_distinct(named: &[(&str, &Path)]) -> Result<(), Failure> {
    for (i, (ra, a)) in named.iter().enumerate() {
        for (rb, b) in &named[i + 1..] {
            if same_name_or_target(a, b) {
                return Err(Failure::Usage(format!(
                    "{ra} {} and {rb} {} are the same file or device; nothing was written",
                    a.display(),
                    b.display()
                )));
            }
        }
    }
    Ok(())
}

enum Failure {
    Usage(String),
    Refused(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        Failure::Refused(e)
    }
}

fn one_target(args: &RollbackArgs) -> Result<&Path, Failure> {
    match args.paths.as_slice() {
        [t] if args.snapshot.is_none() && args.patch.is_none() && args.undo_file.is_none() => Ok(t),
        [_] => Err(Failure::Usage(
            "--resume and --undo take only the patch and the target".into(),
        )),
        _ => Err(Failure::Usage(
            "--resume PATCH and --undo PATCH take one TARGET".into(),
        )),
    }
}

/// `--resume` / `--undo`: verify the patch, then drive the target to `goal`.
fn finish(patch: &Path, target: Result<&Path, Failure>, goal: Goal) -> Result<(), Failure> {
    let target = target?;
    check_distinct(&[("the patch", patch), ("TARGET", target)])?;
    let t = Target::open(target, true).map_err(|e| then(e, "nothing was written"))?;
    let mut p = Patch::open(patch, true).map_err(|e| unusable_patch(e, patch, &t))?;
    check_patch_target(&p, &t)?;
    let before = p.state();
    let d = drive(&mut p, &t, goal, &mut Faults::from_env())
        .map_err(|e| stated(e, patch, &t, before))?;
    let (tp, pp) = (t.path().display(), patch.display());
    let side = match goal {
        Goal::New => "the rolled-back state",
        Goal::Old => "its state from before the rollback",
    };
    if d.already {
        println!(
            "{tp} already holds {side}; nothing was written (patch {pp} is {})",
            p.state().name()
        );
    } else {
        println!(
            "{tp} holds {side}: {} blocks ({} bytes) written; patch {pp} is {}",
            d.blocks_written,
            d.bytes_written,
            p.state().name()
        );
    }
    Ok(())
}

/// A patch that cannot be opened or fails its checksums: says where the target stands and
/// what can still bring it back.
fn unusable_patch(e: anyhow::Error, patch: &Path, t: &Target) -> Failure {
    let tp = t.path().display();
    let part_way = read_target_sb_raw(t)
        .ok()
        .and_then(|sb| part_way_patch(&sb));
    let state = match part_way {
        Some(by) => format!(
            "nothing was written; {tp} is part-way through the rollback of patch {by}, and {pp} cannot finish or rewind it: restore the patch from a copy and run `e2image-rs rollback --resume` or `--undo` again, or rewind with the undo file if one was written (`e2undo FILE {tp}`), else repair with `e2fsck -f {tp}`",
            pp = patch.display()
        ),
        None => format!("nothing was written; {tp} is as it was"),
    };
    Failure::Refused(then(e, &state))
}

/// The error `e` followed by what it means for the target: "problem; consequence".
fn then(e: anyhow::Error, consequence: &str) -> anyhow::Error {
    anyhow::anyhow!("{}; {consequence}", crate::error_text(&e))
}

/// The target's superblock must name the patch's filesystem (it may hold either side, or the
/// not-clean variant, so only the identity fields are compared).
fn check_patch_target(p: &Patch, t: &Target) -> Result<()> {
    let sb = read_target_sb(t)?;
    let h = &p.header;
    if sb.s_uuid != h.fs_uuid || sb.block_size != h.block_size {
        bail!(
            "{} holds filesystem {} ({}-byte blocks), the patch is for {} ({}-byte blocks); nothing was written",
            t.path().display(),
            uuid(&sb.s_uuid),
            sb.block_size,
            uuid(&h.fs_uuid),
            h.block_size
        );
    }
    Ok(())
}

/// Turns a drive error into a message stating where the target stands and what to do next;
/// `before` is the patch's state when this run began.
fn stated(e: DriveError, patch: &Path, t: &Target, before: PatchState) -> Failure {
    let (p, tp) = (patch.display(), t.path().display());
    let state = if e.touched {
        format!("{tp} is part-way: finish with `e2image-rs rollback --resume {p} {tp}`, or rewind with `e2image-rs rollback --undo {p} {tp}`")
    } else if before == PatchState::Prepared {
        format!("nothing was written; {tp} is untouched")
    } else if matches!(before, PatchState::Applying | PatchState::Undoing) {
        format!("this run wrote nothing; {tp} is part-way, as the interrupted run of {p} left it, and something else has written to it since, so neither --resume nor --undo can finish exactly: rewind with the undo file if one was written (`e2undo FILE {tp}`), else repair with `e2fsck -f {tp}`")
    } else {
        format!(
            "this run wrote nothing; {tp} is as the earlier run of {p} left it (patch {})",
            before.name()
        )
    };
    Failure::Refused(then(e.error, &state))
}

/// The target's primary superblock bytes.
fn read_target_sb_raw(t: &Target) -> Result<Vec<u8>> {
    let mut raw = vec![0u8; SUPERBLOCK_BYTES];
    t.read_at(SUPERBLOCK_OFFSET, &mut raw)?;
    Ok(raw)
}

fn read_target_sb(t: &Target) -> Result<ext::Superblock> {
    let raw = read_target_sb_raw(t)?;
    ext::Superblock::parse(&raw).with_context(|| {
        format!(
            "{}: no valid ext2/3/4 superblock at byte {SUPERBLOCK_OFFSET}; nothing was written",
            t.path().display()
        )
    })
}

/// The first run: plan, write the patch (and undo file), then drive the target.
fn apply(args: &RollbackArgs) -> Result<(), Failure> {
    let [image, target] = args.paths.as_slice() else {
        return Err(Failure::Usage("expected IMAGE and TARGET".into()));
    };
    if args.patch.is_none() && !args.dry_run {
        return Err(Failure::Usage("--patch PATCH is required".into()));
    }
    let mut named: Vec<(&str, &Path)> = vec![("IMAGE", image), ("TARGET", target)];
    named.extend(args.patch.as_deref().map(|p| ("--patch", p)));
    named.extend(args.undo_file.as_deref().map(|u| ("--undo-file", u)));
    check_distinct(&named)?;
    let untouched = |e: anyhow::Error| {
        then(
            e,
            &format!(
                "rollback refused: nothing was written, {} is untouched",
                target.display()
            ),
        )
    };
    let Some((patch_path, t, label)) = prepare(args, image, target).map_err(untouched)? else {
        return Ok(());
    };
    let mut p = Patch::open_fresh(&patch_path)?;
    let d = drive(&mut p, &t, Goal::New, &mut Faults::from_env())
        .map_err(|e| stated(e, &patch_path, &t, PatchState::Prepared))?;
    println!(
        "{}: rolled back to {label}: {} blocks ({} bytes) written; `e2image-rs rollback --undo {} {}` rewinds it",
        t.path().display(),
        d.blocks_written,
        d.bytes_written,
        patch_path.display(),
        t.path().display()
    );
    debug_assert_eq!(p.state(), PatchState::Done);
    Ok(())
}

/// Everything before the first write to the target: checks, plan, patch and undo file.
/// Returns the patch path, the opened target and the state's label, or `None` after a dry run.
fn prepare(
    args: &RollbackArgs,
    image: &Path,
    target: &Path,
) -> Result<Option<(PathBuf, Target, String)>> {
    if let Some(p) = args.patch.as_ref().filter(|p| p.exists() && !args.dry_run) {
        bail!(
            "{} exists: it may be needed to resume or undo an earlier rollback; remove it or choose another name",
            p.display()
        );
    }
    let reader = Reader::open(
        File::open(image).with_context(|| format!("cannot open {}", image.display()))?,
    )
    .with_context(|| format!("{}: not a usable QCOW2 image", image.display()))?;
    let (layer_id, label) = choose_layer(&reader, args.snapshot.as_deref())?;
    let layer = reader
        .layer(layer_id)
        .context("cannot read the image state")?;
    let view = QcowView::new(&layer, reader.virtual_size());
    let fs = Filesystem::open(view, &OpenOptions::default())
        .with_context(|| format!("{} ({label}) holds no readable filesystem", image.display()))?;
    let t = Target::open(target, !args.dry_run)?;
    if let Some(by) = part_way_patch(&read_target_sb_raw(&t)?) {
        bail!(
            "{tp} is part-way through the rollback of patch {by}: finish that one first with `e2image-rs rollback --resume PATCH {tp}`, or rewind it with `--undo PATCH {tp}`",
            tp = t.path().display()
        );
    }
    check_same_fs(&fs, &t, image, &label)?;
    let walk = ext::walk(
        &fs,
        &WalkOptions {
            data: true,
            no_snapshot_files: false,
        },
    );
    for w in &walk.warnings {
        eprintln!("e2image-rs: warning: [{label}] {w}");
    }
    let sb = &fs.sb;
    let geo = held::Geometry {
        cluster_size: reader.cluster_size(),
        block_size: u64::from(sb.block_size),
        blocks_count: sb.s_blocks_count,
        v3: reader.header().version == qcow::Version::V3,
    };
    let held = held::held_blocks(&layer, geo, &walk.blocks, ExportRecord::of(&reader))?;
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
    if args.dry_run {
        let rep = plan.dry_run()?;
        print!("{}", rep.render(&plan, &conflicts, true));
        return Ok(None);
    }
    if !conflicts.is_empty() && !args.force {
        bail!("{}\n--force rolls back anyway", conflicts.render(10));
    }
    let patch_path = args.patch.clone().unwrap_or_default();
    let (rep, undo_line) = plan.write_patch(&patch_path, args.undo_file.as_deref())?;
    print!("{}", rep.render(&plan, &conflicts, false));
    if let Some(line) = undo_line {
        println!("{line}");
    }
    Ok(Some((patch_path, t, label)))
}

/// The layer to restore and its label ("active", or "snapshot ID (NAME)").
fn choose_layer(reader: &Reader, snapshot: Option<&str>) -> Result<(Layer, String)> {
    let Some(want) = snapshot else {
        return Ok((Layer::Active, "the active state".into()));
    };
    let Some(i) = reader.find_snapshot(want) else {
        let names: Vec<String> = reader
            .snapshots()
            .iter()
            .map(|s| format!("{} ({})", s.id, s.name))
            .collect();
        bail!(
            "the image has no snapshot {want:?} (it has: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        );
    };
    let s = &reader.snapshots()[i];
    Ok((
        Layer::Snapshot(i),
        format!("snapshot {} ({})", s.id, s.name),
    ))
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
    let mut diffs = Vec::new();
    if tsb.s_uuid != sb.s_uuid {
        diffs.push(format!(
            "UUID {} vs {}",
            uuid(&tsb.s_uuid),
            uuid(&sb.s_uuid)
        ));
    }
    if tsb.block_size != sb.block_size {
        diffs.push(format!(
            "block size {} vs {}",
            tsb.block_size, sb.block_size
        ));
    }
    if tsb.s_blocks_count != sb.s_blocks_count {
        diffs.push(format!(
            "block count {} vs {}",
            tsb.s_blocks_count, sb.s_blocks_count
        ));
    }
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
            "{} is {} bytes, smaller than the {}-byte filesystem",
            t.path().display(),
            t.size(),
            sb.size_bytes()
        );
    }
    Ok(())
}

/// Everything the patch is made from.
pub(crate) struct Plan<'a> {
    image: &'a Path,
    reader: &'a Reader,
    layer: &'a qcow::LayerReader<'a>,
    fs: &'a Filesystem<QcowView<'a>>,
    walk: &'a ext::BlockSet,
    held: &'a Held,
    target: &'a Target,
    label: &'a str,
}

/// Feeds differing runs to the report and, when writing, to the patch and undo file.
struct Outputs {
    report: report::Report,
    patch: Option<PatchWriter>,
    undo: Option<UndoFileWriter>,
}

impl RunSink for Outputs {
    fn run(&mut self, first: u64, old: &[u8], new: &[u8]) -> Result<()> {
        self.report.add(first, old, new);
        if let Some(p) = &mut self.patch {
            p.add_run(first, old, new)?;
        }
        if let Some(u) = &mut self.undo {
            u.add(first, old)?;
        }
        Ok(())
    }
}

impl Plan<'_> {
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
            report: report::Report::new(self.fs.sb.block_size, self.sb_block()),
            patch: None,
            undo: None,
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
        let (tmp, file) = TempOutput::create(path)?;
        let (utmp, uw) = match undo_file {
            Some(u) => {
                let (utmp, ufile) = TempOutput::create(u)?;
                (Some(utmp), Some(UndoFileWriter::create(ufile, bs)?))
            }
            None => (None, None),
        };
        let mut out = Outputs {
            report: report::Report::new(bs, self.sb_block()),
            patch: Some(PatchWriter::new(file, bs)),
            undo: uw,
        };
        out.report.stats = self.diff(&mut out)?;
        let (sb_old, sb_new) = out
            .report
            .sb_blocks
            .clone()
            .context("the superblock block was not compared")?;
        let sb_at = (SUPERBLOCK_OFFSET % u64::from(bs)) as usize;
        let header = self.header()?;
        let pw = out.patch.take().context("no patch writer")?;
        pw.finish(header, &not_clean(&sb_old, sb_at, path))?;
        let mut undo_line = None;
        if let (Some(u), Some(utmp), Some(name)) = (out.undo.take(), utmp, undo_file) {
            let mut rec = [0u8; SUPERBLOCK_BYTES];
            rec.copy_from_slice(&sb_new[sb_at..sb_at + SUPERBLOCK_BYTES]);
            let (keys, bytes) = (u.num_keys(), u.file_size());
            let f = u.finish(&rec)?;
            f.sync_all().context("cannot flush the undo file")?;
            utmp.commit_new()?;
            undo_line = Some(format!(
                "  undo file {}: {keys} keys, {bytes} bytes; `e2undo {} {}` rewinds the rollback",
                name.display(),
                name.display(),
                self.target.path().display()
            ));
        }
        if let Err(e) = tmp.commit_new() {
            if let Some(u) = undo_file {
                let _ = std::fs::remove_file(u);
            }
            return Err(e);
        }
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
            image_sha256: patch::sha256(&first),
            state_label: self.label.to_string(),
            image_path: absolute(self.image).display().to_string(),
            ..PatchHeader::default()
        })
    }
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
