//! next3 / ext4-snapshots in-filesystem snapshots: the snapshot list, each snapshot file's
//! block map, and the read-through view that rebuilds a snapshot's block device image.
//!
//! The list runs from `s_snapshot_list` through `i_next_snapshot` (osd1), newest first. A
//! snapshot file maps physical block P of the snapshot image at logical block
//! P + 12 + block_size/4 (so image block 0 is the first DIND-mapped block), with further TIND
//! roots in `i_block[0..3]` for filesystems over 2^20 + 2^30 blocks. Snapshot k's image reads
//! block P from its own file, else from the next newer snapshots', else from the live device,
//! where block bitmaps are masked with the exclude bitmap and exclude bitmaps read as zeros.
//! Maps are built once per snapshot by walking its indirect tree (bounded like every walk).

use crate::bytes::le32;
use crate::error::{Corrupt, CorruptKind};
use crate::fs::Filesystem;
use crate::inode::{flags, FileType, Inode};
use crate::superblock::{compat, ro_compat};
use crate::view::BlockView;
use crate::walk::{Collector, Warning};
use crate::InodeNr;
use std::collections::{HashMap, HashSet};
use std::io;

/// One snapshot file on the list.
#[derive(Clone, Debug)]
pub struct SnapshotFile {
    /// Its inode.
    pub ino: InodeNr,
    /// Snapshot id (`i_generation`).
    pub id: u32,
    /// Creation time: the inode's ctime, seconds since the epoch.
    pub ctime: u64,
    /// Nanoseconds of the ctime (0 without extra inode fields).
    pub ctime_nsec: u32,
    /// SNAPFILE_DELETED: kept only as a read-through link for older snapshots.
    pub deleted: bool,
    /// Filesystem size at the take, in blocks (`i_size / block_size - 12 - block_size/4`).
    pub blocks: u64,
    /// The inode itself.
    pub inode: Inode,
}

/// Largest snapshot image, in blocks: the format addresses 2^32 blocks (16 TiB at 4 KiB).
pub const MAX_SNAPSHOT_BLOCKS: u64 = 1 << 32;

/// Logical block of the snapshot file that holds image block 0: `12 + block_size / 4`.
pub fn snapshot_block_offset(block_size: u32) -> u64 {
    12 + u64::from(block_size / 4)
}

/// Reads the snapshot list (newest first). Problems (a loop, a non-snapshot inode on the
/// list, an unreadable inode) end the list early and are reported.
pub fn snapshot_list<V: BlockView>(fs: &Filesystem<V>) -> (Vec<SnapshotFile>, Vec<Warning>) {
    let sb = &fs.sb;
    let mut list = Vec::new();
    let mut warnings = Vec::new();
    if !sb.has_ro_compat(ro_compat::HAS_SNAPSHOT) {
        return (list, warnings);
    }
    let mut seen = HashSet::new();
    let mut ino = sb.s_snapshot_list;
    while ino != 0 {
        let warn = |reason: String| Warning {
            inode: Some(InodeNr(ino)),
            block: None,
            offset: None,
            reason,
        };
        if !seen.insert(ino) {
            warnings.push(warn(
                "snapshot list loops back to this inode; list cut here".into(),
            ));
            break;
        }
        let inode = match fs.read_inode_raw(ino) {
            Ok(raw) => Inode::parse(&raw, sb),
            Err(e) => {
                warnings.push(warn(format!("snapshot list: {e}; list cut here")));
                break;
            }
        };
        if !inode.has_flag(flags::SNAPFILE) || inode.file_type() != FileType::Regular {
            warnings.push(warn(
                "snapshot list entry is not a snapshot file (no SNAPFILE flag); list cut here"
                    .into(),
            ));
            break;
        }
        let offset = snapshot_block_offset(sb.block_size);
        let mut blocks = (inode.i_size / u64::from(sb.block_size)).saturating_sub(offset);
        if blocks == 0 || blocks > MAX_SNAPSHOT_BLOCKS {
            warnings.push(warn(format!(
                "snapshot size {} bytes gives {blocks} blocks; using the filesystem size",
                inode.i_size
            )));
            blocks = sb.s_blocks_count;
        }
        let t = inode.ctime();
        let (ctime, ctime_nsec) = (t.secs.max(0) as u64, t.nsecs.min(999_999_999));
        list.push(SnapshotFile {
            ino: InodeNr(ino),
            id: inode.i_generation,
            ctime,
            ctime_nsec,
            deleted: inode.has_flag(flags::SNAPFILE_DELETED),
            blocks,
            inode: inode.clone(),
        });
        ino = inode.osd1;
    }
    (list, warnings)
}

/// A snapshot file's map from image block P to the block X holding P's content in the
/// snapshot (X == P for a moved block, X != P for a copy).
#[derive(Clone, Debug, Default)]
pub struct SnapshotMap {
    entries: Vec<(u64, u64)>,
}

impl SnapshotMap {
    /// Walks the snapshot file's indirect tree. Tree and mapped blocks are checked against the
    /// filesystem size; problems are returned as warnings and the bad subtree is skipped.
    pub fn build<V: BlockView>(
        fs: &Filesystem<V>,
        snap: &SnapshotFile,
    ) -> (SnapshotMap, Vec<Warning>) {
        let sb = &fs.sb;
        let view: &dyn BlockView = fs.view();
        let mut c = Collector::new(view, sb);
        let apb = u64::from(sb.block_size / 4);
        let mut entries = Vec::new();
        let mut roots = vec![(13usize, 2u8, 0u64), (14, 3, apb * apb)];
        for k in 1..=3u64 {
            roots.push((((14 + k) % 15) as usize, 3, apb * apb + k * apb * apb * apb));
        }
        let mut visited = HashSet::new();
        for (slot, level, base) in roots {
            let root = u64::from(snap.inode.block_ptr(slot));
            if root == 0 {
                continue;
            }
            let mut m = MapWalk {
                c: &mut c,
                ino: snap.ino,
                apb,
                visited: &mut visited,
                out: &mut entries,
            };
            m.node(root, level, base, Some(0x28 + 4 * slot as u32));
        }
        entries.sort_unstable();
        entries.dedup_by_key(|e| e.0);
        let (_, warnings) = c.into_parts();
        (SnapshotMap { entries }, warnings)
    }

    /// Where image block `p` is stored in this snapshot, if it is.
    pub fn get(&self, p: u64) -> Option<u64> {
        self.entries
            .binary_search_by_key(&p, |e| e.0)
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// Number of mapped blocks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of moved blocks (X == P).
    pub fn moved(&self) -> usize {
        self.entries.iter().filter(|e| e.0 == e.1).count()
    }
}

struct MapWalk<'a, 'c> {
    c: &'a mut Collector<'c>,
    ino: InodeNr,
    apb: u64,
    visited: &'a mut HashSet<u64>,
    out: &'a mut Vec<(u64, u64)>,
}

impl MapWalk<'_, '_> {
    /// Visits the block `b` of `level` (1 = IND) whose first entry maps image block `base`.
    /// `in_inode` is the byte offset of the pointer when it comes from `i_block`.
    fn node(&mut self, b: u64, level: u8, base: u64, in_inode: Option<u32>) {
        if let Err(kind) = self.c.check_range(b, 1) {
            let c = Corrupt::new(kind).at_inode(self.ino);
            self.c.corrupt(match in_inode {
                Some(o) => c.at_offset(o),
                None => c,
            });
            return;
        }
        if !self.visited.insert(b) {
            return;
        }
        let Some(buf) = self.c.read_block(self.ino, b) else {
            return;
        };
        let span = self.apb.pow(u32::from(level) - 1);
        for i in 0..self.apb as usize {
            let x = u64::from(le32(&buf, i * 4));
            if x == 0 {
                continue;
            }
            let p = base + i as u64 * span;
            if level > 1 {
                self.node(x, level - 1, p, None);
            } else if self.c.check_range(x, 1).is_ok() {
                self.out.push((p, x));
            } else {
                let kind = CorruptKind::IndirectPointer { value: x };
                self.c.corrupt(
                    Corrupt::new(kind)
                        .at_inode(self.ino)
                        .at_block(b, (i * 4) as u32),
                );
            }
        }
    }
}

/// Where one image block of a snapshot view comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// A block of the device (a snapshot's copy, or the live block).
    Device(u64),
    /// A live block bitmap masked with this exclude bitmap block.
    MaskedBitmap(u64, u64),
    /// Zeros (exclude bitmaps, and blocks past the image).
    Zero,
}

/// The rebuilt block device image of one snapshot, read through its own map, the newer
/// snapshots' maps and the live device.
pub struct SnapshotView<'a> {
    live: &'a dyn BlockView,
    block_size: u32,
    /// This snapshot's map first, then the next newer ones up to the newest.
    maps: Vec<&'a SnapshotMap>,
    /// Live block bitmap block → that group's exclude bitmap block.
    masks: HashMap<u64, u64>,
    /// Exclude bitmap blocks.
    exclude: HashSet<u64>,
    /// Image size in blocks.
    blocks: u64,
}

impl<'a> SnapshotView<'a> {
    /// The view of snapshot `index` of `list` (newest first) over `fs`'s device, with `maps`
    /// built for every snapshot of the list (same order).
    pub fn new<V: BlockView>(
        fs: &'a Filesystem<V>,
        list: &'a [SnapshotFile],
        maps: &'a [SnapshotMap],
        index: usize,
    ) -> SnapshotView<'a> {
        let sb = &fs.sb;
        let mut masks = HashMap::new();
        let mut exclude = HashSet::new();
        if sb.has_compat(compat::EXCLUDE_BITMAP) {
            for gd in fs.groups.iter().filter(|g| g.bg_exclude_bitmap != 0) {
                masks.insert(gd.bg_block_bitmap, gd.bg_exclude_bitmap);
                exclude.insert(gd.bg_exclude_bitmap);
            }
        }
        let chain = (0..=index.min(maps.len().saturating_sub(1)))
            .rev()
            .map(|j| &maps[j])
            .collect();
        SnapshotView {
            live: fs.view(),
            block_size: sb.block_size,
            maps: chain,
            masks,
            exclude,
            blocks: list.get(index).map_or(0, |s| s.blocks),
        }
    }

    /// Image size in blocks (the filesystem size at the take).
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    fn source(&self, p: u64) -> Source {
        if p >= self.blocks {
            return Source::Zero;
        }
        if let Some(x) = self.maps.iter().find_map(|m| m.get(p)) {
            return Source::Device(x);
        }
        if self.exclude.contains(&p) {
            return Source::Zero;
        }
        match self.masks.get(&p) {
            Some(&e) => Source::MaskedBitmap(p, e),
            None => Source::Device(p),
        }
    }

    /// Reads image blocks `[first, first + n)` into `buf` (n whole blocks).
    fn read_whole_blocks(&self, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = self.block_size as usize;
        let n = buf.len() / bs;
        let mut i = 0;
        while i < n {
            let src = self.source(first + i as u64);
            // Coalesce a run of blocks that read from consecutive device blocks.
            let mut j = i + 1;
            if let Source::Device(x) = src {
                while j < n && self.source(first + j as u64) == Source::Device(x + (j - i) as u64) {
                    j += 1;
                }
            }
            let out = &mut buf[i * bs..j * bs];
            match src {
                Source::Zero => out.fill(0),
                Source::Device(x) => self.live.read_blocks(self.block_size, x, out)?,
                Source::MaskedBitmap(p, e) => {
                    self.live.read_blocks(self.block_size, p, out)?;
                    let mut mask = vec![0u8; bs];
                    self.live.read_blocks(self.block_size, e, &mut mask)?;
                    out.iter_mut().zip(mask).for_each(|(b, m)| *b &= !m);
                }
            }
            i = j;
        }
        Ok(())
    }
}

impl BlockView for SnapshotView<'_> {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let bs = u64::from(self.block_size);
        let first = offset / bs;
        let end = offset + buf.len() as u64;
        let last = end.div_ceil(bs);
        if offset.is_multiple_of(bs) && end.is_multiple_of(bs) {
            return self.read_whole_blocks(first, buf);
        }
        let mut tmp = vec![0u8; ((last - first) * bs) as usize];
        self.read_whole_blocks(first, &mut tmp)?;
        let skip = (offset - first * bs) as usize;
        buf.copy_from_slice(&tmp[skip..skip + buf.len()]);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.blocks * u64::from(self.block_size)
    }
}

/// Names of the given inodes from directory entries: first in `/.snapshots`, then in every
/// directory flagged SNAPFILE or, failing that, every directory. Inodes without an entry are
/// absent from the result.
pub fn snapshot_names<V: BlockView>(fs: &Filesystem<V>, inos: &[u32]) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    let wanted: HashSet<u32> = inos.iter().copied().collect();
    let root_entries = crate::dir::dir_entries(fs, 2);
    if let Some(snapdir) = root_entries.iter().find(|e| e.name == b".snapshots") {
        collect_names(
            &crate::dir::dir_entries(fs, snapdir.inode),
            &wanted,
            &mut names,
        );
    }
    if names.len() < wanted.len() {
        collect_names(&root_entries, &wanted, &mut names);
    }
    if names.len() < wanted.len() {
        for ino in directory_inodes(fs) {
            collect_names(&crate::dir::dir_entries(fs, ino), &wanted, &mut names);
            if names.len() == wanted.len() {
                break;
            }
        }
    }
    names
}

fn collect_names(
    entries: &[crate::dir::DirEntry],
    wanted: &HashSet<u32>,
    names: &mut HashMap<u32, String>,
) {
    for e in entries {
        if wanted.contains(&e.inode) && e.name != b"." && e.name != b".." {
            names
                .entry(e.inode)
                .or_insert_with(|| String::from_utf8_lossy(&e.name).into_owned());
        }
    }
}

/// Directory inodes of the filesystem (in use, linked), SNAPFILE-flagged ones first.
fn directory_inodes<V: BlockView>(fs: &Filesystem<V>) -> Vec<u32> {
    let view: &dyn BlockView = fs.view();
    let mut c = Collector::new(view, &fs.sb);
    let (mut flagged, mut plain) = (Vec::new(), Vec::new());
    crate::walk::scan_all(&mut c, &fs.groups, &mut |_, ino, inode| {
        if inode.file_type() == FileType::Directory && inode.i_links_count > 0 {
            if inode.has_flag(flags::SNAPFILE) {
                flagged.push(ino.0)
            } else {
                plain.push(ino.0)
            }
        }
    });
    flagged.extend(plain);
    flagged
}

/// Warning for a snapshot that cannot be exported as a state.
pub fn skipped(snap: &SnapshotFile, why: &str) -> Warning {
    Warning {
        inode: Some(snap.ino),
        block: None,
        offset: None,
        reason: format!("snapshot {}: {why}", snap.id),
    }
}
