//! The jbd2 journal: finding it (`locate`), its superblock (`superblock`) and log blocks
//! (`log`), the three recovery passes (`passes`, `recovery`), the fast-commit area
//! (`fast_commit`: its scan, and the replay engine), the replayed view built in memory
//! (`view`), and the fast-commit replay on that view (`fc_replay`). Nothing is ever written:
//! a recovery is an overlay of journal copies, and of the blocks the fast-commit replay
//! changes, over the device view.
//!
//! Inside the folder, bottom to top: `superblock`, `log` (decoding, no I/O); `locate` (the
//! journal's map and its reads); `passes`, `fast_commit`; `recovery`; `view`; `fc_replay`.

mod fast_commit;
mod fc_replay;
mod locate;
mod log;
mod passes;
mod recovery;
mod superblock;
mod view;

pub(crate) use superblock::superblock_checksum_check;

pub use fast_commit::FastCommit;
pub use fc_replay::FastCommitReplay;
pub use locate::{Journal, JournalLocation, JournalLookup, Located};
pub use passes::OverlayBlock;
pub use recovery::{JournalState, Recovery};
pub use view::{ReplayMode, ReplayedView};
