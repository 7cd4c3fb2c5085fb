//! next3 / ext4-snapshots in-filesystem snapshots: the snapshot list (`list`), each snapshot
//! file's block map (`map`), the read-through view that rebuilds a snapshot's block device
//! image (`view`), and the snapshots' names from their directory entries (`names`).

mod list;
mod map;
mod names;
mod view;

pub use list::{snapshot_list, SnapshotFile};
pub use map::SnapshotMap;
pub use names::snapshot_names;
pub use view::{SnapshotView, Source as BlockSource};
