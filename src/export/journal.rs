//! The journal of each state, recovered in memory ("journal + disk = consistent state"); the
//! source is never written.
//!
//! * Default (faithful, replay-complete): the image holds the blocks as they are on disk and
//!   the whole journal, plus every block the replayed state's walk needs besides (with `-d`,
//!   the data of files that exist only after replay) and the blocks the fast-commit area
//!   names. Replaying the image (the kernel at mount, `e2fsck`, `debugfs jr`) then gives the
//!   replayed source on every block a walk of it copies.
//! * `--replay`: the image holds the replayed state (ext's [`ReplayMode::Replayed`] view):
//!   the newest journal copies, needs_recovery cleared, the journal emptied; then the orphan
//!   lists processed as the kernel does at mount ([`ext::release_orphans`]: orphans without
//!   links freed, the others truncated to their size, the lists emptied). That also runs
//!   for a filesystem whose journal is clean (or that has none) but whose orphan list is not
//!   empty; not for one whose journal needs recovery and was not replayed.
//!
//! Journal problems (an unusable journal, a corrupt log) are warnings naming the journal
//! block; the rest is exported.

use crate::plan::ExportPlan;
use anyhow::Result;
use ext::{
    BlockClass, BlockSet, BlockView, FileView, Filesystem, InodeTime, Journal, JournalLookup,
    JournalState, OpenOptions, ReplayMode, ReplayedView, WalkOptions, WalkResult, Warning,
};
use std::collections::HashSet;
use std::path::Path;

/// What the journal of one state asks of the export.
pub(super) struct StateJournal<'v> {
    /// The recovery as a view: the overlay alone (default) or the replayed state
    /// (`--replay`); `None` when nothing is replayed.
    pub(super) view: Option<ReplayedView<'v, &'v dyn BlockView>>,
    /// Filesystem extents (first block, blocks) the fast-commit area names: copied as they are.
    pub(super) fast_commit_blocks: Vec<(u64, u64)>,
    /// Problems: journal blocks named in each.
    pub(super) warnings: Vec<Warning>,
    /// What was found and done, for the summary.
    pub(super) notes: Vec<String>,
    /// The filesystem's journal needs recovery (needs_recovery set).
    pub(super) needs_recovery: bool,
    /// The journal is on an external device.
    pub(super) external: bool,
    /// The log blocks' checksums the recovery verified, for the state's checksum report.
    pub(super) checksums: ext::ChecksumReport,
}

impl StateJournal<'_> {
    fn nothing() -> Self {
        StateJournal {
            view: None,
            fast_commit_blocks: Vec::new(),
            warnings: Vec::new(),
            notes: Vec::new(),
            needs_recovery: false,
            external: false,
            checksums: ext::ChecksumReport::default(),
        }
    }

    /// Why the on-disk inodes of this state may lag behind what its journal commits, if they
    /// may: its journal needs recovery, or is on an external device (whose log this export
    /// may not see).
    pub(super) fn dirty_reason(&self) -> Option<String> {
        match (self.needs_recovery, self.external) {
            (true, _) => Some(
                "SOURCE's journal needs recovery (its on-disk inodes lag behind what the journal commits)"
                    .into(),
            ),
            (false, true) => Some(
                "SOURCE's journal is on an external device (its log may hold changes the on-disk inodes do not show)"
                    .into(),
            ),
            (false, false) => None,
        }
    }
}

/// Opens the external journal device `path` read-only.
///
/// # Errors
/// The device cannot be opened.
pub(super) fn open_journal_dev(path: &Path) -> Result<FileView> {
    use anyhow::Context;
    FileView::open(path)
        .with_context(|| format!("--journal-dev: cannot open {} read-only", path.display()))
}

/// Finds and recovers the journal of the filesystem on `view` (opened with `opts`);
/// `external` is the external journal device, if given. A filesystem that cannot be opened
/// has nothing to recover here (the export reports it).
///
/// # Errors
/// An I/O error reading the journal.
pub(super) fn recover<'v>(
    view: &'v dyn BlockView,
    external: Option<&'v dyn BlockView>,
    opts: &OpenOptions,
    plan: &ExportPlan,
) -> Result<StateJournal<'v>> {
    let Ok((fs, _)) = Filesystem::open_with_fallback(view, opts) else {
        return Ok(StateJournal::nothing());
    };
    let located = Journal::locate(&fs, external)?;
    let mut out = StateJournal::nothing();
    out.warnings = located.warnings;
    out.needs_recovery = fs.sb.needs_recovery();
    out.external = fs.sb.has_external_journal();
    if external.is_some() && fs.sb.s_journal_inum != 0 {
        out.notes.push(format!(
            "--journal-dev was not used: the filesystem's journal is internal (inode {})",
            fs.sb.s_journal_inum
        ));
    }
    let dirty = fs.sb.has_incompat(ext::incompat::RECOVER);
    let block_size = fs.sb.block_size;
    let journal = match located.lookup {
        JournalLookup::Found(j) => j,
        JournalLookup::None => return orphans_only(out, view, block_size, plan, dirty),
        JournalLookup::ExternalNotGiven { uuid } => {
            not_given(&mut out, &uuid, dirty, plan.replay());
            return orphans_only(out, view, block_size, plan, dirty);
        }
        JournalLookup::Unusable { reason } => {
            out.warnings.push(journal_warning(format!(
                "the journal is unusable: {reason}{}",
                if dirty {
                    "; it needs recovery, the image holds the blocks as they are on disk"
                } else {
                    ""
                }
            )));
            return orphans_only(out, view, block_size, plan, dirty);
        }
    };
    let recovery = journal.recover();
    recovery_findings(&mut out, &recovery);
    if journal.state() == JournalState::LogWithoutRecoverFlag {
        out.notes.push(
            "the journal holds a log but needs_recovery is clear: not replayed (as the kernel does)"
                .into(),
        );
    }
    if !recovery.replayed {
        return orphans_only(out, view, block_size, plan, dirty);
    }
    with_view(out, view, &journal, external, &recovery, plan)
}

/// `out` with the view of the state `recovery` replayed: the overlay alone, or with
/// `--replay` the replayed state, its orphan lists then processed (unless the recovery
/// failed).
///
/// # Errors
/// A read error of the superblocks.
fn with_view<'v>(
    mut out: StateJournal<'v>,
    view: &'v dyn BlockView,
    journal: &Journal<'_>,
    external: Option<&'v dyn BlockView>,
    recovery: &ext::Recovery,
    plan: &ExportPlan,
) -> Result<StateJournal<'v>> {
    let mode = if plan.replay() {
        ReplayMode::Replayed
    } else {
        ReplayMode::Overlay
    };
    let mut view = ReplayedView::on_base(view, journal, external, recovery, mode)?;
    if mode == ReplayMode::Replayed {
        if let Some(fc) = view.replay_fast_commits(recovery)? {
            if fc.tags > 0 {
                out.notes.push(format!(
                    "{} fast-commit tags were replayed after the block journal, {} blocks changed",
                    fc.tags,
                    fc.blocks.len()
                ));
            }
            out.warnings.extend(fc.warnings);
        }
    }
    out.notes
        .push(replay_note(recovery, view.changed_blocks().len(), plan));
    if plan.replay() {
        match &recovery.error {
            None => {
                release_orphans(&mut out, &mut view)?;
            }
            Some(_) => out.warnings.push(journal_warning(
                "the orphan list was not processed: the journal recovery failed".into(),
            )),
        }
    }
    out.view = Some(view);
    Ok(out)
}

/// With `--replay`, the orphan processing of a state whose journal was not replayed: when it
/// is clean (`!dirty`) and its orphan lists are not empty, the view of its processed state.
fn orphans_only<'v>(
    mut out: StateJournal<'v>,
    view: &'v dyn BlockView,
    block_size: u32,
    plan: &ExportPlan,
    dirty: bool,
) -> Result<StateJournal<'v>> {
    if !plan.replay() || dirty {
        return Ok(out);
    }
    let mut v = ReplayedView::unchanged(view, block_size);
    if release_orphans(&mut out, &mut v)? {
        out.view = Some(v);
    }
    Ok(out)
}

/// Processes the orphan lists of the (replayed) state `view` as the kernel does at mount
/// and puts the changed blocks in it; true if it changed. The time of the deletions is now.
///
/// # Errors
/// A changed block that is not one block long (a bug).
fn release_orphans(
    out: &mut StateJournal<'_>,
    view: &mut ReplayedView<'_, &dyn BlockView>,
) -> Result<bool> {
    let r = {
        let fs = match Filesystem::open(&*view as &dyn BlockView, &OpenOptions::default()) {
            Ok(fs) => fs,
            Err(e) if has_orphan_list(view) => {
                out.warnings.push(journal_warning(format!(
                    "the orphan list was not processed: the filesystem does not open through its primary superblock ({e})"
                )));
                return Ok(false);
            }
            Err(_) => return Ok(false),
        };
        let ((secs, nsecs), _) = crate::text::now_and_name();
        let now = InodeTime {
            secs: i64::from(secs),
            nsecs,
        };
        ext::release_orphans(&fs, now)
    };
    out.warnings.extend(r.warnings.iter().cloned());
    if r.blocks.is_empty() {
        return Ok(false);
    }
    out.notes.push(format!(
        "orphan processing (as the kernel does at mount): {} orphan inodes released, {} truncated to their size, {} blocks freed{}",
        r.released.len(),
        r.truncated.len(),
        r.freed_blocks,
        if r.emptied { "; the orphan lists are empty" } else { "" }
    ));
    for (b, bytes) in r.blocks {
        view.set_block(b, bytes)?;
    }
    Ok(true)
}

/// True if the primary superblock's bytes name an orphan list head (`s_last_orphan`), for
/// the warning when the filesystem does not open.
fn has_orphan_list(view: &ReplayedView<'_, &dyn BlockView>) -> bool {
    let mut sb = vec![0u8; ext::SUPERBLOCK_SIZE];
    view.read_at(ext::SUPERBLOCK_OFFSET, &mut sb).is_ok()
        && ext::SuperblockBytes::new(&sb[..]).is_ok_and(|b| b.s_last_orphan() != 0)
}

/// The recovery's warnings and errors, and the fast-commit area's blocks (`--replay`
/// replays the fast commits: [`ReplayedView::replay_fast_commits`]).
fn recovery_findings(out: &mut StateJournal<'_>, recovery: &ext::Recovery) {
    out.warnings.extend(recovery.warnings.iter().cloned());
    out.checksums = recovery.checksums.clone();
    if let Some(e) = &recovery.error {
        out.warnings
            .push(journal_warning(format!("journal recovery error: {e}")));
    }
    if let Some(fc) = &recovery.fast_commit {
        out.fast_commit_blocks = fc.referenced.iter().map(|&(b, n)| (b.0, n)).collect();
    }
}

/// The note for a recovered journal.
fn replay_note(r: &ext::Recovery, changed: usize, plan: &ExportPlan) -> String {
    let what = format!(
        "{} transactions (tids {}..{}), {} blocks",
        r.transactions(),
        r.start_tid,
        r.end_tid,
        changed
    );
    if plan.replay() {
        format!("the journal was replayed in memory: {what}; the image holds the replayed state (the source was not written)")
    } else {
        format!("the journal needs recovery: {what}; the image holds the blocks as they are on disk, the whole journal and what the replayed state needs besides (--replay writes the replayed state)")
    }
}

/// An external journal that was not given.
fn not_given(out: &mut StateJournal<'_>, uuid: &[u8; 16], dirty: bool, replay: bool) {
    let msg = format!(
        "the journal is on an external device (journal UUID {}), not given (--journal-dev PATH)",
        crate::text::uuid(uuid)
    );
    match (dirty, replay) {
        (true, true) => out.warnings.push(journal_warning(format!(
            "{msg}: it needs recovery and was not replayed; the image holds the blocks as they are on disk"
        ))),
        (true, false) => out
            .notes
            .push(format!("{msg}; the filesystem needs recovery from it")),
        (false, _) => out.notes.push(msg),
    }
}

fn journal_warning(reason: String) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason,
    }
}

/// Recovers the journal of every state; state 0 (the source) uses `-b`/`-B` and the external
/// journal device, unless `skip_first` (its journal was handled before).
///
/// # Errors
/// An I/O error reading a journal.
pub(super) fn recover_states<'v>(
    views: &[&'v dyn BlockView],
    external: Option<&'v dyn BlockView>,
    plan: &ExportPlan,
    skip_first: bool,
) -> Result<Vec<StateJournal<'v>>> {
    views
        .iter()
        .enumerate()
        .map(|(k, &v)| match k {
            0 if skip_first => Ok(StateJournal::nothing()),
            0 => recover(v, external, plan.source().open_options(), plan),
            _ => recover(v, None, &OpenOptions::default(), plan),
        })
        .collect()
}

/// Completes the walk `walked` of a state for its journal `j`: the log checksums its recovery
/// verified (into the checksum report), the blocks the fast-commit
/// area names and, in a faithful export (not `--replay`), every block a walk of the replayed
/// state needs, so that replaying the image gives the replayed source. Warnings of that walk
/// that the on-disk walk did not give are added, marked "after replay".
pub(super) fn complete(
    walked: &mut WalkResult,
    sb: &ext::Superblock,
    j: &StateJournal<'_>,
    opts: &WalkOptions,
    replay: bool,
) {
    walked.checksums.append(&j.checksums);
    let mut extra = BlockSet::new();
    for &(b, n) in &j.fast_commit_blocks {
        extra.add(b, n, BlockClass::Journal);
    }
    if let (Some(v), false) = (&j.view, replay) {
        match Filesystem::open_with_fallback(v as &dyn BlockView, &OpenOptions::default()) {
            Ok((rfs, _)) => {
                let mut r = ext::walk(&rfs, opts);
                extra.append(&mut r.blocks);
                let seen: HashSet<String> =
                    walked.warnings.iter().map(|w| w.to_string()).collect();
                walked.warnings.extend(
                    r.warnings
                        .into_iter()
                        .filter(|w| !seen.contains(&w.to_string()))
                        .map(|w| Warning {
                            reason: format!("after replay: {}", w.reason),
                            ..w
                        }),
                );
            }
            Err(e) => walked.warnings.push(journal_warning(format!(
                "the replayed state cannot be opened ({e}); only the on-disk state's blocks were copied"
            ))),
        }
    }
    if extra.extents().is_empty() {
        return;
    }
    extra.append(&mut walked.blocks);
    extra.finish(sb.cluster_ratio, sb.s_blocks_count);
    walked.blocks = extra;
}
