//! `-s` validated: where scrambling applies (a filesystem SOURCE's current state, to a new
//! `-Q` or `-r` image) and its seed (docs/scrambling.md).

use super::source::SourceKind;
use super::{usage, UsageError};
use crate::cli::ExportArgs;

/// A scrambled export: names and symlink targets replaced through ext's scrambled view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scramble {
    /// The seed of the new names.
    pub seed: u64,
    /// `--scramble-seed` was given (else the seed is random, and reported).
    pub seed_given: bool,
}

/// The scrambling `a` asks for (`None` without `-s`), for a `kind` SOURCE in a mode that
/// `refused` names when it does not scramble ([`super::export::Mode::scramble_refusal`]).
///
/// # Errors
/// [`UsageError`] for `-s` with `-d` without `--allow-data`, and for the modes that do not
/// scramble (archives, deltas, older states, QCOW2 sources, `--from-snapshot`).
pub(super) fn scramble_of(
    a: &ExportArgs,
    refused: Option<&'static str>,
    kind: SourceKind,
) -> Result<Option<Scramble>, UsageError> {
    let s = &a.scramble;
    if !s.scramble {
        return Ok(None);
    }
    refuse_data(a)?;
    let refused = refused
        .or((kind == SourceKind::Qcow2).then_some("a QCOW2 SOURCE"))
        .or(a.from_snapshot.is_some().then_some("--from-snapshot"));
    if let Some(what) = refused {
        return Err(usage(&format!(
            "-s scrambles one filesystem state into a new image (-Q or -r); it does not apply to {what}"
        )));
    }
    Ok(Some(Scramble {
        seed: s.scramble_seed.unwrap_or_else(random_seed),
        seed_given: s.scramble_seed.is_some(),
    }))
}

/// Refuses `-s` with `-d` unless `--allow-data` (checked before SOURCE is opened).
///
/// # Errors
/// [`UsageError`] saying why.
pub(super) fn refuse_data(a: &ExportArgs) -> Result<(), UsageError> {
    if a.scramble.scramble && a.data && !a.scramble.allow_data {
        return Err(usage(
            "-s hides names, but -d copies file data, which can hold what the names hide (paths in files, old copies of directories); add --allow-data to copy the data anyway, or leave out -d",
        ));
    }
    Ok(())
}

/// A seed from the OS (`/dev/urandom`, else std's per-process random hasher keys).
fn random_seed() -> u64 {
    use std::io::Read;
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok()
    {
        return u64::from_le_bytes(b);
    }
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}
