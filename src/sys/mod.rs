//! System concerns of the binary, below every pipeline: mount checks, which file a path names,
//! temporary outputs, locks, signals, the exit statuses, the one writer of every report and
//! message (`report`) and the test-only fault hooks. Nothing here knows about filesystems or QCOW2.

pub mod faults;
pub mod identity;
pub mod lock;
pub mod mounted;
pub mod output;
pub mod progress;
pub mod report;
pub mod signals;
pub mod status;
