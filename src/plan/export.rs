//! [`ExportPlan`]: the export's mode (a new image, QCOW2 → raw, an archive created or grown,
//! a delta), its source (opened once), its output and what is copied, validated together.

use super::archive::{check_name, policy};
use super::compare::{compare_of, Compare};
use super::delta::{backing_path, delta_plan, DeltaPlan, StateRef};
use super::scramble::{refuse_data, scramble_of, Scramble};
use super::source::{Source, SourceArgs, SourceKind, SourceView};
use super::{archive_output, output_kind, usage, Format, Older, Output, UsageError};
use crate::cli::{unknown_subcommand, Compat, CompressionKind, ExportArgs};
use crate::retention::Policy;
use crate::sys::identity::Identity;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// What an export run makes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A new image of SOURCE's states: a filesystem's current state with the older states
    /// asked for, or a QCOW2 SOURCE re-exported with all its internal snapshots (or the one
    /// view the source part names).
    Export {
        /// Older states stored beside the current one.
        older: Older,
    },
    /// A QCOW2 SOURCE's active layer (or `--from-snapshot`'s snapshot) written to a raw
    /// image, cluster by cluster.
    Convert,
    /// A new archive whose only state is `name`.
    ArchiveCreate {
        /// The state's name.
        name: String,
    },
    /// SOURCE's current state added to an existing archive, in place.
    ArchiveAppend {
        /// The new state's name (`None`: the export time).
        name: Option<String>,
        /// Retention applied in the same commit.
        policy: Policy,
    },
    /// Only what changed between two states.
    Delta(DeltaPlan),
}

impl Mode {
    /// What `-s` does not apply to in this mode, named for the message (`None`: the mode
    /// scrambles: one filesystem state into a new image).
    pub fn scramble_refusal(&self) -> Option<&'static str> {
        match self {
            Mode::Export { older: Older::None } => None,
            Mode::Export { .. } => Some("older states (--snapshot, --fs-snapshots)"),
            Mode::Convert => Some("a QCOW2 SOURCE converted to raw"),
            Mode::ArchiveCreate { .. } | Mode::ArchiveAppend { .. } => {
                Some("archives (--name, --append)")
            }
            Mode::Delta(_) => Some("deltas (-x)"),
        }
    }
}

/// `-c` (with `--compression-type` and `--compression-level`): how the QCOW2 clusters are
/// compressed, validated; an append resolves it against the archive ([`Compress::for_image`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compress {
    /// The type and level of a new image (zlib unless `--compression-type` says otherwise).
    pub compression: qcow::Compression,
    /// `--compression-type` was given.
    type_given: bool,
    /// `--compression-level` as given.
    level: Option<u32>,
}

impl Compress {
    /// How new clusters of an existing image whose compressed clusters are `kind` are
    /// compressed: that type (all compressed clusters of an image have one type), at the
    /// level given or that type's default.
    ///
    /// # Errors
    /// `--compression-type` names another type than the image's; the level is out of the
    /// image type's range.
    pub fn for_image(
        &self,
        kind: qcow::CompressionType,
        image: &str,
    ) -> anyhow::Result<qcow::Compression> {
        let want = self.compression.kind();
        if self.type_given && want != kind {
            anyhow::bail!(
                "--compression-type {}: the compressed clusters of {image} are {} (an image has one compression type); append with --compression-type {} or without it; nothing was written",
                want.name(),
                kind.name(),
                kind.name()
            );
        }
        qcow::Compression::new(kind, self.level).map_err(|e| anyhow::anyhow!("{image}: {e}"))
    }
}

/// Everything an export needs to know, validated once from the arguments; the pipelines see
/// nothing else.
#[derive(Debug)]
pub struct ExportPlan {
    source: Source,
    output: Output,
    format: Format,
    mode: Mode,
    data: bool,
    compress: Option<Compress>,
    no_snapshots: bool,
    progress: bool,
    sync: bool,
    json: bool,
    /// `-O`: where the raw image starts in OUT, in bytes.
    dest_offset: u64,
    /// `-r -c [-n]`: OUT compared block by block, written in place.
    compare: Option<Compare>,
    /// `-s`: names are scrambled.
    scramble: Option<Scramble>,
}

impl ExportPlan {
    /// Validates the arguments into a plan; opens SOURCE read-only (once) last, then checks
    /// that OUT is none of the inputs.
    ///
    /// # Errors
    /// [`UsageError`] for wrong arguments (an OUT that is an input included); SOURCE cannot
    /// be opened.
    pub fn from_args(a: &ExportArgs) -> anyhow::Result<ExportPlan> {
        if let Some((flag, hint)) = a.unsupported.first() {
            return Err(usage(&format!("the e2image option {flag} is not supported{hint}")).into());
        }
        let format = format_of(a)?;
        let compress = compress_of(a, format)?;
        let source = a.source.clone().ok_or_else(|| usage("SOURCE is missing"))?;
        let out = a.output.as_deref().ok_or_else(|| usage("OUT is missing"))?;
        let mode = mode_of(a, format, out)?;
        refuse_data(a)?;
        let dest_offset = a.dest_offset.unwrap_or(0);
        if dest_offset > 0 && format != Format::Raw {
            return Err(usage(
                "-O DST_OFFSET places a raw image (-r) inside OUT; a QCOW2 image is a file of its own",
            )
            .into());
        }
        let output = match &mode {
            Mode::ArchiveAppend { .. } => archive_output(out)?,
            _ => output_kind(out, format, a.json)?,
        };
        let compare = compare_of(a, format, &mode, &output)?;
        let source = Source::open(&source, source_args(a))?;
        let mode = match (mode, source.kind(), format) {
            (Mode::Export { older: Older::None }, SourceKind::Qcow2, Format::Raw) if !a.replay => {
                Mode::Convert
            }
            (m, _, _) => m,
        };
        if source.stdin_stream() && mode != Mode::Convert {
            return Err(usage(
                "SOURCE - (standard input) is read by -r only: a QCOW2 image (e.g. `e2image-rs -Q … - | …`) converted to raw; a filesystem is read from a file or device",
            )
            .into());
        }
        let scramble = scramble_of(a, mode.scramble_refusal(), source.kind())?;
        let plan = ExportPlan {
            scramble,
            source,
            output,
            format,
            mode,
            data: a.data,
            compress,
            no_snapshots: a.no_snapshots,
            progress: a.progress,
            sync: a.sync,
            json: a.json,
            dest_offset,
            compare,
        };
        plan.check_output_is_no_input()?;
        Ok(plan)
    }

    /// SOURCE, opened.
    pub fn source(&self) -> &Source {
        &self.source
    }

    /// Where the image goes.
    pub fn output(&self) -> &Output {
        &self.output
    }

    /// What is written.
    pub fn format(&self) -> Format {
        self.format
    }

    /// What the run makes.
    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// `-d`: file data is copied too.
    pub fn data(&self) -> bool {
        self.data
    }

    /// `-c`: how the QCOW2 clusters are compressed (`None`: not compressed).
    pub fn compress(&self) -> Option<&Compress> {
        self.compress.as_ref()
    }

    /// `--no-snapshots`: snapshot files' blocks are left out.
    pub fn no_snapshots(&self) -> bool {
        self.no_snapshots
    }

    /// `-p`: show a progress bar.
    pub fn progress(&self) -> bool {
        self.progress
    }

    /// `--sync`: flush to stable storage before the rename.
    pub fn sync(&self) -> bool {
        self.sync
    }

    /// `--json`: print the JSON summary.
    pub fn json(&self) -> bool {
        self.json
    }

    /// `-O`: the byte offset of the raw image in OUT (0 without it).
    pub fn dest_offset(&self) -> u64 {
        self.dest_offset
    }

    /// `-r -c [-n]`: OUT is compared block by block and written in place (`None`: OUT is
    /// written whole).
    pub fn compare(&self) -> Option<Compare> {
        self.compare
    }

    /// `-s`: the names are scrambled, with this seed (`None`: not scrambled).
    pub fn scramble(&self) -> Option<&Scramble> {
        self.scramble.as_ref()
    }

    /// `--replay`: the journal is replayed in memory.
    pub fn replay(&self) -> bool {
        self.source.view().replayed()
    }

    /// Every input of the run besides SOURCE, with its role in messages: the `--snapshot`
    /// images, the journal device, a delta's `--base` image and its `--backing` file (read to
    /// check it holds FROM, and referenced by the delta).
    fn other_inputs(&self) -> Vec<(String, PathBuf)> {
        let mut v = Vec::new();
        if let Mode::Export {
            older: Older::Images(images),
        } = &self.mode
        {
            v.extend(images.iter().map(|p| ("--snapshot".to_string(), p.clone())));
        }
        if let Some(j) = self.source.journal_dev() {
            v.push(("--journal-dev".to_string(), j.to_path_buf()));
        }
        if let Mode::Delta(d) = &self.mode {
            if let StateRef::Image { path, .. } = &d.from {
                v.push(("--base".to_string(), path.clone()));
            }
            match (&d.backing, &self.output) {
                (Some(b), Output::File(out)) => {
                    v.push(("--backing".to_string(), backing_path(b, out)))
                }
                (Some(b), Output::Stdout) => {
                    v.push(("--backing".to_string(), backing_path(b, Path::new("-"))))
                }
                _ => {}
            }
        }
        v
    }

    /// Refuses an OUT that resolves to an input (SOURCE as opened, the others by path).
    fn check_output_is_no_input(&self) -> Result<(), UsageError> {
        let out = match &self.output {
            Output::File(p) | Output::Device(p) | Output::Archive(p) => Identity::of(p),
            Output::Stdout => std::io::stdout()
                .as_fd()
                .try_clone_to_owned()
                .ok()
                .and_then(|fd| std::fs::File::from(fd).metadata().ok())
                .and_then(|m| Identity::from_meta(&m)),
        };
        let Some(out) = out else { return Ok(()) };
        let source = (
            "SOURCE".to_string(),
            self.source.path().to_path_buf(),
            self.source.identity(),
        );
        let others = self.other_inputs().into_iter().map(|(role, p)| {
            let id = Identity::of(&p);
            (role, p, id)
        });
        for (role, p, id) in std::iter::once(source).chain(others) {
            if id.is_some_and(|i| i.overlaps(&out)) {
                return Err(usage(&format!(
                    "OUT {} is {role} {} (the same file or device): writing it would destroy the input; choose another OUT",
                    self.output.display(),
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// `-Q` (with `--compat` and `--cluster-size`) or `-r`.
fn format_of(a: &ExportArgs) -> Result<Format, UsageError> {
    match (a.qcow2, a.raw) {
        (true, _) => Ok(Format::Qcow2 {
            version: match a.compat {
                Compat::V2 => qcow::Version::V2,
                Compat::V3 => qcow::Version::V3,
            },
            cluster_size: a.cluster_size,
        }),
        (false, true) => Ok(Format::Raw),
        (false, false) => {
            let unknown = a
                .source
                .as_deref()
                .and_then(|s| unknown_subcommand(s.as_os_str()));
            Err(usage(&unknown.unwrap_or_else(|| {
                "one of -Q (QCOW2) or -r (raw) is required".into()
            })))
        }
    }
}

/// `-c` and its options: QCOW2 only (a raw image has no compressed clusters), zstd only in
/// v3 (a v2 header has no `compression_type`), the level within the type's range.
fn compress_of(a: &ExportArgs, format: Format) -> Result<Option<Compress>, UsageError> {
    if !a.compress {
        if a.compression_type.is_some() || a.compression_level.is_some() {
            return Err(usage(
                "--compression-type and --compression-level say how -c compresses: add -c",
            ));
        }
        return Ok(None);
    }
    let Format::Qcow2 { version, .. } = format else {
        // -r -c: e2image's compare mode (see `compare_of`).
        return Ok(None);
    };
    let kind = match a.compression_type {
        Some(CompressionKind::Zstd) => qcow::CompressionType::Zstd,
        Some(CompressionKind::Zlib) | None => qcow::CompressionType::Deflate,
    };
    if kind == qcow::CompressionType::Zstd && version == qcow::Version::V2 {
        return Err(usage(
            "--compression-type zstd needs --compat 1.1: a version 2 header (--compat 0.10) has no compression type",
        ));
    }
    let compression = qcow::Compression::new(kind, a.compression_level).map_err(|_| {
        let r = kind.levels();
        usage(&format!(
            "--compression-level {}: {} levels are {} to {}",
            a.compression_level.unwrap_or(0),
            kind.name(),
            r.start(),
            r.end()
        ))
    })?;
    Ok(Some(Compress {
        compression,
        type_given: a.compression_type.is_some(),
        level: a.compression_level,
    }))
}

/// The mode the arguments ask for: a delta, an archive created or grown, or an export (with
/// its older states). QCOW2 → raw is told apart once SOURCE is open.
fn mode_of(a: &ExportArgs, format: Format, out: &Path) -> Result<Mode, UsageError> {
    if let Some(n) = &a.name {
        check_name(n)?;
    }
    if a.keep.any() && !a.append {
        return Err(usage(
            "--keep-* applies to --append (to prune an archive, use `e2image-rs prune`)",
        ));
    }
    if let Some(d) = delta_plan(a, format, out)? {
        return Ok(Mode::Delta(d));
    }
    if a.append {
        if format == Format::Raw {
            return Err(usage(
                "--append adds a state to a QCOW2 archive: it needs -Q",
            ));
        }
        return Ok(Mode::ArchiveAppend {
            name: a.name.clone(),
            policy: policy(&a.keep),
        });
    }
    if let Some(n) = &a.name {
        if format == Format::Raw {
            return Err(usage("--name makes a QCOW2 archive: it needs -Q"));
        }
        return Ok(Mode::ArchiveCreate { name: n.clone() });
    }
    let older = match (a.fs_snapshots, a.snapshots.is_empty()) {
        (true, _) => Older::FsSnapshots,
        (false, false) => Older::Images(a.snapshots.clone()),
        (false, true) => Older::None,
    };
    Ok(Mode::Export { older })
}

/// How SOURCE is opened and which view of it is read.
fn source_args(a: &ExportArgs) -> SourceArgs {
    SourceArgs {
        offset: a.src_offset.unwrap_or(0),
        open: ext::OpenOptions {
            superblock: a.superblock.map(ext::BlockNr),
            block_size: a.block_size,
        },
        force: a.force,
        journal_dev: a.journal_dev.clone(),
        view: SourceView::of(a.from_snapshot.as_deref(), a.replay),
    }
}
