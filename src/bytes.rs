//! Integers, byte arrays and NUL-padded strings at byte offsets of a buffer: the one set of
//! byte readers and writers of the binary (patch files, undo files, the export record;
//! superblock fields are edited through `ext::SuperblockBytes`). Offsets are checked by the
//! callers' fixed-size buffers; an offset past the end is a bug and panics.

/// Little-endian u32 at `at`.
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(get_array(b, at))
}

/// Little-endian u64 at `at`.
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(get_array(b, at))
}

/// Big-endian u16 at `at`.
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes(get_array(b, at))
}

/// Big-endian u32 at `at`.
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(get_array(b, at))
}

/// Big-endian u64 at `at`.
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(get_array(b, at))
}

/// Writes `v` little-endian at `at`.
pub fn put_le32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` little-endian at `at`.
pub fn put_le64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes `v` big-endian at `at`.
pub fn put_be16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

/// Writes `v` big-endian at `at`.
pub fn put_be32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Writes `v` big-endian at `at`.
pub fn put_be64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub fn cut_str(s: &str, max: usize) -> &str {
    let mut n = s.len().min(max);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    &s[..n]
}

/// The `N` bytes at `at`.
pub fn get_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[at..at + N]);
    a
}

/// Writes `s` into the `len`-byte field at `at`, cut at a character boundary so that at least
/// one NUL byte ends it.
pub fn put_str(b: &mut [u8], at: usize, len: usize, s: &str) {
    let s = cut_str(s, len - 1);
    b[at..at + s.len()].copy_from_slice(s.as_bytes());
}

/// The NUL-terminated string in the `len`-byte field at `at` (lossy UTF-8).
pub fn get_str(b: &[u8], at: usize, len: usize) -> String {
    let f = &b[at..at + len];
    let end = f.iter().position(|&c| c == 0).unwrap_or(len);
    String::from_utf8_lossy(&f[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut b = [0u8; 32];
        b[..2].copy_from_slice(&[0x34, 0x12]);
        put_le32(&mut b, 2, 0xdead_beef);
        put_le64(&mut b, 6, 0x0102_0304_0506_0708);
        put_be32(&mut b, 14, 0x6532_6972);
        let mut c = [0u8; 10];
        put_be16(&mut c, 0, 0x0102);
        put_be64(&mut c, 2, 0x0304_0506_0708_090a);
        assert_eq!((be16(&c, 0), be64(&c, 2)), (0x0102, 0x0304_0506_0708_090a));
        assert_eq!(c, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(le32(&b, 2), 0xdead_beef);
        assert_eq!(le64(&b, 6), 0x0102_0304_0506_0708);
        assert_eq!(&b[14..18], b"e2ir");
        assert_eq!(be32(&b, 14), 0x6532_6972);
        put_str(&mut b, 18, 6, "héllo-world");
        assert_eq!(get_str(&b, 18, 6), "héll");
    }
}
