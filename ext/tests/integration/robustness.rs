//! The walker never panics and never hangs on byte-patched filesystems: random bytes of the
//! superblock, group descriptors, bitmaps, inode tables and tree blocks of the committed
//! images are overwritten (fixed-seed xorshift, so failures reproduce), then the image is
//! opened, walked, its snapshot list and maps read, its block owners listed and its inodes
//! named. A patched superblock gets its metadata_csum checksum fixed up, so that the patched
//! fields reach the geometry checks and the walker instead of failing the checksum.

use crate::common::{fixture, gunzip_bytes};
use ext::{
    file_runs, inode_paths, snapshot_list, walk, BlockView, Filesystem, InodeNr, OpenOptions,
    SnapshotMap, SuperblockBytes, WalkOptions,
};

/// An in-memory image.
struct Mem(Vec<u8>);

impl BlockView for Mem {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(self.0.len());
        let end = start.saturating_add(buf.len()).min(self.0.len());
        buf[..end - start].copy_from_slice(&self.0[start..end]);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
}

/// Recomputes `s_checksum` when the superblock has RO_COMPAT_METADATA_CSUM.
fn fix_superblock_checksum(img: &mut [u8]) {
    SuperblockBytes::new(&mut img[1024..2048])
        .unwrap()
        .update_checksum();
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Blocks worth patching: every block the unpatched walk would copy (metadata only).
fn metadata_blocks(img: &[u8]) -> (u32, Vec<u64>) {
    let fs = Filesystem::open(Mem(img.to_vec()), &OpenOptions::default()).unwrap();
    let r = walk(&fs, &WalkOptions::default());
    let blocks = r
        .blocks
        .extents()
        .iter()
        .filter(|e| e.class != ext::BlockClass::Journal)
        .flat_map(|e| e.start..e.end())
        .collect();
    (fs.sb.block_size, blocks)
}

#[test]
fn patched_images_never_panic() {
    let iterations: u64 = std::env::var("EXT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    for name in [
        "ext4-small.img.gz",
        "ext2-1k.img.gz",
        "ext3-4k.img.gz",
        "ext4-bigalloc.img.gz",
    ] {
        let base = gunzip_bytes(&fixture(name));
        let (bs, blocks) = metadata_blocks(&base);
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15 ^ base.len() as u64);
        for _ in 0..iterations {
            let mut img = base.clone();
            patch(&mut img, &mut rng, bs, &blocks);
            fix_superblock_checksum(&mut img);
            let Ok(fs) = Filesystem::open(Mem(img), &OpenOptions::default()) else {
                continue;
            };
            check_patched(&fs);
        }
    }
}

/// Overwrites 1 to 16 random bytes of `img`: mostly of the metadata `blocks` (of `bs` bytes),
/// sometimes of the superblock itself.
fn patch(img: &mut [u8], rng: &mut XorShift, bs: u32, blocks: &[u64]) {
    for _ in 0..(1 + rng.next() % 16) {
        let off = if rng.next().is_multiple_of(8) {
            1024 + (rng.next() % 1024) as usize
        } else {
            let b = blocks[(rng.next() % blocks.len() as u64) as usize];
            b as usize * bs as usize + (rng.next() % u64::from(bs)) as usize
        };
        let v = match rng.next() % 4 {
            0 => 0,
            1 => 0xff,
            _ => rng.next() as u8,
        };
        if let Some(byte) = img.get_mut(off) {
            *byte = v;
        }
    }
}

/// Walks, lists snapshots and their maps, block owners and paths of a patched image that
/// opened: nothing may panic, and what is returned stays inside the filesystem.
fn check_patched(fs: &Filesystem<Mem>) {
    let r = walk(
        fs,
        &WalkOptions {
            data: true,
            no_snapshot_files: false,
        },
    );
    assert!(r
        .blocks
        .extents()
        .iter()
        .all(|e| e.end() <= fs.sb.s_blocks_count));
    let (list, _) = snapshot_list(fs);
    for s in &list {
        let _ = SnapshotMap::build(fs, s);
    }
    let (runs, _) = file_runs(fs, &|_, _| true);
    assert!(runs.windows(2).all(|w| w[0].physical <= w[1].physical));
    assert!(runs
        .iter()
        .all(|r| r.len > 0 && r.physical > 0 && r.end() <= fs.sb.s_blocks_count));
    let (paths, _) = inode_paths(fs, &(1..64).map(InodeNr).collect::<Vec<_>>());
    assert!(paths
        .values()
        .all(|p| p.starts_with('/') || p.starts_with("...")));
}
