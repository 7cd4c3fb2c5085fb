//! The replay phase (kernel `ext4_fc_replay` and its handlers), tag after tag in the order
//! of the log, then `ext4_fc_set_bitmaps_and_counters` for the inodes the tags changed:
//!
//! * INODE (`ext4_fc_replay_inode`): the inode's old blocks freed (`ext4_ext_clear_bb`),
//!   its record overwritten by the logged one except `i_block` (kept, an extent root reset
//!   when its magic is wrong; copied for inline data), marked in use, `i_blocks` recounted;
//! * ADD_RANGE / DEL_RANGE: extents added, changed or removed in the inode's tree;
//! * CREAT / LINK / UNLINK: directory entries (`__ext4_link`, `__ext4_unlink`), a new
//!   directory's first block, an inode whose last name goes deleted as `ext4_evict_inode`
//!   deletes it (blocks, extended attribute block, inode freed).
//!
//! The kernel ignores most failures inside a handler (the tag's effect stops); a failure
//! of CREAT, LINK or UNLINK, or of the re-read of a replayed inode, fails its whole recovery
//! and the mount: the caller then gets [`Stop::KernelFails`]. Where the kernel stamps the time
//! of its replay, [`Fs::now`] is used.

use super::dir::{init_new_dir, Added};
use super::extents::{Tree, EXT_MAX_BLOCKS};
use super::extents_rm::soft;
use super::inode::{
    MemInode, EXT4_EXTENTS_FL, EXT4_INDEX_FL, EXT4_INLINE_DATA_FL, I_BLOCK, I_CTIME, I_FLAGS,
    I_GENERATION,
};
use super::scan::{DentryOp, Tag};
use super::store::{FcError, Fr, Fs};
use crate::bytes::{le16, le32};
use crate::features::compat;
use std::collections::BTreeSet;

/// `EXT4_LINK_MAX`.
const EXT4_LINK_MAX: u16 = 65000;
/// `EXT4_XATTR_MAGIC`.
const EXT4_XATTR_MAGIC: u32 = 0xEA02_0000;

/// Why the replay did not complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The kernel's recovery fails at this tag (it refuses to mount).
    KernelFails(String),
    /// A read error or a bound.
    Abandoned(String),
}

/// The replay's state.
pub(crate) struct Replay<'v> {
    pub(crate) fs: Fs<'v>,
    verified: BTreeSet<u64>,
    /// Kernel `fc_modified_inodes`, in order.
    modified: Vec<u32>,
    /// What was not replayed as the kernel replays it, or looked corrupt.
    pub(crate) notes: Vec<String>,
    /// True when a note says the result may differ from the kernel's.
    pub(crate) inexact: bool,
}

impl<'v> Replay<'v> {
    pub(crate) fn new(fs: Fs<'v>) -> Replay<'v> {
        Replay {
            fs,
            verified: BTreeSet::new(),
            modified: Vec::new(),
            notes: Vec::new(),
            inexact: false,
        }
    }

    fn tree<'a>(&'a mut self, i: &'a mut MemInode) -> Tree<'a, 'v> {
        Tree {
            fs: &mut self.fs,
            i,
            verified: &mut self.verified,
        }
    }

    fn record(&mut self, ino: u32) {
        if !self.modified.contains(&ino) {
            self.modified.push(ino);
        }
    }

    /// A handler step whose corruption ends only the tag (the kernel returns 0 there).
    fn soft(&mut self, at: u64, r: Fr<()>) -> Fr<()> {
        match r {
            Err(FcError::Corrupt(m)) => {
                self.notes.push(format!(
                    "journal block {at}: {m} (the kernel's replay of this tag stops there too)"
                ));
                Ok(())
            }
            other => other,
        }
    }

    /// Every tag, then the bitmaps.
    pub(crate) fn run(&mut self, tags: &[(u64, Tag)]) -> Result<(), Stop> {
        for (at, tag) in tags {
            let r = match tag {
                Tag::Marker => Ok(()),
                Tag::Inode { ino, raw } => self.inode(*at, *ino, raw),
                Tag::AddRange {
                    ino,
                    lblk,
                    len,
                    unwritten,
                    pblk,
                } => self.add_range(*at, *ino, *lblk, u32::from(*len), *unwritten, *pblk),
                Tag::DelRange { ino, lblk, len } => self.del_range(*at, *ino, *lblk, *len),
                Tag::Dentry {
                    op,
                    parent,
                    ino,
                    name,
                } => match op {
                    DentryOp::Unlink => self.unlink(*at, *parent, *ino, name),
                    DentryOp::Link => self.link(*at, *parent, *ino, name),
                    DentryOp::Creat => self.create(*at, *parent, *ino, name),
                },
            };
            self.outcome(*at, r)?;
        }
        let r = self.set_bitmaps();
        self.outcome(0, r)
    }

    fn outcome(&mut self, at: u64, r: Fr<()>) -> Result<(), Stop> {
        match r {
            Ok(()) => Ok(()),
            Err(FcError::Unsupported(m)) => {
                self.notes.push(format!(
                    "journal block {at}: {m}: not replayed as the kernel replays it"
                ));
                self.inexact = true;
                Ok(())
            }
            Err(FcError::Corrupt(m)) => Err(Stop::KernelFails(format!("journal block {at}: {m}"))),
            Err(FcError::Fatal(m)) => Err(Stop::Abandoned(format!("journal block {at}: {m}"))),
        }
    }

    /// `iget`, or `None` when the kernel's fails (the handlers then skip the tag).
    fn iget(&mut self, ino: u32) -> Fr<Option<MemInode>> {
        Ok(self.fs.iget(ino)?.ok())
    }

    /// Kernel `ext4_fc_replay_inode`.
    fn inode(&mut self, at: u64, ino: u32, logged: &[u8]) -> Fr<()> {
        if let Some(mut old) = self.iget(ino)? {
            let r = self.tree_steps(&mut old, false, |t| t.clear_bb());
            self.soft(at, r)?;
        }
        self.record(ino);
        let Ok(mut raw) = self.fs.raw_inode(ino) else {
            return Ok(());
        };
        raw[..I_BLOCK].copy_from_slice(&logged[..I_BLOCK]);
        raw[I_GENERATION..logged.len()].copy_from_slice(&logged[I_GENERATION..]);
        let flags = le32(&raw, I_FLAGS);
        if flags & EXT4_EXTENTS_FL != 0 {
            if le16(&raw, I_BLOCK) != 0xF30A {
                raw[I_BLOCK..I_BLOCK + 12].fill(0);
                raw[I_BLOCK..I_BLOCK + 2].copy_from_slice(&0xF30Au16.to_le_bytes());
                raw[I_BLOCK + 4..I_BLOCK + 6].copy_from_slice(&4u16.to_le_bytes());
            }
        } else if flags & EXT4_INLINE_DATA_FL != 0 {
            raw[I_BLOCK..I_BLOCK + 60].copy_from_slice(&logged[I_BLOCK..I_BLOCK + 60]);
        }
        self.fs.put_raw_inode(ino, &raw)?;
        if soft(self.fs.mark_inode_used(ino))?.is_none() {
            return Ok(());
        }
        let Some(mut i) = self.iget(ino)? else {
            return Err(FcError::Corrupt(format!(
                "inode {ino} cannot be read after its replay"
            )));
        };
        if !i.inline_data() {
            let r = if !i.has_extents() && reads_empty(&i) {
                // What the kernel's count finds in a zeroed or device `i_block`: nothing.
                i.set_blocks512(&self.fs, 0)
                    .and_then(|()| self.fs.write_inode(&i))
            } else {
                self.tree_steps(&mut i, true, |t| t.replay_set_iblocks())
            };
            self.soft(at, r)?;
        }
        let mut rec = self.fs.raw_inode(ino)?;
        let extra = i.extra_isize();
        self.fs.inode_csum_set(ino, &mut rec, extra);
        self.fs.put_raw_inode(ino, &rec)
    }

    /// Runs tree steps on inode `i`. Without extents: steps that only read (`!writes`) find
    /// nothing in an `i_block` that reads as an empty extent root (what the kernel's tree
    /// code sees in a zeroed or device inode); anything else is not done as the kernel does.
    fn tree_steps(
        &mut self,
        i: &mut MemInode,
        writes: bool,
        f: impl FnOnce(&mut Tree<'_, 'v>) -> Fr<()>,
    ) -> Fr<()> {
        if i.has_extents() {
            return f(&mut self.tree(i));
        }
        if !writes && reads_empty(i) {
            return Ok(());
        }
        Err(FcError::Unsupported(format!(
            "inode {} maps its blocks without extents",
            i.ino
        )))
    }

    /// Kernel `ext4_fc_replay_add_range`.
    fn add_range(
        &mut self,
        at: u64,
        ino: u32,
        start: u32,
        len: u32,
        uw: bool,
        pblk: u64,
    ) -> Fr<()> {
        let Some(mut i) = self.iget(ino)? else {
            return Ok(());
        };
        self.record(ino);
        let r = self.tree_steps(&mut i, true, |t| t.add_range(start, len, uw, pblk));
        self.soft(at, r)
    }

    /// Kernel `ext4_fc_replay_del_range`.
    fn del_range(&mut self, at: u64, ino: u32, lblk: u32, len: u32) -> Fr<()> {
        let Some(mut i) = self.iget(ino)? else {
            return Ok(());
        };
        self.record(ino);
        let r = self.tree_steps(&mut i, true, |t| t.del_range(lblk, len));
        self.soft(at, r)
    }

    /// Kernel `ext4_fc_replay_unlink` / `__ext4_unlink`.
    fn unlink(&mut self, at: u64, parent: u32, ino: u32, name: &[u8]) -> Fr<()> {
        let Some(mut inode) = self.iget(ino)? else {
            return Ok(());
        };
        let Some(mut dir) = self.iget(parent)? else {
            return Ok(());
        };
        if ino == parent {
            return Err(FcError::Unsupported(format!(
                "inode {ino} unlinked from itself"
            )));
        }
        let slot = self.tree(&mut dir).find_entry(name)?;
        let Some(slot) = slot else {
            return Ok(());
        };
        if slot.ino == ino {
            let now = self.fs.now;
            {
                let mut t = self.tree(&mut dir);
                t.delete_entry(slot)?;
                t.update_dx_flag();
            }
            dir.set_mtime(now);
            dir.set_ctime(now);
            self.fs.write_inode(&dir)?;
        }
        inode.set_links(inode.links().saturating_sub(1));
        inode.set_ctime(self.fs.now);
        self.fs.write_inode(&inode)?;
        if inode.links() == 0 {
            let r = self.evict(&mut inode);
            self.soft(at, r)?;
        }
        Ok(())
    }

    /// Kernel `ext4_fc_replay_link`.
    fn link(&mut self, at: u64, parent: u32, ino: u32, name: &[u8]) -> Fr<()> {
        let Some(mut inode) = self.iget(ino)? else {
            return Ok(());
        };
        self.link_internal(at, parent, name, &mut inode)
    }

    /// Kernel `ext4_fc_replay_link_internal` / `__ext4_link`.
    fn link_internal(
        &mut self,
        _at: u64,
        parent: u32,
        name: &[u8],
        inode: &mut MemInode,
    ) -> Fr<()> {
        let Some(mut dir) = self.iget(parent)? else {
            return Ok(());
        };
        if parent == inode.ino {
            return Err(FcError::Unsupported(format!(
                "inode {parent} linked into itself"
            )));
        }
        inode.set_ctime(self.fs.now);
        let dx = self.fs.sb.has_compat(compat::DIR_INDEX) && inode.flags() & EXT4_INDEX_FL != 0;
        let n = inode.links().wrapping_add(1);
        inode.set_links(if dx && (n > EXT4_LINK_MAX || n == 2) {
            1
        } else {
            n
        });
        let r = self.tree(&mut dir).add_entry(name, inode.ino, inode.mode());
        match r {
            Ok(Added::Exact) => self.fs.write_inode(inode),
            Ok(Added::Exists) => {
                inode.set_links(inode.links().wrapping_sub(1));
                Ok(())
            }
            Err(e) => {
                inode.set_links(inode.links().wrapping_sub(1));
                Err(e)
            }
        }
    }

    /// Kernel `ext4_fc_replay_create`.
    fn create(&mut self, at: u64, parent: u32, ino: u32, name: &[u8]) -> Fr<()> {
        self.fs.mark_inode_used(ino)?;
        let Some(mut inode) = self.iget(ino)? else {
            return Err(FcError::Corrupt(format!(
                "created inode {ino} cannot be read"
            )));
        };
        if inode.is_dir() {
            if self.iget(parent)?.is_none() {
                return Ok(());
            }
            match soft(init_new_dir(&mut self.tree(&mut inode), parent))? {
                Some(()) => {}
                None => return Ok(()),
            }
        }
        self.link_internal(at, parent, name, &mut inode)?;
        inode.set_links(1);
        self.fs.write_inode(&inode)
    }

    /// Kernel `ext4_evict_inode` of an inode without links: its blocks and extended
    /// attribute block released, deletion time set, the inode freed.
    fn evict(&mut self, i: &mut MemInode) -> Fr<()> {
        let now = self.fs.now;
        if i.inline_data() {
            return Err(FcError::Unsupported(format!(
                "deleting inline-data inode {}",
                i.ino
            )));
        }
        let fast_symlink = i.is_fast_symlink(&self.fs);
        if fast_symlink {
            i.i_block_mut().fill(0);
        }
        self.fs.write_inode(i)?;
        let truncatable =
            i.is_reg() || i.is_dir() || (i.mode() & 0xF000 == 0xA000 && !fast_symlink);
        if i.blocks512(&self.fs) != 0 && truncatable {
            i.set_size(0);
            self.fs.write_inode(i)?;
            self.tree_steps(i, true, |t| t.remove_space(0, EXT_MAX_BLOCKS - 1))?;
            i.set_mtime(now);
            i.set_ctime(now);
            self.fs.write_inode(i)?;
        }
        self.release_xattr_block(i)?;
        i.set_dtime(now.secs);
        self.fs.write_inode(i)?;
        self.fs.free_inode(i.ino, i.is_dir())
    }

    /// Kernel `ext4_xattr_delete_inode` for the extended attribute block.
    fn release_xattr_block(&mut self, i: &mut MemInode) -> Fr<()> {
        let b = i.file_acl(&self.fs);
        if b == 0 {
            return Ok(());
        }
        let blk = self.fs.block(b)?.to_vec();
        if le32(&blk, 0) != EXT4_XATTR_MAGIC || le32(&blk, 8) != 1 {
            return Err(FcError::Corrupt(format!(
                "inode {}: extended attribute block {b}",
                i.ino
            )));
        }
        let refs = le32(&blk, 4);
        if refs <= 1 {
            self.fs.free_blocks(b, 1)?;
        } else {
            let m = self.fs.block_mut(b)?;
            m[4..8].copy_from_slice(&(refs - 1).to_le_bytes());
            self.fs.xattr_block_csum_set(b)?;
            let n = i.blocks512(&self.fs).saturating_sub(self.fs.bs as u64 >> 9);
            i.set_blocks512(&self.fs, n)?;
            self.fs.write_inode(i)?;
        }
        i.set_file_acl(0);
        self.fs.write_inode(i)
    }

    /// Kernel `ext4_fc_set_bitmaps_and_counters`.
    fn set_bitmaps(&mut self) -> Fr<()> {
        for ino in self.modified.clone() {
            let Some(mut i) = self.iget(ino)? else {
                continue;
            };
            if i.inline_data() {
                self.notes.push(format!(
                    "inode {ino}: inline data: its blocks are not marked as the kernel marks them"
                ));
                self.inexact = true;
                continue;
            }
            let r = self.tree_steps(&mut i, false, |t| t.mark_used());
            self.soft(0, r)?;
        }
        Ok(())
    }

    /// The time stamped where the kernel stamps its replay's time (module comment of
    /// `fast_commit`): the newest change time of the replayed inode records.
    pub(crate) fn stamp(tags: &[(u64, Tag)], fallback: u32) -> super::store::Stamp {
        let mut best: Option<(i64, u32, u32)> = None;
        for (_, t) in tags {
            if let Tag::Inode { raw, .. } = t {
                let secs = le32(raw, I_CTIME);
                let extra = if raw.len() >= 0x88 && usize::from(le16(raw, 0x80)) >= 8 {
                    le32(raw, 0x84)
                } else {
                    0
                };
                let key = i64::from(secs as i32) + (i64::from(extra & 3) << 32);
                if best.is_none_or(|(k, _, e)| (key, extra >> 2) > (k, e >> 2)) {
                    best = Some((key, secs, extra));
                }
            }
        }
        match best {
            Some((_, secs, extra)) => super::store::Stamp { secs, extra },
            None => super::store::Stamp {
                secs: fallback,
                extra: 0,
            },
        }
    }
}

/// An `i_block` the kernel's tree code reads as an empty extent root (no entries, depth 0).
fn reads_empty(i: &MemInode) -> bool {
    let b = i.i_block();
    le16(b, 2) == 0 && le16(b, 6) == 0
}

impl Tree<'_, '_> {
    /// The tree part of `ext4_fc_replay_add_range`.
    fn add_range(&mut self, start: u32, len: u32, uw: bool, spblk: u64) -> Fr<()> {
        let mut cur = start;
        let mut remaining = len;
        while remaining > 0 {
            let m = self.map(cur, remaining)?;
            let want = spblk.wrapping_add(u64::from(cur.wrapping_sub(start)));
            if m.ret == 0 {
                let path = self.find(cur)?;
                let mut raw = m.len as u16;
                if uw {
                    raw |= 0x8000;
                }
                let new = super::extents::NewExt {
                    lblk: cur,
                    raw_len: raw,
                    pblk: want,
                };
                self.insert_extent(path, new, false)?;
            } else if want != m.pblk {
                self.replay_update_ex(cur, m.len, uw, want)?;
                self.fs.mark_bb(m.pblk, u64::from(m.len), false)?;
            } else {
                self.replay_update_ex(cur, m.len, uw, m.pblk)?;
                self.replay_shrink(start.wrapping_add(len))?;
            }
            cur = cur.wrapping_add(m.len);
            remaining -= m.len;
        }
        let end = (self.i.size(self.fs) >> (10 + self.fs.sb.s_log_block_size)) as u32;
        self.replay_shrink(end)
    }

    /// The tree part of `ext4_fc_replay_del_range`.
    fn del_range(&mut self, lblk: u32, len: u32) -> Fr<()> {
        let (mut cur, mut remaining) = (lblk, len);
        while remaining > 0 {
            let m = self.map(cur, remaining)?;
            if m.len == 0 {
                break;
            }
            if m.ret > 0 {
                self.fs.mark_bb(m.pblk, u64::from(m.len), false)?;
            }
            remaining -= m.len;
            cur = cur.wrapping_add(m.len);
        }
        self.remove_space(lblk, lblk.wrapping_add(len).wrapping_sub(1))?;
        let end = (self.i.size(self.fs) >> (10 + self.fs.sb.s_log_block_size)) as u32;
        self.replay_shrink(end)?;
        self.fs.write_inode(self.i)
    }
}
