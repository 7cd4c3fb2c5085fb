//! Opening the filesystems of the states to write: the current state through `-b`/`-B` or the
//! first backup superblock that validates (with a warning), older states as they are (one
//! that cannot be opened is reported and left out).

use super::summary::StateReport;
use super::{open_with_fallback, StateInput};
use crate::plan::ExportPlan;
use anyhow::Result;
use ext::{BlockView, Filesystem, OpenOptions, Warning};

/// Opened filesystems of the states (`None` for an older state that cannot be opened), the
/// reports of those left out and a warning for each.
pub(super) type Opened<'a> = (
    Vec<Option<Filesystem<&'a dyn BlockView>>>,
    Vec<StateReport>,
    Vec<(String, Warning)>,
);

/// Opens every state's filesystem. The first state must open (it uses `-b`/`-B`, or falls
/// back to a backup superblock that validates, with a warning); another one that does not is
/// reported and left out.
pub(super) fn open_states<'a>(states: &[StateInput<'a>], plan: &ExportPlan) -> Result<Opened<'a>> {
    let (mut opened, mut reports, mut warnings) = (Vec::new(), Vec::new(), Vec::new());
    for (k, s) in states.iter().enumerate() {
        if k == 0 {
            let (fs, backup) = open_with_fallback(s.view, plan)?;
            if let Some(b) = backup {
                warnings.push((s.name.clone(), fallback_warning(&b)));
            }
            opened.push(Some(fs));
            continue;
        }
        match Filesystem::open(s.view, &OpenOptions::default()) {
            Ok(fs) => opened.push(Some(fs)),
            Err(e) => {
                let report = StateReport::unopenable(&s.name, &e.to_string());
                let reason = report.error.clone().unwrap_or_default();
                warnings.push((
                    s.name.clone(),
                    Warning {
                        inode: None,
                        block: None,
                        offset: None,
                        reason,
                    },
                ));
                reports.push(report);
                opened.push(None);
            }
        }
    }
    Ok((opened, reports, warnings))
}

/// The warning for an export through a backup superblock chosen automatically.
fn fallback_warning(b: &ext::BackupUsed) -> Warning {
    Warning {
        inode: None,
        block: None,
        offset: None,
        reason: format!(
            "the primary superblock (byte 1024) is unusable ({}); exported through the backup superblock at block {} (block size {}, as e2fsck does); the primary's bytes are copied as they are",
            b.primary_error, b.block.0, b.block_size
        ),
    }
}
