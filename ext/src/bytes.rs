//! Little-endian (ext4) and big-endian (jbd2) field access on byte slices whose length was
//! validated by the caller, and the CRCs they use (crc32c for both, crc16 for gdt_csum).
//!
//! Every structure parser first checks that its buffer is at least the structure's size, so
//! these helpers index directly; an out-of-bounds offset is a bug in this crate, not bad
//! input.

pub(crate) fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub(crate) fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn le64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_be_bytes(a)
}

/// `lo | hi << 32`.
pub(crate) fn join(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | (u64::from(hi) << 32)
}

/// ext4's CRC-32C: the raw register chained from `seed`, without the final inversion
/// (e2fsprogs `ext2fs_crc32c_le`). `crc32c_raw(!0, d)` is the inverted standard CRC-32C of `d`.
pub(crate) fn crc32c_raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// CRC-16 with the reflected polynomial 0xA001 (CRC-16/ARC's), chained from `crc`, no final
/// xor: gdt_csum's descriptor checksum starts it at 0xFFFF (ext4-on-disk §13).
pub(crate) fn crc16(mut crc: u16, data: &[u8]) -> u16 {
    for &b in data {
        crc = (crc >> 8) ^ CRC16_TABLE[usize::from((crc ^ u16::from(b)) & 0xFF)];
    }
    crc
}

/// The byte-wise table of [`crc16`].
const CRC16_TABLE: [u16; 256] = crc16_table();

const fn crc16_table() -> [u16; 256] {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u16;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xA001
            } else {
                c >> 1
            };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc32c_raw_matches_the_ext4_test_vector() {
        // Standard CRC-32C("123456789") is 0xE3069283 (notes ext4-on-disk §13).
        assert_eq!(super::crc32c_raw(!0, b"123456789"), 0x1CF9_6D7C);
        let chained = super::crc32c_raw(super::crc32c_raw(!0, b"1234"), b"56789");
        assert_eq!(chained, 0x1CF9_6D7C);
    }

    #[test]
    fn crc16_matches_the_arc_and_modbus_check_values() {
        // CRC-16/ARC (init 0) and CRC-16/MODBUS (init 0xFFFF) of "123456789".
        assert_eq!(super::crc16(0, b"123456789"), 0xBB3D);
        assert_eq!(super::crc16(0xFFFF, b"123456789"), 0x4B37);
        let chained = super::crc16(super::crc16(0xFFFF, b"1234"), b"56789");
        assert_eq!(chained, 0x4B37);
    }
}
