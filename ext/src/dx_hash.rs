//! Directory-index name hashes (kernel `ext4fs_dirhash`): the legacy hash, half-MD4 and TEA,
//! each with the name's bytes taken as signed or unsigned chars, seeded by `s_hash_seed`.

/// `DX_HASH_*` versions (the unsigned variants are the signed ones + 3).
pub(crate) const DX_HASH_LEGACY: u8 = 0;
pub(crate) const DX_HASH_HALF_MD4: u8 = 1;
pub(crate) const DX_HASH_TEA: u8 = 2;
const DX_HASH_LEGACY_UNSIGNED: u8 = 3;
const DX_HASH_HALF_MD4_UNSIGNED: u8 = 4;
const DX_HASH_TEA_UNSIGNED: u8 = 5;
/// `EXT4_HTREE_EOF_32BIT`.
const HTREE_EOF_32: u32 = 0x7FFF_FFFF;

fn byte(c: u8, signed: bool) -> u32 {
    if signed {
        c as i8 as i32 as u32
    } else {
        u32::from(c)
    }
}

/// Kernel `dx_hack_hash_{signed,unsigned}`.
fn legacy(name: &[u8], signed: bool) -> u32 {
    let (mut h0, mut h1) = (0x12a3_fe2du32, 0x37ab_e8f9u32);
    for &c in name {
        let mut h = h1.wrapping_add(h0 ^ byte(c, signed).wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// Kernel `str2hashbuf_{signed,unsigned}`: `num` words from the name (padded by its length).
fn str2hashbuf(msg: &[u8], len: usize, num: usize, signed: bool) -> [u32; 8] {
    let mut buf = [0u32; 8];
    let mut pad = (len as u32) | ((len as u32) << 8);
    pad |= pad << 16;
    let mut val = pad;
    let len = len.min(num * 4);
    let (mut k, mut left) = (0usize, num as isize);
    for (i, &c) in msg.iter().take(len).enumerate() {
        val = byte(c, signed).wrapping_add(val << 8);
        if i % 4 == 3 {
            buf[k] = val;
            k += 1;
            val = pad;
            left -= 1;
        }
    }
    left -= 1;
    if left >= 0 {
        buf[k] = val;
        k += 1;
    }
    while left > 0 {
        left -= 1;
        buf[k] = pad;
        k += 1;
    }
    buf
}

fn half_md4(buf: &mut [u32; 4], x: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s)
        };
    }
    const K2: u32 = 0x5A82_7999;
    const K3: u32 = 0x6ED9_EBA1;
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    for (o, v) in buf.iter_mut().zip([a, b, c, d]) {
        *o = o.wrapping_add(v);
    }
}

fn tea(buf: &mut [u32; 4], x: &[u32; 8]) {
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let (a, b, c, d) = (x[0], x[1], x[2], x[3]);
    let mut sum = 0u32;
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ b1.wrapping_add(sum) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ b0.wrapping_add(sum) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

/// Byte offset of `s_hash_seed` (4 × le32) in the superblock.
const S_HASH_SEED: usize = 0xEC;
/// Byte offset of `s_flags` in the superblock.
const S_FLAGS: usize = 0x160;
/// `s_flags` bit: names hash as unsigned chars (`EXT2_FLAGS_UNSIGNED_HASH`).
const EXT2_FLAGS_UNSIGNED_HASH: u32 = 0x2;

/// The hash version a directory whose `dx_root_info.hash_version` is `root_version` uses on
/// the filesystem of superblock bytes `sb_raw` (the unsigned variant with
/// `EXT2_FLAGS_UNSIGNED_HASH`, as the kernel's `dx_probe` picks it), and `s_hash_seed`.
pub(crate) fn hash_setup(sb_raw: &[u8], root_version: u8) -> (u8, [u32; 4]) {
    let unsigned = crate::bytes::le32(sb_raw, S_FLAGS) & EXT2_FLAGS_UNSIGNED_HASH != 0;
    let mut seed = [0u32; 4];
    for (k, s) in seed.iter_mut().enumerate() {
        *s = crate::bytes::le32(sb_raw, S_HASH_SEED + 4 * k);
    }
    let version = if root_version <= DX_HASH_TEA && unsigned {
        root_version + 3
    } else {
        root_version
    };
    (version, seed)
}

/// The hash of `name` for hash `version` (with the unsigned offset already added) and
/// `seed`; `None` for an unknown version.
pub(crate) fn dirhash(name: &[u8], version: u8, seed: &[u32; 4]) -> Option<u32> {
    let mut buf = [0x6745_2301u32, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    if seed.iter().any(|&s| s != 0) {
        buf = *seed;
    }
    let hash = match version {
        DX_HASH_LEGACY => legacy(name, true),
        DX_HASH_LEGACY_UNSIGNED => legacy(name, false),
        DX_HASH_HALF_MD4 | DX_HASH_HALF_MD4_UNSIGNED => {
            let signed = version == DX_HASH_HALF_MD4;
            let mut p = 0;
            while p < name.len() {
                let x = str2hashbuf(&name[p..], name.len() - p, 8, signed);
                half_md4(&mut buf, &x);
                p += 32;
            }
            buf[1]
        }
        DX_HASH_TEA | DX_HASH_TEA_UNSIGNED => {
            let signed = version == DX_HASH_TEA;
            let mut p = 0;
            while p < name.len() {
                let x = str2hashbuf(&name[p..], name.len() - p, 4, signed);
                tea(&mut buf, &x);
                p += 16;
            }
            buf[0]
        }
        _ => return None,
    };
    let hash = hash & !1;
    Some(if hash == HTREE_EOF_32 << 1 {
        (HTREE_EOF_32 - 1) << 1
    } else {
        hash
    })
}

#[cfg(test)]
mod tests {
    use super::dirhash;

    /// Values computed by e2fsprogs 1.47 (`debugfs -R "dx_hash -h V -s SEED NAME"`).
    #[test]
    fn hashes_match_e2fsprogs() {
        let zero = [0u32; 4];
        // 01234567-89ab-cdef-0123-456789abcdef and 11111111-2222-3333-4444-555555555555.
        let s1 = [0x6745_2301, 0xefcd_ab89, 0x6745_2301, 0xefcd_ab89];
        let s2 = [0x1111_1111, 0x3333_2222, 0x5555_4444, 0x5555_5555];
        let long: &[u8] = b"file-with-a-longish-name-and-more-than-32-bytes-x";
        let e = "\u{e9}".as_bytes();
        for (name, v, seed, want) in [
            (&b"hello"[..], 1, zero, 0x1746_da32),
            (b"hello", 1, s1, 0xa26e_4a80),
            (long, 1, zero, 0x928b_d232),
            (long, 1, s2, 0x30da_db84),
            (long, 2, s2, 0xf14e_3f26),
            (e, 0, s1, 0x1108_3c86),
            (e, 3, s1, 0x878c_a486),
            (e, 1, s1, 0x5af4_5fb6),
            (e, 4, s1, 0xbf68_4ac8),
            (e, 2, s1, 0x591e_9bd6),
            (e, 5, s1, 0x6daf_7c00),
        ] {
            assert_eq!(dirhash(name, v, &seed), Some(want), "{name:?} v{v}");
        }
        assert_eq!(dirhash(b"x", 6, &zero), None);
    }
}
