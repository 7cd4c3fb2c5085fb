//! An independent structural checker for 16-bit-refcount images, written from the notes §2
//! (not using the crate's writer code): recomputes every cluster's refcount from the header,
//! all L1 tables, L2 tables, the snapshot table and the refcount structures, compares with the
//! stored refcounts, and checks the COPIED rule on the active layer. Works without QEMU.

use std::fs;
use std::path::Path;

use qcow::Header;

const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const COPIED: u64 = 1 << 63;
const COMPRESSED: u64 = 1 << 62;

fn be64(b: &[u8], at: u64) -> u64 {
    let at = at as usize;
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

fn be32(b: &[u8], at: u64) -> u32 {
    let at = at as usize;
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}

/// Facts found by [`verify_image`].
#[derive(Debug, Default)]
pub struct Verified {
    /// Active L1 entries with COPIED set.
    pub copied_l1: u64,
    /// Active L1 entries without COPIED.
    pub shared_l1: u64,
    /// Active L2 data entries with COPIED set.
    pub copied_data: u64,
    /// Active L2 data entries without COPIED.
    pub shared_data: u64,
}

/// Recomputes refcounts per spec §2.1 and asserts they equal the stored ones; asserts COPIED
/// in the active L1 and its L2 tables is set exactly where the refcount is 1, and never on
/// compressed entries in any table.
pub fn verify_image(path: &Path) -> Verified {
    let img = fs::read(path).unwrap();
    let h = Header::parse(&img).unwrap();
    assert_eq!(h.refcount_order, 4);
    let c = h.cluster_size();
    let cb = h.cluster_bits;
    let clusters = (img.len() as u64).div_ceil(c);
    let mut computed = vec![0u32; clusters as usize];
    let mut add = |off: u64, len: u64| {
        for k in off >> cb..=(off + len - 1) >> cb {
            computed[k as usize] += 1;
        }
    };
    add(0, c);
    // L1 tables: active first, then every snapshot's.
    let mut l1s = vec![(h.l1_table_offset, h.l1_size)];
    let mut off = h.snapshots_offset;
    for _ in 0..h.nb_snapshots {
        off = off.next_multiple_of(8);
        l1s.push((be64(&img, off), be32(&img, off + 8)));
        let extra = be32(&img, off + 36) as u64;
        let id = u16::from_be_bytes(
            img[off as usize + 12..off as usize + 14]
                .try_into()
                .unwrap(),
        ) as u64;
        let name = u16::from_be_bytes(
            img[off as usize + 14..off as usize + 16]
                .try_into()
                .unwrap(),
        ) as u64;
        off += 40 + extra + id + name;
    }
    if h.nb_snapshots > 0 {
        add(h.snapshots_offset, off - h.snapshots_offset);
    }
    let x = 62 - (cb - 8);
    for &(l1_off, l1_size) in &l1s {
        add(l1_off, u64::from(l1_size) * 8);
        for i in 0..u64::from(l1_size) {
            let l2 = be64(&img, l1_off + 8 * i) & OFFSET_MASK;
            if l2 == 0 {
                continue;
            }
            add(l2, c);
            for j in 0..c / 8 {
                let e = be64(&img, l2 + 8 * j);
                if e & COMPRESSED != 0 {
                    assert_eq!(e & COPIED, 0, "COPIED on a compressed entry");
                    let host = e & ((1 << x) - 1);
                    let n = (e & !(COPIED | COMPRESSED)) >> x;
                    add(host, (n + 1) * 512 - (host & 511));
                } else if e & OFFSET_MASK != 0 {
                    add(e & OFFSET_MASK, c);
                }
            }
        }
    }
    let rt = h.refcount_table_offset;
    add(rt, u64::from(h.refcount_table_clusters) * c);
    let mut stored = vec![0u32; clusters as usize];
    for k in 0..u64::from(h.refcount_table_clusters) * c / 8 {
        let rb = be64(&img, rt + 8 * k) & OFFSET_MASK;
        if rb == 0 {
            continue;
        }
        add(rb, c);
        for i in 0..c / 2 {
            let cluster = k * (c / 2) + i;
            if cluster < clusters {
                stored[cluster as usize] = u32::from(u16::from_be_bytes(
                    img[(rb + 2 * i) as usize..(rb + 2 * i + 2) as usize]
                        .try_into()
                        .unwrap(),
                ));
            }
        }
    }
    for k in 0..clusters as usize {
        assert_eq!(
            stored[k], computed[k],
            "cluster {k}: stored refcount {} != computed {}",
            stored[k], computed[k]
        );
    }
    verify_copied(&img, &h, &stored)
}

fn verify_copied(img: &[u8], h: &Header, rc: &[u32]) -> Verified {
    let (c, cb) = (h.cluster_size(), h.cluster_bits);
    let mut v = Verified::default();
    for i in 0..u64::from(h.l1_size) {
        let e = be64(img, h.l1_table_offset + 8 * i);
        let l2 = e & OFFSET_MASK;
        if l2 == 0 {
            continue;
        }
        let exclusive = rc[(l2 >> cb) as usize] == 1;
        assert_eq!(
            e & COPIED != 0,
            exclusive,
            "active L1[{i}] = {e:#x}, refcount {}",
            rc[(l2 >> cb) as usize]
        );
        if exclusive {
            v.copied_l1 += 1
        } else {
            v.shared_l1 += 1
        }
        for j in 0..c / 8 {
            let d = be64(img, l2 + 8 * j);
            if d & COMPRESSED != 0 || d & OFFSET_MASK == 0 {
                assert_eq!(
                    d & COPIED,
                    0,
                    "COPIED on a compressed/unallocated entry {d:#x}"
                );
                continue;
            }
            let n = rc[((d & OFFSET_MASK) >> cb) as usize];
            assert_eq!(
                d & COPIED != 0,
                n == 1,
                "active L2 entry {d:#x} (L1[{i}], entry {j}), refcount {n}"
            );
            if n == 1 {
                v.copied_data += 1
            } else {
                v.shared_data += 1
            }
        }
    }
    v
}
