//! The scrambled view (`e2image -s`): a [`BlockView`] of a filesystem in which no name of
//! the source survives. Directory entry names and symlink targets (fast, slow, inline) are
//! replaced by generated ones of the same length, in every directory format (linear, htree,
//! inline data), so that the image still passes `e2fsck -fn` wherever the source does.
//!
//! * Names are unique in their directory, never one the directory held, and in an htree
//!   leaf hash into the leaf's range (the parent index entries' bounds; `names`), casefolded
//!   directories included (the new names are casefold-invariant, so their plain hash is the
//!   one the kernel computes). `.`, `..` and the root's `lost+found` stay.
//! * Encrypted directories and symlinks (`EXT4_ENCRYPT_FL`) stay as they are: their names
//!   are ciphertext already. (Siphash, the hash of encrypted casefolded directories, is
//!   therefore never needed.)
//! * Nothing else of a name survives: deleted entries, the bytes after each name, the free
//!   space of directory blocks, stale index entries of htree nodes (`block`), the
//!   unmapped blocks of a bigalloc directory's clusters, the journal's log blocks (zeros:
//!   only a clean journal is accepted), and `i_block` and the in-inode xattr area of the
//!   inodes not in use (`inodes`, done as the inode table is read).
//! * Every checksum a change touches is stored again: dirent tails, dx tails, inodes (only
//!   those that verified), in-inode xattr entry hashes. Extent and xattr blocks are never
//!   changed.
//! * Deterministic: the same source and [`ScrambleOptions::seed`] give the same bytes.
//!
//! Built in one pre-pass ([`ScrambledView::build`]): the rewritten directory and symlink
//! blocks and inode records are kept in memory (bounded by the directory and symlink
//! metadata of the source), inode tables are rewritten as they are read (`view`).

mod block;
mod dirs;
mod inodes;
mod names;
mod pool;
mod range;
mod view;

pub use view::ScrambledView;

use crate::blockmap::inode_runs;
use crate::collect::{Collector, RunKind};
use crate::error::Error;
use crate::features::compat;
use crate::fs::Filesystem;
use crate::inode::{inode_flags, FileType, Inode};
use crate::itable::scan_all;
use crate::orphan::csum::Csum;
use crate::types::{BlockNr, InodeNr};
use crate::view::BlockView;
use crate::warning::Warning;
use std::collections::{BTreeMap, HashSet};

/// `EXT4_ENCRYPT_FL`: names (and the symlink target) are encrypted.
const EXT4_ENCRYPT_FL: u32 = 0x800;
/// Bytes of `i_block`: a shorter symlink target without blocks is a fast symlink.
const FAST_SYMLINK_MAX: u64 = 60;

/// How to scramble.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrambleOptions {
    /// The seed of every generated name and target (same seed, same output).
    pub seed: u64,
}

/// What the scrambling changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrambleReport {
    /// Directory entry names replaced.
    pub names: u64,
    /// Directories rewritten (block-mapped or inline).
    pub directories: u64,
    /// Symlink targets replaced.
    pub symlinks: u64,
    /// Encrypted directories and symlinks left as they are.
    pub encrypted_kept: u64,
    /// Journal blocks read as zeros (the log of a clean journal; its superblock stays).
    pub journal_blocks_zeroed: u64,
    /// Entries whose new name could not be put in its htree range, and broken entry
    /// chains: each names the directory inode, block and byte offset.
    pub warnings: Vec<Warning>,
}

/// What the pre-pass found: the rewritten blocks and inode records, and the counts.
#[derive(Default)]
pub(crate) struct Found {
    pub(crate) blocks: BTreeMap<u64, Vec<u8>>,
    pub(crate) records: BTreeMap<u32, Vec<u8>>,
    pub(crate) zeroed: Vec<(u64, u64)>,
    pub(crate) names: u64,
    pub(crate) directories: u64,
    pub(crate) symlinks: u64,
    pub(crate) encrypted: u64,
    pub(crate) warnings: Vec<Warning>,
    /// Warnings beyond those kept.
    pub(crate) warnings_omitted: u64,
}

impl<'v> ScrambledView<'v> {
    /// Builds the scrambled view of `fs` (opened on the view it scrambles) with `opts`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when the journal needs recovery (its log holds copies of
    /// directory blocks that cannot be scrambled in place: replay it first, the replayed
    /// view's journal is clean).
    pub fn build(
        fs: &Filesystem<&'v dyn BlockView>,
        opts: &ScrambleOptions,
    ) -> Result<(ScrambledView<'v>, ScrambleReport), Error> {
        let sb = &fs.sb;
        if sb.needs_recovery() {
            return Err(Error::Unsupported(
                "the journal needs recovery: its log holds old copies of directory blocks, which cannot be scrambled; replay it first".into(),
            ));
        }
        let view: &'v dyn BlockView = *fs.view();
        let csum = Csum::new(sb);
        let mut found = Found::default();
        let mut c = Collector::new(view, sb);
        scan_all(&mut c, &fs.groups, &mut |_, ino, inode| {
            visit(fs, &csum, ino, inode, opts.seed, &mut found);
        });
        zero_journal(fs, &mut found);
        if found.warnings_omitted > 0 {
            found.warnings.push(Warning {
                inode: None,
                block: None,
                offset: None,
                reason: format!(
                    "{} more directory entries could not be put in their htree range or broke their block's chain (not listed)",
                    found.warnings_omitted
                ),
            });
        }
        let report = ScrambleReport {
            names: found.names,
            directories: found.directories,
            symlinks: found.symlinks,
            encrypted_kept: found.encrypted,
            journal_blocks_zeroed: found.zeroed.iter().map(|z| z.1).sum(),
            warnings: std::mem::take(&mut found.warnings),
        };
        Ok((ScrambledView::new(fs, found, csum), report))
    }
}

/// Scrambles what in-use inode `ino` names: its directory entries or its symlink target.
fn visit<V: BlockView>(
    fs: &Filesystem<V>,
    csum: &Csum,
    ino: InodeNr,
    inode: &Inode,
    seed: u64,
    found: &mut Found,
) {
    let ft = inode.file_type();
    if !matches!(ft, FileType::Directory | FileType::Symlink) {
        return;
    }
    if inode.i_flags & EXT4_ENCRYPT_FL != 0 {
        found.encrypted += 1;
        return;
    }
    let inline = inode.has_flag(inode_flags::INLINE_DATA);
    if ft == FileType::Directory && !inline {
        dirs::scramble_dir(fs, ino, inode, seed, found);
        return;
    }
    if ft == FileType::Symlink && !inline && !is_fast_symlink(fs, inode) {
        slow_symlink(fs, ino, inode, seed, found);
        return;
    }
    let Ok(mut raw) = fs.read_inode_raw(ino) else {
        return;
    };
    let before = csum.inode_ok(ino.0, &raw);
    if ft == FileType::Directory {
        found.names += inodes::inline_dir(&fs.sb, ino.0, &mut raw, seed);
        found.directories += 1;
    } else {
        let size = usize::try_from(inode.i_size).unwrap_or(usize::MAX);
        inodes::symlink(&mut raw, ino.0, size, inline, seed);
        found.symlinks += 1;
    }
    inodes::store_csum(csum, ino.0, &mut raw, before);
    found.records.insert(ino.0, raw);
}

/// A symlink whose target is in `i_block`: shorter than 60 bytes and no block of its own
/// (`i_blocks` counts only an xattr block, if any), as the kernel decides.
fn is_fast_symlink<V: BlockView>(fs: &Filesystem<V>, inode: &Inode) -> bool {
    let cluster_sectors = u64::from(fs.sb.block_size) * u64::from(fs.sb.cluster_ratio.max(1)) / 512;
    let ea = if inode.i_file_acl != 0 {
        cluster_sectors
    } else {
        0
    };
    inode.i_size < FAST_SYMLINK_MAX && inode.i_blocks.saturating_sub(ea) == 0
}

/// The target block of slow symlink `ino`: the target scrambled, the rest zeroed.
fn slow_symlink<V: BlockView>(
    fs: &Filesystem<V>,
    ino: InodeNr,
    inode: &Inode,
    seed: u64,
    found: &mut Found,
) {
    let (runs, _) = inode_runs(fs, ino, inode);
    let Some(r) = runs
        .iter()
        .find(|r| matches!(r.kind, RunKind::Data { .. }) && r.logical == 0)
    else {
        return;
    };
    let bs = fs.sb.block_size as usize;
    let mut b = vec![0u8; bs];
    if fs.read_blocks(BlockNr(r.physical), &mut b).is_err() {
        return;
    }
    let size = usize::try_from(inode.i_size).unwrap_or(bs).min(bs);
    let mut rng = range::Rng::new(seed, u64::from(ino.0));
    block::scramble_target(&mut b[..size], &mut rng);
    b[size..].fill(0);
    found.blocks.insert(r.physical, b);
    zero_cluster_rest(fs, &runs, &[r.physical], found);
    found.symlinks += 1;
}

/// With bigalloc: the blocks of the clusters of `data` that `runs` (one inode's) do not map
/// read as zeros (the copy takes whole clusters; their stale bytes may hold old names).
pub(crate) fn zero_cluster_rest<V: BlockView>(
    fs: &Filesystem<V>,
    runs: &[crate::FileRun],
    data: &[u64],
    found: &mut Found,
) {
    let ratio = u64::from(fs.sb.cluster_ratio.max(1));
    if ratio == 1 {
        return;
    }
    let own: HashSet<u64> = runs
        .iter()
        .flat_map(|r| r.physical..r.physical.saturating_add(r.len))
        .collect();
    let bs = fs.sb.block_size as usize;
    let clusters: HashSet<u64> = data.iter().map(|p| p / ratio).collect();
    for c in clusters {
        for q in c * ratio..(c + 1) * ratio {
            if !own.contains(&q) && q < fs.sb.s_blocks_count {
                found.blocks.entry(q).or_insert_with(|| vec![0u8; bs]);
            }
        }
    }
}

/// The internal journal's blocks after its superblock read as zeros (the journal is clean:
/// `build` refused one that needs recovery, so its log is never replayed).
fn zero_journal<V: BlockView>(fs: &Filesystem<V>, found: &mut Found) {
    let sb = &fs.sb;
    let ino = sb.s_journal_inum;
    if !sb.has_compat(compat::HAS_JOURNAL) || sb.has_external_journal() || ino == 0 {
        return;
    }
    let Ok(raw) = fs.read_inode_raw(InodeNr(ino)) else {
        return;
    };
    let inode = Inode::parse(&raw, sb);
    let (runs, _) = inode_runs(fs, InodeNr(ino), &inode);
    for r in runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Data { .. }))
    {
        let (start, len) = if r.logical == 0 {
            (r.physical + 1, r.len - 1)
        } else {
            (r.physical, r.len)
        };
        if len > 0 {
            found.zeroed.push((start, len));
        }
    }
    found.zeroed.sort_unstable();
}
