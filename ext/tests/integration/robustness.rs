//! The walker never panics and never hangs on byte-patched filesystems: random bytes of the
//! superblock, group descriptors, bitmaps, inode tables and tree blocks of the committed
//! images are overwritten (fixed-seed xorshift, so failures reproduce), then the image is
//! opened, walked, its snapshot list and maps read, its block owners listed and its inodes
//! named. A patched superblock gets its metadata_csum checksum fixed up, so that the patched
//! fields reach the geometry checks and the walker instead of failing the checksum. Orphan
//! processing runs on patched images whose `s_last_orphan` names one of their first inodes.

use crate::common::{fixture, gunzip_bytes};
use ext::{
    file_runs, inode_paths, release_orphans, snapshot_list, walk, BlockView, Filesystem, InodeNr,
    InodeTime, OpenOptions, SnapshotMap, SuperblockBytes, WalkOptions,
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

/// Orphan processing of byte-patched images whose `s_last_orphan` names one of inodes 11..51,
/// made orphans first: each of these may lose its links, have its size shortened and name
/// another as the next orphan (loops included), its checksum fixed up; then random bytes
/// are patched. Never a panic, never a hang, and every changed block is one block inside the
/// filesystem.
#[test]
fn patched_orphan_lists_never_panic() {
    let iterations: u64 = std::env::var("EXT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let now = InodeTime {
        secs: 1_800_000_000,
        nsecs: 0,
    };
    for name in ["ext4-small.img.gz", "ext2-1k.img.gz", "ext3-4k.img.gz"] {
        let base = gunzip_bytes(&fixture(name));
        let (bs, blocks) = metadata_blocks(&base);
        let records = inode_records(&base);
        let mut rng = XorShift(0x2545_F491_4F6C_DD1D ^ base.len() as u64);
        for _ in 0..iterations {
            let mut img = base.clone();
            let head = make_orphans(&mut img, &records, &mut rng);
            patch(&mut img, &mut rng, bs, &blocks);
            SuperblockBytes::new(&mut img[1024..2048])
                .unwrap()
                .set_last_orphan(head);
            fix_superblock_checksum(&mut img);
            let Ok(fs) = Filesystem::open(Mem(img), &OpenOptions::default()) else {
                continue;
            };
            let r = release_orphans(&fs, now);
            assert!(r
                .blocks
                .iter()
                .all(|(b, v)| v.len() == bs as usize && b.0 < fs.sb.s_blocks_count));
        }
    }
}

/// An inode record in an image: inode, byte offset, record size, the metadata_csum seed
/// when its checksum counts.
type Record = (u32, usize, usize, Option<u32>);

/// Where the records of inodes 11..51 in use lie in `img`.
fn inode_records(img: &[u8]) -> Vec<Record> {
    let fs = Filesystem::open(Mem(img.to_vec()), &OpenOptions::default()).unwrap();
    let sb = &fs.sb;
    let seed = sb.has_ro_compat(ext::ro_compat::METADATA_CSUM).then(|| {
        if sb.has_incompat(ext::incompat::CSUM_SEED) {
            u32::from_le_bytes(sb.raw[0x270..0x274].try_into().unwrap())
        } else {
            crc32c_raw(!0, &sb.raw[0x68..0x78])
        }
    });
    let isz = usize::from(sb.s_inode_size);
    (11..51)
        .filter_map(|i| {
            let raw = fs.read_inode_raw(InodeNr(i)).ok()?;
            if raw[0] == 0 && raw[1] == 0 {
                return None;
            }
            let at = (0..img.len() / isz).find(|k| img[k * isz..(k + 1) * isz] == raw[..])?;
            Some((i, at * isz, isz, seed))
        })
        .collect()
}

/// ext4's CRC-32C convention: the raw register, no final inversion.
fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// Makes some of `records` orphans (module comment of the test): links 0, a shorter size, a
/// next orphan; returns the head of the list.
fn make_orphans(img: &mut [u8], records: &[Record], rng: &mut XorShift) -> u32 {
    let pick = |rng: &mut XorShift| records[(rng.next() % records.len() as u64) as usize];
    let head = pick(rng);
    let mut at = head;
    for _ in 0..1 + rng.next() % 4 {
        let (ino, pos, isz, seed) = at;
        let next = pick(rng);
        let r = &mut img[pos..];
        if rng.next().is_multiple_of(2) {
            r[0x1A..0x1C].fill(0);
        }
        if rng.next().is_multiple_of(2) {
            let size = u32::from_le_bytes(r[4..8].try_into().unwrap());
            let shorter = (rng.next() % (u64::from(size) + 1)) as u32;
            r[4..8].copy_from_slice(&shorter.to_le_bytes());
        }
        r[0x14..0x18].copy_from_slice(&next.0.to_le_bytes());
        if let Some(seed) = seed {
            let gen = u32::from_le_bytes(r[0x64..0x68].try_into().unwrap());
            let s = crc32c_raw(crc32c_raw(seed, &ino.to_le_bytes()), &gen.to_le_bytes());
            let mut rec = r[..isz].to_vec();
            rec[0x7C..0x7E].fill(0);
            rec[0x82..0x84].fill(0);
            let c = crc32c_raw(s, &rec);
            r[0x7C..0x7E].copy_from_slice(&(c as u16).to_le_bytes());
            r[0x82..0x84].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
        }
        at = next;
    }
    head.0
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

/// Fast commits that pass the scan (good tail checksums) but name anything: inodes out of
/// range, special or free, ranges past the end or of any length, names of any bytes,
/// logged inode records of random bytes, on a dirty image (every third one byte-patched in
/// its metadata too); and byte-patched fast-commit blocks. Replaying must never panic or hang, what it changes stays inside the filesystem,
/// and the replayed state still opens and walks.
#[test]
fn hostile_fast_commits_never_panic() {
    use crate::journal::fast_commit::{commit_block, fc_image, head, replayed, write_area};
    if !crate::journal::tools() {
        return;
    }
    let iterations: u64 = std::env::var("EXT_FUZZ_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let dir = crate::common::Scratch::new("fc", "hostile");
    let fc = fc_image(&dir.0);
    let base = std::fs::read(&fc.img).unwrap();
    let blocks = (base.len() / fc.bs) as u64;
    let (bs, meta) = metadata_blocks(&base);
    let mut rng = XorShift(0x5EED_F00D_CAFE_0001);
    let (mut changed, mut refused) = (0, 0);
    for it in 0..iterations {
        let mut tags = head(fc.tid);
        let mut area = Vec::new();
        for _ in 0..1 + rng.next() % 12 {
            let t = hostile_tag(&mut rng, blocks, &fc.free, &fc.inos);
            if tags.len() + t.len() + 16 > fc.bs {
                area.push(commit_block(&tags, fc.tid, fc.bs));
                tags = Vec::new();
            }
            tags.extend(t);
        }
        area.push(commit_block(&tags, fc.tid, fc.bs));
        if it % 5 == 4 {
            let b = (rng.next() % area.len() as u64) as usize;
            let at = (rng.next() % fc.bs as u64) as usize;
            area[b][at] ^= 1 << (rng.next() % 8);
        }
        area.truncate(15);
        let mut img = base.clone();
        write_area(&mut img, &fc, &area);
        if it % 3 == 2 {
            // Corrupt structures under the fast commits: inodes, bitmaps, trees, directories.
            patch(&mut img, &mut rng, bs, &meta);
            fix_superblock_checksum(&mut img);
        }
        let Some((out, report)) = replayed(&img) else {
            continue;
        };
        assert!(report.blocks.iter().all(|b| b.0 < blocks), "{report:?}");
        changed += usize::from(!report.blocks.is_empty());
        refused += usize::from(report.tags == 0);
        if let Ok(fs) = Filesystem::open(Mem(out), &OpenOptions::default()) {
            check_patched(&fs);
        }
    }
    println!("{iterations} hostile fast commits: {changed} changed blocks, {refused} refused");
}

/// One tag of any kind with hostile values (valid lengths, so that the scan keeps it).
fn hostile_tag(rng: &mut XorShift, blocks: u64, free: &[u64], known: &[u32]) -> Vec<u8> {
    use crate::journal::fast_commit::{add_range, dentry, tl};
    let mut inos = vec![0u32, 1, 2, 2, 7, 8, 11, 20, 20, 2047, 2048, u32::MAX];
    inos.extend(known.iter().flat_map(|&i| [i, i]));
    let mut ino = || inos[(rng.next() % inos.len() as u64) as usize];
    let (a, b, c) = (ino(), ino(), ino());
    let mut any = |n: u64| rng.next() % n;
    match any(9) {
        0 => {
            let pblk = match any(4) {
                0 => free[0],
                1 => blocks - 1,
                2 => any(blocks * 2),
                _ => any(u64::MAX),
            };
            add_range(
                a,
                any(u64::from(u32::MAX)) as u32 % 40,
                any(65536) as u16,
                pblk,
            )
        }
        1 => {
            let v = [
                &a.to_le_bytes()[..],
                &(any(64) as u32).to_le_bytes(),
                &(any(u64::from(u32::MAX)) as u32).to_le_bytes(),
            ]
            .concat();
            tl(2, &v)
        }
        2..=3 => {
            let len = 1 + any(40) as usize;
            let name: Vec<u8> = (0..len).map(|_| any(256) as u8).collect();
            dentry(3 + any(3) as u16, b, c, &name)
        }
        4..=6 => {
            let mut r: Vec<u8> = (0..160).map(|_| any(256) as u8).collect();
            if any(16) != 0 {
                r[0..2].copy_from_slice(&0x81A4u16.to_le_bytes());
                r[0x1A] = 1;
                r[0x20..0x24].copy_from_slice(&0x80000u32.to_le_bytes());
                r[0x80..0x82].copy_from_slice(&32u16.to_le_bytes());
                r[0x68..0x6C].fill(0);
                r[0x6C..0x70].fill(0);
                r[0x76..0x78].fill(0);
                r[0x07] = 0;
            }
            tl(6, &[&a.to_le_bytes()[..], &r].concat())
        }
        _ => tl(7, &vec![0u8; any(64) as usize]),
    }
}
