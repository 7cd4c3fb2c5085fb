//! The scrambled blocks of one directory: its htree mapped from the root (which block is a
//! node, which a leaf and the hash range of each leaf), then every block rewritten: nodes
//! scrubbed, leaves (and the blocks of a linear directory) scrambled, each checksum stored
//! again. The whole directory is read first (memory: one directory's blocks), so that no
//! new name is one the directory held.

use super::block::{scrub_dx_node, Chain};
use super::pool::Pool;
use super::range::{HashRange, Rng};
use super::Found;
use crate::blockmap::inode_runs;
use crate::bytes::{le16, le32};
use crate::checksum::store_dir_block_checksum;
use crate::collect::RunKind;
use crate::dir::parse_block;
use crate::dx_hash::hash_setup;
use crate::features::{incompat, ro_compat};
use crate::fs::Filesystem;
use crate::inode::{inode_csum_seed, Inode};
use crate::types::{BlockNr, InodeNr, EXT2_ROOT_INO};
use crate::view::BlockView;
use crate::warning::Warning;
use std::collections::{BTreeMap, HashSet};

/// `EXT4_INDEX_FL`: the directory is an htree.
pub(crate) const EXT4_INDEX_FL: u32 = 0x1000;
/// `EXT4_CASEFOLD_FL`: names compare (and hash) casefolded.
pub(crate) const EXT4_CASEFOLD_FL: u32 = 0x4000_0000;
/// Byte offsets in the htree root: `dx_root_info.hash_version`, `info_length`,
/// `indirect_levels`, then the count/limit pair.
const ROOT_HASH_VERSION: usize = 0x1C;
const ROOT_INFO_LENGTH: usize = 0x1D;
const ROOT_LEVELS: usize = 0x1E;
const ROOT_COUNT: usize = 0x20;
/// Count/limit pair of an interior node.
const NODE_COUNT: usize = 8;
/// Warnings kept; the others are counted.
const MAX_WARNINGS: usize = 32;
/// Deepest htree (largedir: 3 levels of index).
const MAX_LEVELS: u8 = 3;

/// What a directory block is.
#[derive(Clone, Copy, Debug)]
enum Role {
    /// An htree node whose count/limit pair is at this offset.
    Node(usize),
    /// A leaf of the htree with its hash range.
    Leaf(HashRange),
}

/// One directory block read: logical, physical, bytes.
type Blk = (u64, u64, Vec<u8>);

/// Scrambles the blocks of directory `ino` into `found` (the blocks of an encrypted
/// directory are left to the caller, which skips it).
pub(crate) fn scramble_dir<V: BlockView>(
    fs: &Filesystem<V>,
    ino: InodeNr,
    inode: &Inode,
    seed: u64,
    found: &mut Found,
) {
    let sb = &fs.sb;
    let bs = sb.block_size as usize;
    let (runs, _) = inode_runs(fs, ino, inode); // the walk reports corrupt trees
    let mut blocks: Vec<Blk> = Vec::new();
    for r in runs
        .iter()
        .filter(|r| matches!(r.kind, RunKind::Data { .. }))
    {
        for k in 0..r.len {
            let mut buf = vec![0u8; bs];
            if fs.read_blocks(BlockNr(r.physical + k), &mut buf).is_ok() {
                blocks.push((r.logical + k, r.physical + k, buf));
            }
        }
    }
    let filetype = sb.has_incompat(incompat::FILETYPE);
    let originals: HashSet<Vec<u8>> = blocks
        .iter()
        .flat_map(|(_, _, b)| parse_block(b, filetype))
        .map(|e| e.name)
        .collect();
    let roles = if inode.i_flags & EXT4_INDEX_FL != 0 {
        htree_roles(fs, &blocks)
    } else {
        BTreeMap::new()
    };
    let csum = sb.has_ro_compat(ro_compat::METADATA_CSUM);
    let iseed = inode_csum_seed(sb.metadata_csum_seed(), ino.0, inode.i_generation);
    let mut chain = Chain {
        filetype,
        root: ino == EXT2_ROOT_INO,
        block_size: bs,
        casefold: inode.i_flags & EXT4_CASEFOLD_FL != 0,
        originals: &originals,
        used: HashSet::new(),
        misses: 0,
        pool: Pool::new(
            roles
                .values()
                .filter_map(|r| match r {
                    Role::Leaf(h) => Some(*h),
                    Role::Node(_) => None,
                })
                .collect(),
        ),
    };
    let mut rng = Rng::new(seed, u64::from(ino.0));
    let data: Vec<u64> = blocks.iter().map(|b| b.1).collect();
    for (logical, physical, mut b) in blocks {
        let role = roles.get(&logical).copied();
        if let Some(Role::Node(at)) = role {
            scrub_dx_node(&mut b, at, csum);
        } else {
            let range = match role {
                Some(Role::Leaf(r)) => Some(r),
                _ => None,
            };
            let tail = if csum && has_dirent_tail(&b) { 12 } else { 0 };
            let end = bs - tail;
            let r = chain.scramble(&mut b[..end], &mut rng, range.as_ref());
            found.names += r.scrambled;
            for off in r.out_of_range {
                found.warn(ino, physical, off, "no scrambled name of the entry's length (or up to its rec_len) hashes into its htree leaf's range: it got a name outside the range, and e2fsck will report the directory's index");
            }
            if let Some(off) = r.broken_at {
                found.warn(ino, physical, off, "directory entry chain broken (impossible rec_len or name_len): zeroed from this entry on");
            }
        }
        if csum {
            store_dir_block_checksum(iseed, &mut b);
        }
        found.blocks.insert(physical, b);
    }
    super::zero_cluster_rest(fs, &runs, &data, found);
    found.directories += 1;
}

/// True if the last 12 bytes of `b` are a dirent tail (inode 0, rec_len 12, name_len 0,
/// file type 0xDE) and the chain lands on it.
fn has_dirent_tail(b: &[u8]) -> bool {
    let t = b.len() - 12;
    if !(le32(b, t) == 0 && le16(b, t + 4) == 12 && b[t + 6] == 0 && b[t + 7] == 0xDE) {
        return false;
    }
    let mut off = 0;
    while off < t {
        let r = crate::checksum::rec_len(le16(b, off + 4), b.len());
        if r < 8 {
            return false;
        }
        off += r;
    }
    off == t
}

/// The role of each htree block (by logical block), from the root at logical 0; empty when
/// the root is not a valid htree root (the directory is then scrambled as linear blocks, and
/// the walk reports it).
fn htree_roles<V: BlockView>(fs: &Filesystem<V>, blocks: &[Blk]) -> BTreeMap<u64, Role> {
    let mut roles = BTreeMap::new();
    let by_logical: BTreeMap<u64, &[u8]> =
        blocks.iter().map(|(l, _, b)| (*l, b.as_slice())).collect();
    let Some(root) = by_logical.get(&0) else {
        return roles;
    };
    if root.len() < ROOT_COUNT + 4 || root[ROOT_INFO_LENGTH] != 8 || root[ROOT_LEVELS] >= MAX_LEVELS
    {
        return roles;
    }
    let (version, seed) = hash_setup(&fs.sb.raw, root[ROOT_HASH_VERSION]);
    let bounds = HashRange {
        lo: 0,
        hi: None,
        version,
        seed,
    };
    roles.insert(0, Role::Node(ROOT_COUNT));
    let levels = root[ROOT_LEVELS];
    node(&by_logical, root, ROOT_COUNT, levels, bounds, &mut roles);
    roles
}

/// Records the children of the node `b` (count/limit at `at`, `levels` index levels below
/// it) whose own range is `bounds`.
fn node(
    by_logical: &BTreeMap<u64, &[u8]>,
    b: &[u8],
    at: usize,
    levels: u8,
    bounds: HashRange,
    roles: &mut BTreeMap<u64, Role>,
) {
    let limit = usize::from(le16(b, at));
    let count = usize::from(le16(b, at + 2));
    if count == 0 || count > limit || at + 8 * count > b.len() {
        return;
    }
    for i in 0..count {
        let e = at + 8 * i;
        let child = u64::from(le32(b, e + 4) & 0x0fff_ffff);
        let lo = if i == 0 { bounds.lo } else { le32(b, e) };
        let hi = if i + 1 < count {
            Some(le32(b, e + 8))
        } else {
            bounds.hi
        };
        let range = HashRange { lo, hi, ..bounds };
        if roles.contains_key(&child) {
            continue; // a loop or a shared child: the walk reports the tree
        }
        if levels == 0 {
            roles.insert(child, Role::Leaf(range));
        } else if let Some(cb) = by_logical.get(&child) {
            roles.insert(child, Role::Node(NODE_COUNT));
            node(by_logical, cb, NODE_COUNT, levels - 1, range, roles);
        }
    }
}

impl Found {
    /// Adds a warning naming directory `ino`, its block `block` and byte `offset`.
    /// Past [`MAX_WARNINGS`], only counted.
    pub(crate) fn warn(&mut self, ino: InodeNr, block: u64, offset: usize, reason: &str) {
        if self.warnings.len() >= MAX_WARNINGS {
            self.warnings_omitted += 1;
            return;
        }
        self.warnings.push(Warning {
            inode: Some(ino),
            block: Some(BlockNr(block)),
            offset: u32::try_from(offset).ok(),
            reason: reason.to_string(),
        });
    }
}
