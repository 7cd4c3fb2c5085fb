//! The delta part of the export plan: `-x FROM[..TO]`, `--base BASE[@SNAPSHOT]`, `--backing`.

use super::{Format, UsageError};
use crate::cli::ExportArgs;
use std::path::{Path, PathBuf};

/// The name of the current state in `-x`.
pub const CURRENT: &str = "current";

/// One end of a delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateRef {
    /// SOURCE's current state (a QCOW2 SOURCE's active layer).
    Current,
    /// A state of SOURCE by name or id: an internal snapshot of a QCOW2 SOURCE, or a
    /// filesystem (next3) snapshot.
    Named(String),
    /// Another image of the filesystem (`--base`): a raw image, a QCOW2 image's active state,
    /// or one of its internal snapshots.
    Image {
        /// The image.
        path: PathBuf,
        /// The internal snapshot (`IMAGE.qcow2@SNAPSHOT`).
        snapshot: Option<String>,
    },
}

impl StateRef {
    /// How messages and the record name it.
    pub fn label(&self) -> String {
        match self {
            StateRef::Current => CURRENT.into(),
            StateRef::Named(n) => n.clone(),
            StateRef::Image { path, snapshot } => match snapshot {
                Some(s) => format!("{}@{s}", path.display()),
                None => path.display().to_string(),
            },
        }
    }

    /// How the delta record names it: as [`StateRef::label`], but an image by its file name
    /// alone (a delta travels to other machines; the directories it came from stay here).
    pub fn record_name(&self) -> String {
        match self {
            StateRef::Image { path, snapshot } => {
                let name = path.file_name().map_or_else(
                    || path.display().to_string(),
                    |n| n.to_string_lossy().into(),
                );
                match snapshot {
                    Some(s) => format!("{name}@{s}"),
                    None => name,
                }
            }
            _ => self.label(),
        }
    }
}

/// A delta to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaPlan {
    /// The state the target holds.
    pub from: StateRef,
    /// The state it will hold.
    pub to: StateRef,
    /// The backing file name to store (a full export of FROM), as given: a relative name is
    /// relative to the delta's directory.
    pub backing: Option<PathBuf>,
}

fn usage(m: &str) -> UsageError {
    UsageError(m.to_string())
}

/// The delta plan of the arguments, if they ask for one.
///
/// # Errors
/// [`UsageError`]: `-x` or `--base` without `-Q` or with v2, `--backing` without either, a
/// malformed `-x`, a missing `--base` or `--backing` file.
pub fn delta_plan(
    a: &ExportArgs,
    format: Format,
    out: &Path,
) -> Result<Option<DeltaPlan>, UsageError> {
    let (from, to) = match (&a.delta, &a.base) {
        (None, None) => {
            if a.backing.is_some() {
                return Err(usage(
                    "--backing goes with a delta (-x FROM..TO or --base BASE)",
                ));
            }
            return Ok(None);
        }
        (Some(x), _) => parse_range(x)?,
        (None, Some(b)) => (base_ref(b)?, StateRef::Current),
    };
    match format {
        Format::Raw => return Err(usage("a delta is a QCOW2 image: it needs -Q")),
        Format::Qcow2 {
            version: qcow::Version::V2,
            ..
        } => {
            return Err(usage(
                "a delta needs QCOW2 version 3 (--compat 1.1): its discards are zero clusters",
            ))
        }
        Format::Qcow2 { .. } => {}
    }
    if let Some(b) = &a.backing {
        if !backing_path(b, out).is_file() {
            let next_to = match out.as_os_str() == "-" {
                true => "in the current directory (OUT is standard output: a relative name is checked from here, and stored as given, relative to where the delta is saved)",
                false => "next to the delta (a full export of FROM; a relative name is relative to the delta's directory, as for qemu-img create -b)",
            };
            return Err(usage(&format!(
                "--backing {}: no such file {next_to}",
                b.display()
            )));
        }
    }
    Ok(Some(DeltaPlan {
        from,
        to,
        backing: a.backing.clone(),
    }))
}

/// Where a `--backing` name points: relative names are relative to the delta's directory
/// (QEMU resolves them so, and the name is stored as given); for a delta on standard output
/// (`-`), to the current directory.
pub fn backing_path(name: &Path, delta: &Path) -> PathBuf {
    if name.is_absolute() || delta.as_os_str() == "-" {
        return name.to_path_buf();
    }
    match delta.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(name),
        _ => name.to_path_buf(),
    }
}

/// `FROM..TO` or `FROM` (then TO is current).
fn parse_range(x: &str) -> Result<(StateRef, StateRef), UsageError> {
    let named = |s: &str| -> Result<StateRef, UsageError> {
        match s {
            "" => Err(usage(&format!("-x {x:?}: a state name is empty"))),
            CURRENT => Ok(StateRef::Current),
            _ => Ok(StateRef::Named(s.to_string())),
        }
    };
    match x.split_once("..") {
        Some((f, t)) => Ok((named(f)?, named(t)?)),
        None => Ok((named(x)?, StateRef::Current)),
    }
}

/// `--base BASE` or `--base IMAGE@SNAPSHOT` (when BASE itself is no file).
fn base_ref(b: &Path) -> Result<StateRef, UsageError> {
    if b.exists() {
        return Ok(StateRef::Image {
            path: b.to_path_buf(),
            snapshot: None,
        });
    }
    let text = b.to_string_lossy();
    if let Some((path, snap)) = text.rsplit_once('@') {
        if Path::new(path).is_file() && !snap.is_empty() {
            return Ok(StateRef::Image {
                path: PathBuf::from(path),
                snapshot: Some(snap.to_string()),
            });
        }
    }
    Err(usage(&format!("--base {}: no such image", b.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("a..b").unwrap(),
            (StateRef::Named("a".into()), StateRef::Named("b".into()))
        );
        assert_eq!(
            parse_range("monday").unwrap(),
            (StateRef::Named("monday".into()), StateRef::Current)
        );
        assert_eq!(parse_range("current..x").unwrap().0, StateRef::Current);
        assert!(parse_range("..b").is_err());
        assert!(parse_range("a..").is_err());
    }
}
