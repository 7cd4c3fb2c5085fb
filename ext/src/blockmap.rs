//! The block map of one inode as runs: which blocks it owns, at which file offset, for the
//! block-owner scan (`owners`) and the directory reader (`dir`).
//!
//! The inode's map is walked by the same validated extent and indirect walkers as the copy
//! set, with the collector in run-recording mode: each mapped run comes with its logical
//! block (`ee_block`, or the slot position in an indirect map), tree blocks and xattr blocks
//! are told apart. Corruption becomes a [`Warning`] and the damaged part is skipped. Runs are
//! in filesystem blocks, never widened to bigalloc clusters.

use crate::blockset::BlockClass;
use crate::collect::{Collector, MappedRun, RunKind, TreeClasses};
use crate::error::Corrupt;
use crate::extent::walk_extents;
use crate::fs::Filesystem;
use crate::indirect::{snapshot_block_offset, snapshot_roots, standard_roots, walk_roots};
use crate::inode::{inode_flags, BlockMap, FileType, Inode, I_FILE_ACL_OFFSET, OSD1_OFFSET};
use crate::superblock::EXT2_OS_HURD;
use crate::types::{InodeNr, EXT2_BAD_INO};
use crate::view::BlockView;
use crate::warning::Warning;

/// A run of blocks owned by one inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRun {
    /// The owning inode.
    pub ino: InodeNr,
    /// First file block of a [`RunKind::Data`] run, in filesystem blocks (0 otherwise).
    pub logical: u64,
    /// First filesystem block of the run.
    pub physical: u64,
    /// Length of the run, in filesystem blocks (> 0).
    pub len: u64,
    /// What the blocks are to the inode.
    pub kind: RunKind,
    /// The owner is a next3 / ext4-snapshots snapshot file (`i_flags` SNAPFILE on a regular
    /// file): its data run at logical L holds image block L - (12 + block size / 4), the
    /// offset of the first block the DIND pointer maps.
    pub snapfile: bool,
}

impl FileRun {
    /// One past the last filesystem block of the run (saturating).
    pub fn end(&self) -> u64 {
        self.physical.saturating_add(self.len)
    }

    /// True for a snapshot file's data run of blocks "moved" into the snapshot in place:
    /// image block P stored in fs block P, i.e. mapped at logical P + 12 + `block_size` / 4
    /// (`block_size` in bytes). A run is contiguous both physically and
    /// logically, so this holds for all of its blocks or none.
    pub fn moved_into_snapshot(&self, block_size: u32) -> bool {
        self.snapfile
            && matches!(self.kind, RunKind::Data { .. })
            && self.physical.checked_add(snapshot_block_offset(block_size)) == Some(self.logical)
    }
}

/// The runs of one inode (read by the caller), in the order its map lists them (file order
/// for sane trees), with the warnings for the parts skipped.
pub(crate) fn inode_runs<V: BlockView>(
    fs: &Filesystem<V>,
    ino: InodeNr,
    inode: &Inode,
) -> (Vec<FileRun>, Vec<Warning>) {
    let view: &dyn BlockView = fs.view();
    let mut c = Collector::recording_runs(view, &fs.sb);
    let snapfile = record_inode(&mut c, ino, inode);
    let runs = c
        .take_runs()
        .into_iter()
        .map(|r| owned(r, ino, snapfile))
        .collect();
    (runs, c.take_warnings())
}

/// The run `r` recorded for inode `ino`, as a [`FileRun`].
pub(crate) fn owned(r: MappedRun, ino: InodeNr, snapfile: bool) -> FileRun {
    FileRun {
        ino,
        logical: r.logical,
        physical: r.physical,
        len: r.len,
        kind: r.kind,
        snapfile,
    }
}

/// Records the runs of one in-use inode into `c` (recording runs): data, tree and xattr runs
/// of regular files, directories and slow symlinks, the bad-blocks inode's list, and the
/// xattr blocks of all other inodes. Returns whether it is a snapshot file.
pub(crate) fn record_inode(c: &mut Collector<'_>, ino: InodeNr, inode: &Inode) -> bool {
    let sb = c.sb();
    let classes = TreeClasses {
        tree: BlockClass::Indirect,
        data: Some(BlockClass::Data),
    };
    if ino == EXT2_BAD_INO {
        if !inode.has_flag(inode_flags::EXTENTS) {
            walk_roots(c, ino, inode, &standard_roots(sb.block_size), classes);
        }
        return false;
    }
    if inode.is_blank() {
        return false;
    }
    record_block(c, ino, inode.i_file_acl, I_FILE_ACL_OFFSET, "i_file_acl");
    if sb.s_creator_os == EXT2_OS_HURD && inode.osd1 != 0 {
        let translator = u64::from(inode.osd1);
        record_block(c, ino, translator, OSD1_OFFSET, "Hurd translator");
    }
    let file_type = inode.file_type();
    if !matches!(
        file_type,
        FileType::Regular | FileType::Directory | FileType::Symlink
    ) {
        return false;
    }
    let snapfile = inode.is_snapshot_file();
    match inode.block_map(sb) {
        BlockMap::None => {}
        BlockMap::Extents => walk_extents(c, ino, &inode.i_block, classes),
        BlockMap::Indirect => {
            let roots = if snapfile {
                snapshot_roots(sb)
            } else {
                standard_roots(sb.block_size)
            };
            walk_roots(c, ino, inode, &roots, classes);
        }
    }
    snapfile
}

/// Records the single per-inode block `block` (0 = none) as an xattr run, or reports it
/// when it is outside the filesystem; `field` names it, at byte `offset` of the inode.
fn record_block(c: &mut Collector<'_>, ino: InodeNr, block: u64, offset: usize, field: &str) {
    if block == 0 {
        return;
    }
    match c.check_range(block, 1) {
        Ok(()) => c.push_run(MappedRun {
            logical: 0,
            physical: block,
            len: 1,
            kind: RunKind::Xattr,
        }),
        Err(kind) => {
            let note = format!("{field}; skipped");
            c.corrupt(
                Corrupt::new(kind)
                    .at_inode(ino)
                    .at_offset(offset as u32)
                    .with_note(note),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::tests::{run, DATA};
    use crate::inode::I_BLOCK_OFFSET;
    use crate::superblock::{Superblock, EXT4_SUPER_MAGIC};

    /// A 8 MiB device of 1 KiB blocks (256 pointers per block).
    struct Mem(Vec<u8>);

    impl BlockView for Mem {
        fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
            let o = offset as usize;
            buf.copy_from_slice(&self.0[o..o + buf.len()]);
            Ok(())
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
    }

    impl Mem {
        fn put32(&mut self, block: u64, index: usize, v: u32) {
            let o = block as usize * 1024 + index * 4;
            self.0[o..o + 4].copy_from_slice(&v.to_le_bytes());
        }
        fn put16(&mut self, block: u64, off: usize, v: u16) {
            let o = block as usize * 1024 + off;
            self.0[o..o + 2].copy_from_slice(&v.to_le_bytes());
        }
    }

    fn sb() -> Superblock {
        sb_with_blocks(8192)
    }

    fn sb_with_blocks(blocks: u32) -> Superblock {
        let mut b = vec![0u8; 1024];
        let put = |b: &mut [u8], o: usize, v: u32| b[o..o + 4].copy_from_slice(&v.to_le_bytes());
        let groups = (blocks - 1).div_ceil(8192);
        put(&mut b, 0x00, 2048 * groups); // s_inodes_count: groups × s_inodes_per_group
        put(&mut b, 0x04, blocks); // s_blocks_count_lo
        put(&mut b, 0x14, 1); // s_first_data_block
        put(&mut b, 0x20, 8192); // s_blocks_per_group
        put(&mut b, 0x24, 8192); // s_clusters_per_group
        put(&mut b, 0x28, 2048); // s_inodes_per_group
        b[0x38..0x3A].copy_from_slice(&EXT4_SUPER_MAGIC.to_le_bytes());
        put(&mut b, 0x4C, 1); // s_rev_level
        b[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        Superblock::parse(&b).unwrap()
    }

    fn inode(mode: u16, i_flags: u32, i_block: &[u32]) -> Inode {
        let mut raw = vec![0u8; 256];
        raw[0..2].copy_from_slice(&mode.to_le_bytes());
        raw[0x1A..0x1C].copy_from_slice(&1u16.to_le_bytes());
        raw[0x1C..0x20].copy_from_slice(&64u32.to_le_bytes());
        raw[0x20..0x24].copy_from_slice(&i_flags.to_le_bytes());
        for (i, p) in i_block.iter().enumerate() {
            let at = I_BLOCK_OFFSET + 4 * i;
            raw[at..at + 4].copy_from_slice(&p.to_le_bytes());
        }
        Inode::parse(&raw, &sb())
    }

    fn record(mem: &Mem, inode: &Inode) -> (Vec<MappedRun>, Vec<Warning>, bool) {
        let sb = sb();
        let mut c = Collector::recording_runs(mem, &sb);
        let snap = record_inode(&mut c, InodeNr(12), inode);
        (c.take_runs(), c.take_warnings(), snap)
    }

    #[test]
    fn indirect_map_logical_blocks_follow_slots() {
        let mut mem = Mem(vec![0u8; 8 << 20]);
        mem.put32(200, 0, 300); // IND: logical 12
        mem.put32(200, 3, 301); // logical 15
        mem.put32(200, 4, 302); // logical 16, contiguous with 15
        mem.put32(210, 1, 211); // DIND entry 1 → IND covering 12 + 256 + 256
        mem.put32(211, 2, 400); // logical 12 + 256 + 256 + 2
        mem.put32(211, 5, 9000); // outside the filesystem
        let mut i_block = [0u32; 15];
        (i_block[0], i_block[5], i_block[12], i_block[13]) = (100, 105, 200, 210);
        let (runs, warnings, snap) = record(&mem, &inode(0x81A4, 0, &i_block));
        assert!(!snap);
        assert_eq!(
            runs,
            vec![
                run(0, 100, 1, DATA),
                run(5, 105, 1, DATA),
                run(0, 200, 1, RunKind::Tree),
                run(12, 300, 1, DATA),
                run(15, 301, 2, DATA),
                run(0, 210, 2, RunKind::Tree),
                run(526, 400, 1, DATA),
            ]
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].block, Some(crate::types::BlockNr(211)));
        assert_eq!(warnings[0].offset, Some(20));
    }

    #[test]
    fn extent_tree_reports_ee_block_and_unwritten() {
        let mut mem = Mem(vec![0u8; 8 << 20]);
        let leaf = 500;
        for (off, v) in [(0, 0xF30A), (2, 2), (4, 84), (6, 0)] {
            mem.put16(leaf, off, v);
        }
        mem.put32(leaf, 3, 0); // ee_block 0
        mem.put16(leaf, 16, 3); // ee_len 3
        mem.put32(leaf, 5, 600); // ee_start_lo
        mem.put32(leaf, 6, 10); // ee_block 10
        mem.put16(leaf, 28, 32768 + 2); // unwritten, 2 blocks
        mem.put32(leaf, 8, 603);
        // Header: magic, 1 entry, eh_max 4, depth 1; then one index: ei_block 0, ei_leaf.
        let i_block = [0x0001_F30A, 0x0001_0004, 0, 0, leaf as u32, 0];
        let (runs, warnings, _) = record(&mem, &inode(0x81A4, inode_flags::EXTENTS, &i_block));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(
            runs,
            vec![
                run(0, leaf, 1, RunKind::Tree),
                run(0, 600, 3, DATA),
                run(10, 603, 2, RunKind::Data { unwritten: true }),
            ]
        );
    }

    #[test]
    fn xattr_block_and_devices() {
        let mem = Mem(vec![0u8; 8 << 20]);
        let mut fifo = inode(0x11A4, 0, &[77]);
        fifo.i_file_acl = 700;
        let (runs, warnings, _) = record(&mem, &fifo);
        assert!(warnings.is_empty());
        assert_eq!(runs, vec![run(0, 700, 1, RunKind::Xattr)]);
        fifo.i_file_acl = 1 << 40;
        let (runs, warnings, _) = record(&mem, &fifo);
        assert!(runs.is_empty());
        assert_eq!(warnings[0].offset, Some(I_FILE_ACL_OFFSET as u32));
    }

    #[test]
    fn huge_snapshot_file_uses_extra_tind_roots() {
        let apb = 256u64;
        let reach = apb * apb + apb * apb * apb;
        assert_eq!(
            snapshot_roots(&sb_with_blocks(reach as u32)),
            standard_roots(1024)
        );
        let roots = snapshot_roots(&sb_with_blocks(reach as u32 + 1));
        assert_eq!(roots.len(), 15);
        let tind = 12 + apb + apb * apb;
        for (slot, k) in [(0, 1), (1, 2), (2, 3)] {
            let r = roots.iter().find(|r| r.slot == slot).unwrap();
            assert_eq!((r.level, r.logical), (3, tind + k * apb * apb * apb));
        }
        assert!(roots
            .iter()
            .any(|r| r.slot == 3 && r.level == 0 && r.logical == 3));
    }

    #[test]
    fn small_snapshot_file_uses_standard_roots() {
        let mut mem = Mem(vec![0u8; 8 << 20]);
        mem.put32(210, 0, 211);
        mem.put32(211, 7, 7); // image block 7 moved in place
        let mut i_block = [0u32; 15];
        (i_block[0], i_block[13]) = (150, 210);
        let (runs, _, snap) = record(&mem, &inode(0x8180, inode_flags::SNAPFILE, &i_block));
        assert!(snap);
        let off = snapshot_block_offset(1024);
        assert_eq!(runs.last(), Some(&run(7 + off, 7, 1, DATA)));
        assert_eq!(runs[0], run(0, 150, 1, DATA));
    }

    #[test]
    fn moved_snapshot_blocks() {
        let off = snapshot_block_offset(4096);
        let mut r = FileRun {
            ino: InodeNr(12),
            logical: 500 + off,
            physical: 500,
            len: 3,
            kind: DATA,
            snapfile: true,
        };
        assert!(r.moved_into_snapshot(4096));
        r.physical = 501;
        assert!(!r.moved_into_snapshot(4096));
        r.physical = 500;
        r.snapfile = false;
        assert!(!r.moved_into_snapshot(4096));
        assert_eq!(r.end(), 503);
    }
}
