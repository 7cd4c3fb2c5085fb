//! The export pipeline: source → states (the current filesystem and any older ones) → walk
//! each state (what to copy) → parallel copy → sink (QCOW2, raw file, device, stream, or an
//! archive grown in place).
//!
//! The plan names the mode and the source view; the source was opened read-only once when the
//! plan was built. With several states, the current one is written in full and becomes the
//! active layer; each older state is written after it, newest first, sharing every cluster
//! equal to the next newer state's (an inverted chain of QCOW2 internal snapshots). A QCOW2
//! source keeps its internal snapshots: each is walked and written as a state under its own
//! id, name and date. An append writes one state against the archive's newest (`append`,
//! with the quick check of `unchanged`). Corrupt parts found by a walk, states that cannot be
//! opened and unreadable blocks are reported and counted; they make the exit status 3.
//!
//! Files: `open` (the states' filesystems), `tables` (output size, QCOW2 options, snapshot
//! tables), `append` and `unchanged` (archive appends), `journal` (each state's journal),
//! `states` (older states), `qcow_source` and `convert` (QCOW2 sources), `delta` (deltas),
//! `summary` (what the run reports), `cluster` (cluster sizes), `passes` (the second pass of
//! a sink that plans first: a QCOW2 stream), `scramble` (`-s`: the current state read
//! through ext's scrambled view, after `--replay`'s replayed view when given).

mod append;
mod cluster;
mod convert;
mod delta;
mod journal;
mod open;
mod passes;
mod qcow_source;
mod scramble;
mod states;
mod summary;
mod tables;
mod unchanged;

pub use summary::Summary;

use crate::copy::{copy_runs_checking, CopyStats, Progress};
use crate::plan::{ExportPlan, Mode, Older, SourceKind};
use crate::ranges::without;
use crate::sink::{self, Opened as OpenedOutput, Sink, Table};
use crate::sys::report;
use anyhow::{Context, Result};
use ext::{BlockView, Filesystem, WalkOptions, Warning};
use states::{plan as plan_states, Next3, Older as OlderStates};
use summary::{ExportFacts, StateReport};
use tables::{archive_table, chain_table, remap_table, target_of};

/// Runs the export (or QCOW2 → raw conversion, archive append, delta) the plan describes.
///
/// # Errors
/// Anything that stops the run; nothing is left under OUT (a file) then.
pub fn run(plan: &ExportPlan) -> Result<Summary> {
    let source = plan.source();
    match (plan.mode(), source.kind()) {
        (Mode::Delta(d), _) => delta::run(plan, d),
        (Mode::Convert, _) if source.stdin_stream() => convert::from_stdin(plan),
        (Mode::Convert, _) => convert::qcow_to_raw(&source.qcow_reader()?, plan),
        (_, SourceKind::Qcow2) => qcow_source::from_qcow2(plan),
        (_, SourceKind::Filesystem) => {
            source.check_not_mounted("the image")?;
            export_fs(&source.file_view()?, plan)
        }
    }
}

/// Opens the filesystem on `view`, plans its states and writes the image. With `--replay`
/// the source's journal is replayed first, so that its states (next3 snapshots included) are
/// planned on the replayed filesystem.
pub(super) fn export_fs(view: &dyn BlockView, plan: &ExportPlan) -> Result<Summary> {
    let external = match plan.source().journal_dev() {
        Some(p) if plan.replay() => Some(journal::open_journal_dev(p)?),
        _ => None,
    };
    let ext_view = external.as_ref().map(|v| v as &dyn BlockView);
    if plan.replay() {
        report::phase(plan.progress(), "replaying the journal (in memory)");
    }
    let replayed = match plan.replay() {
        true => Some(journal::recover(
            view,
            ext_view,
            plan.source().open_options(),
            plan,
        )?),
        false => None,
    };
    let mut early = Early::default();
    if let Some(j) = &replayed {
        early.journal_done = true;
        early.dirty = j.dirty_reason();
        early.warnings.extend(j.warnings.iter().cloned());
        early.notes.extend(j.notes.iter().cloned());
        early.checksums = j.checksums.clone();
    }
    let view: &dyn BlockView = match replayed.as_ref().and_then(|j| j.view.as_ref()) {
        Some(v) => v,
        None => view,
    };
    let scrambled = match plan.scramble() {
        Some(s) => Some(scramble::view(view, plan, s, &mut early)?),
        None => None,
    };
    let view: &dyn BlockView = match &scrambled {
        Some(v) => v,
        None => view,
    };
    let (fs, _) = open_with_fallback(view, plan)?;
    if let Some(name) = plan.source().view().snapshot() {
        return export_fs_snapshot(&fs, name, plan, early);
    }
    let (fs_snapshots, images) = match plan.mode() {
        Mode::Export { older } => match older {
            Older::FsSnapshots => (true, &[][..]),
            Older::Images(v) => (false, v.as_slice()),
            Older::None => (false, &[][..]),
        },
        _ => (false, &[][..]),
    };
    let sp = plan_states(&fs, fs_snapshots, images, plan.source().force())?;
    let snap_views: Vec<_> = match &sp.older {
        OlderStates::Next3(n) => n.exported.iter().map(|&i| n.view(&fs, i)).collect(),
        _ => Vec::new(),
    };
    let mut views: Vec<&dyn BlockView> = vec![view];
    match &sp.older {
        OlderStates::Next3(n) => {
            views.extend(snap_views.iter().map(|v| v as &dyn BlockView));
            early.warnings.extend(n.warnings.iter().cloned());
        }
        OlderStates::Images(images) => {
            views.extend(images.iter().map(|(_, v)| v as &dyn BlockView))
        }
        OlderStates::None => {}
    }
    let states: Vec<StateInput<'_>> = views
        .into_iter()
        .enumerate()
        .map(|(k, v)| StateInput {
            name: sp.names[k].clone(),
            date: sp.dates[k],
            view: v,
        })
        .collect();
    write_states(&states, plan, early, None)
}

/// `--from-snapshot NAME` of a filesystem with next3 snapshots: that snapshot alone.
fn export_fs_snapshot(
    fs: &Filesystem<&dyn BlockView>,
    name: &str,
    plan: &ExportPlan,
    mut early: Early,
) -> Result<Summary> {
    let next3 = Next3::read(fs);
    let i = next3.find(fs, name).with_context(|| {
        format!(
            "{}: no filesystem snapshot with name or id {name:?}",
            plan.source().path().display()
        )
    })?;
    let snap = next3.view(fs, i);
    let states = [StateInput {
        name: name.to_string(),
        date: (0, 0),
        view: &snap,
    }];
    early.warnings.extend(next3.warnings.iter().cloned());
    write_states(&states, plan, early, None)
}

/// Opens the source's filesystem with `-b`/`-B`, or through the first backup superblock that
/// validates when the primary one is unusable (the caller warns: see `open::open_states`).
fn open_with_fallback<'v>(
    view: &'v dyn BlockView,
    plan: &ExportPlan,
) -> Result<(Filesystem<&'v dyn BlockView>, Option<ext::BackupUsed>)> {
    Filesystem::open_with_fallback(view, plan.source().open_options()).with_context(|| {
        format!(
            "{}: cannot open the filesystem",
            plan.source().path().display()
        )
    })
}

/// What the caller found before the states were written: warnings and notes of the current
/// state, whether its journal was already recovered (`--replay`, with the log checksums it
/// verified), and why an append's quick check is off for it (its journal needed recovery or is
/// external).
#[derive(Default)]
pub(super) struct Early {
    pub(super) warnings: Vec<Warning>,
    pub(super) notes: Vec<String>,
    pub(super) journal_done: bool,
    pub(super) dirty: Option<String>,
    /// The log checksums of the journal recovered before (`journal_done`).
    pub(super) checksums: ext::ChecksumReport,
    /// Members of the JSON summary found before (`scramble`).
    pub(super) extra: Vec<(String, serde_json::Value)>,
}

/// One state to write: its view, name and date.
pub(super) struct StateInput<'a> {
    pub(super) name: String,
    pub(super) date: (u32, u32),
    pub(super) view: &'a dyn BlockView,
}

/// Writes the states (the first is the active layer unless `table` says otherwise) to OUT.
/// Without a `table`, several states make the inverted chain: one snapshot per state, ids
/// 1..n in writing order.
pub(super) fn write_states(
    states: &[StateInput<'_>],
    plan: &ExportPlan,
    mut early: Early,
    table: Option<Table>,
) -> Result<Summary> {
    let extra = std::mem::take(&mut early.extra);
    let external = match plan.source().journal_dev() {
        Some(p) if !early.journal_done => Some(journal::open_journal_dev(p)?),
        _ => None,
    };
    let views: Vec<&dyn BlockView> = states.iter().map(|s| s.view).collect();
    let ext_view = external.as_ref().map(|v| v as &dyn BlockView);
    let mut journals = journal::recover_states(&views, ext_view, plan, early.journal_done)?;
    if early.journal_done {
        journals[0].checksums = std::mem::take(&mut early.checksums);
    }
    let dirty = early.dirty.clone().or_else(|| journals[0].dirty_reason());
    let replayed = replayed_inputs(states, &journals, plan);
    let states = &replayed[..];
    let (opened, reports, mut warnings) = open::open_states(states, plan)?;
    let first = states[0].name.clone();
    warnings.splice(0..0, early.warnings.into_iter().map(|w| (first.clone(), w)));
    let target = target_of(&opened, plan)?;
    let mut output = open_output(plan, &opened, &target, dirty.as_deref())?;
    if matches!(plan.mode(), Mode::ArchiveAppend { .. }) && journals[0].needs_recovery {
        output.notes.push(UNREPLAYED_APPEND.into());
    }
    let mut notes = early.notes;
    notes.extend(output.notes);
    for (s, j) in states.iter().zip(&journals) {
        warnings.extend(j.warnings.iter().map(|w| (s.name.clone(), w.clone())));
        notes.extend(j.notes.iter().cloned());
    }
    let mut tally = Tally {
        reports,
        warnings,
        ..Tally::default()
    };
    let mut out = output.out;
    let copy = Copy {
        plan,
        journals: &journals,
        quick: output.quick.as_ref(),
    };
    let written: Vec<bool> = opened.iter().map(Option::is_some).collect();
    let table = match (table, plan.mode()) {
        (Some(t), _) => remap_table(t, &written),
        (None, Mode::ArchiveCreate { name }) => archive_table(name),
        (None, _) => chain_table(states, &written),
    };
    copy.states(out.sink.as_mut(), states, &opened, &mut tally, &table)?;
    report::phase(plan.progress(), finishing_phase(plan));
    let mut finished = out.complete(&table, plan.sync())?;
    finished.json.extend(extra);
    notes.append(&mut finished.notes);
    if let Mode::ArchiveAppend { .. } = plan.mode() {
        append::report_retention(&output.decisions, &mut notes, &mut finished.json);
    }
    summarize(plan, states, tally, notes, finished)
}

/// `-p`'s name of the last phase: the tables written, the image flushed and renamed (or the
/// archive committed, pruned in the same commit).
fn finishing_phase(plan: &ExportPlan) -> &'static str {
    match plan.mode() {
        Mode::ArchiveAppend { policy, .. } if !policy.is_empty() => {
            "committing the new state and pruning (one commit)"
        }
        Mode::ArchiveAppend { .. } => "committing the new state",
        _ if plan.compare().is_some() => "flushing OUT",
        _ => "finishing the image (tables, flush, rename)",
    }
}

/// The note of an append of a source whose journal needs recovery, without `--replay`.
const UNREPLAYED_APPEND: &str = "SOURCE's journal needs recovery (an LVM snapshot of a mounted filesystem always does): the new state holds the blocks as they are on disk with the whole journal, which the kernel replays when it mounts the state; --replay archives the state as the kernel would mount it";

/// The output of a run, with what an append found before writing.
struct Output {
    out: OpenedOutput,
    quick: Option<append::QuickCheck>,
    decisions: Vec<crate::archive::Decision>,
    notes: Vec<String>,
}

/// Opens the output: the archive for an append (checked against the current state `opened[0]`
/// first), else the file, device or stream the plan names.
fn open_output(
    plan: &ExportPlan,
    opened: &[Option<Filesystem<&dyn BlockView>>],
    target: &sink::Target,
    dirty: Option<&str>,
) -> Result<Output> {
    if let Mode::ArchiveAppend { .. } = plan.mode() {
        report::phase(
            plan.progress(),
            "opening the archive (locking it, checking its refcounts)",
        );
        let fs = opened[0]
            .as_ref()
            .context("the current state cannot be opened")?;
        let p = append::prepare(plan, fs, target, dirty)?;
        return Ok(Output {
            out: p.out,
            quick: p.quick,
            decisions: p.decisions,
            notes: p.notes,
        });
    }
    let out = sink::open(plan, target)?;
    let notes = out.notes();
    Ok(Output {
        out,
        quick: None,
        decisions: Vec::new(),
        notes,
    })
}

/// The states as exported: with `--replay`, each through its replayed view.
fn replayed_inputs<'a>(
    states: &[StateInput<'a>],
    journals: &'a [journal::StateJournal<'a>],
    plan: &ExportPlan,
) -> Vec<StateInput<'a>> {
    states
        .iter()
        .zip(journals)
        .map(|(s, j)| StateInput {
            name: s.name.clone(),
            date: s.date,
            view: match (&j.view, plan.replay()) {
                (Some(v), true) => v,
                _ => s.view,
            },
        })
        .collect()
}

/// The export's summary from what was copied and how the output was finished.
fn summarize(
    plan: &ExportPlan,
    states: &[StateInput<'_>],
    tally: Tally,
    notes: Vec<String>,
    finished: sink::Finished,
) -> Result<Summary> {
    let (walked, sb) = tally.main.context("the current state was not written")?;
    let mut reports = tally.reports;
    reports.sort_by_key(|r| states.iter().position(|s| s.name == r.name));
    Ok(Summary::export(
        plan,
        ExportFacts {
            sb: &sb,
            walked: &walked,
            warnings: tally.warnings,
            stats: tally.stats,
            cluster_size: finished.cluster_size,
            states: reports,
            notes,
            omitted: tally.omitted,
            extra: finished.json,
        },
    ))
}

/// What the copies of the states found, gathered for the summary.
#[derive(Default)]
struct Tally {
    stats: CopyStats,
    /// Warnings not listed: (state, kind, number).
    omitted: Vec<(String, String, u64)>,
    warnings: Vec<(String, Warning)>,
    reports: Vec<StateReport>,
    /// The first written state's walk and superblock.
    main: Option<(ext::WalkResult, ext::Superblock)>,
}

impl Tally {
    /// Adds one copied state.
    fn add(
        &mut self,
        state: &StateInput<'_>,
        sb: &ext::Superblock,
        walked: ext::WalkResult,
        stats: CopyStats,
        copy_warnings: Vec<Warning>,
    ) {
        self.stats.bytes_copied += stats.bytes_copied;
        self.stats.unreadable_units += stats.unreadable_units;
        let unreadable = summary::unreadable_omitted(stats, copy_warnings.len());
        let kinds = walked.omitted.iter().cloned().chain(unreadable);
        self.omitted
            .extend(kinds.map(|(kind, n)| (state.name.clone(), kind, n)));
        let all: Vec<Warning> = walked
            .warnings
            .iter()
            .cloned()
            .chain(copy_warnings)
            .collect();
        self.reports.push(StateReport::walked(
            &state.name,
            state.date,
            &walked,
            all.len(),
        ));
        self.warnings
            .extend(all.into_iter().map(|w| (state.name.clone(), w)));
        if self.main.is_none() {
            self.main = Some((walked, sb.clone()));
        }
    }
}

/// How the states are copied: the plan, each state's journal, the append's quick check.
struct Copy<'p, 'j> {
    plan: &'p ExportPlan,
    journals: &'j [journal::StateJournal<'j>],
    quick: Option<&'p append::QuickCheck>,
}

impl Copy<'_, '_> {
    /// Walks and copies every opened state into the sink, in order; a sink that plans first
    /// (a QCOW2 stream, [`Sink::two_passes`]) gets them twice, the second time only the
    /// clusters its `plan` (with `table`) asks for.
    fn states(
        &self,
        sink: &mut dyn Sink,
        states: &[StateInput<'_>],
        opened: &[Option<Filesystem<&dyn BlockView>>],
        tally: &mut Tally,
        table: &Table,
    ) -> Result<()> {
        let walk_opts = WalkOptions {
            data: self.plan.data(),
            no_snapshot_files: self.plan.no_snapshots(),
        };
        let count = opened.iter().flatten().count();
        let written = states
            .iter()
            .zip(opened)
            .zip(self.journals)
            .filter_map(|((s, f), j)| Some((s, f.as_ref()?, j)));
        let two = sink.two_passes(count);
        let mut again = Vec::new();
        for (k, (state, fs, j)) in written.enumerate() {
            let label = match count {
                1 => state.name.clone(),
                n => format!("state {}/{n}: {}", k + 1, state.name),
            };
            report::phase(self.plan.progress(), &format!("walking metadata: {label}"));
            let mut walked = ext::walk(fs, &walk_opts);
            journal::complete(&mut walked, &fs.sb, j, &walk_opts, self.plan.replay());
            let (stats, copy_warnings, checked) =
                self.state(sink, state, fs, &walked.blocks, &walked.pending, &label)?;
            walked.finish_checks(state.view, checked);
            if two {
                again.push((state, fs, walked.blocks.clone(), label));
            }
            tally.add(state, &fs.sb, walked, stats, copy_warnings);
        }
        if two {
            report::phase(self.plan.progress(), "planning the stream's layout");
            let needs = sink.plan(table)?;
            for ((state, fs, blocks, label), need) in again.into_iter().zip(needs) {
                let label = format!("writing stream: {label}");
                let bs = u64::from(fs.sb.block_size);
                let only = passes::only(&blocks, &need, bs);
                // The first pass verified the checksums already.
                let none = ext::PendingChecks::default();
                self.state(sink, state, fs, &only, &none, &label)?;
            }
        }
        Ok(())
    }

    /// Copies one walked state into the sink as its next state, leaving out the clusters the
    /// quick check hands the sink to share, verifying the walk's pending checksums on the way.
    /// Returns the counts, the unreadable blocks and what the checksums found.
    fn state(
        &self,
        sink: &mut dyn Sink,
        state: &StateInput<'_>,
        fs: &Filesystem<&dyn BlockView>,
        blocks: &ext::BlockSet,
        pending: &ext::PendingChecks,
        label: &str,
    ) -> Result<(CopyStats, Vec<Warning>, ext::PendingTally)> {
        let bs = fs.sb.block_size;
        sink.begin_state()?;
        let skip = match self.quick {
            Some(q) => {
                let shared = q.shared(fs, blocks);
                let skip = q.blocks_of(&shared, u64::from(bs));
                sink.share(shared)?;
                skip
            }
            None => Vec::new(),
        };
        let runs = without(blocks.extents().iter().map(|e| e.start..e.end()), &skip);
        let bytes = runs.iter().map(|r| r.end - r.start).sum::<u64>() * u64::from(bs);
        let verb = match (self.plan.compress(), label.starts_with("writing")) {
            (_, true) => "",
            (Some(_), false) => "copying and compressing ",
            (None, false) => "copying ",
        };
        let what = format!("{verb}{label}");
        let progress = Progress::new(self.plan.progress(), bytes, &what);
        let mut warnings = Vec::new();
        let runs = runs.into_iter().map(|r| (r.start, r.end - r.start));
        let (stats, checked) = copy_runs_checking(
            state.view,
            bs,
            runs,
            sink,
            &progress,
            &mut warnings,
            pending,
        )?;
        sink.end_state()?;
        progress.finish();
        Ok((stats, warnings, checked))
    }
}
