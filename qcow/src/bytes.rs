//! Big-endian integers: the crate's one way of reading and writing on-disk numbers.
//!
//! Design: QCOW2 stores every integer big-endian. [`BigEndian`] reads or writes one field at a
//! byte position (std's `from_be_bytes` / `to_be_bytes`), the slice helpers turn tables of
//! entries (L1, L2, refcount table and blocks) into bytes and back, and [`be_struct!`] declares
//! an on-disk record as a `repr(C)` struct whose fields are read and written at their
//! `offset_of!` positions, so a record's layout is stated once, by its struct.

/// A fixed-size value stored big-endian: an unsigned integer or a byte array.
pub(crate) trait BigEndian: Copy {
    /// Size in bytes.
    const SIZE: usize;

    /// Reads the value at byte `at` of `b`. Panics if `b` is shorter than `at + SIZE` (callers
    /// pass buffers whose length they have checked or fixed by type).
    fn get(b: &[u8], at: usize) -> Self;

    /// Writes the value at byte `at` of `b`. Panics if `b` is shorter than `at + SIZE`.
    fn put(self, b: &mut [u8], at: usize);
}

macro_rules! impl_big_endian {
    ($($t:ty),*) => {$(
        impl BigEndian for $t {
            const SIZE: usize = size_of::<$t>();

            fn get(b: &[u8], at: usize) -> $t {
                let mut a = [0u8; size_of::<$t>()];
                a.copy_from_slice(&b[at..at + Self::SIZE]);
                <$t>::from_be_bytes(a)
            }

            fn put(self, b: &mut [u8], at: usize) {
                b[at..at + Self::SIZE].copy_from_slice(&self.to_be_bytes());
            }
        }
    )*};
}

impl_big_endian!(u8, u16, u32, u64);

impl<const N: usize> BigEndian for [u8; N] {
    const SIZE: usize = N;

    fn get(b: &[u8], at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&b[at..at + N]);
        a
    }

    fn put(self, b: &mut [u8], at: usize) {
        b[at..at + N].copy_from_slice(&self);
    }
}

/// Decodes big-endian values (table entries) from `bytes`: `bytes.len() / SIZE` of them, a
/// trailing partial value ignored.
pub(crate) fn decode_be<T: BigEndian>(bytes: &[u8]) -> Vec<T> {
    bytes.chunks_exact(T::SIZE).map(|c| T::get(c, 0)).collect()
}

/// Appends `values` to `out` as big-endian bytes.
pub(crate) fn encode_be<T: BigEndian>(values: &[T], out: &mut Vec<u8>) {
    out.reserve(values.len() * T::SIZE);
    for &v in values {
        push_be(out, v);
    }
}

/// Appends one big-endian value to `out`.
pub(crate) fn push_be<T: BigEndian>(out: &mut Vec<u8>, value: T) {
    let start = out.len();
    out.resize(start + T::SIZE, 0);
    value.put(out, start);
}

/// Declares an on-disk record of big-endian fields as a `#[repr(C)]` struct (no padding: the
/// caller asserts its size and field offsets against the spec at compile time), with
/// `LEN` (its size in bytes), `decode` and `encode`, which read and write each field at its
/// `offset_of!` position.
macro_rules! be_struct {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fmeta:meta])* $fvis:vis $field:ident: $ty:ty, )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        $vis struct $name {
            $( $(#[$fmeta])* $fvis $field: $ty, )*
        }

        impl $name {
            /// Size of the record in bytes.
            $vis const LEN: usize = ::std::mem::size_of::<$name>();

            /// Decodes the record from its big-endian bytes.
            $vis fn decode(b: &[u8; Self::LEN]) -> $name {
                $name {
                    $( $field: $crate::bytes::BigEndian::get(
                        b,
                        ::std::mem::offset_of!($name, $field),
                    ), )*
                }
            }

            /// Encodes the record as big-endian bytes.
            $vis fn encode(&self) -> [u8; Self::LEN] {
                let mut b = [0u8; Self::LEN];
                $( $crate::bytes::BigEndian::put(
                    self.$field,
                    &mut b,
                    ::std::mem::offset_of!($name, $field),
                ); )*
                b
            }
        }
    };
}

pub(crate) use be_struct;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut out = Vec::new();
        push_be(&mut out, 0x0102u16);
        encode_be(&[0x0304_0506u32], &mut out);
        push_be(&mut out, [7u8, 8]);
        assert_eq!(out, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(u16::get(&out, 0), 0x0102);
        assert_eq!(u32::get(&out, 2), 0x0304_0506);
        assert_eq!(decode_be::<u64>(&[0, 0, 0, 0, 0, 0, 1, 0, 9]), vec![256]);
    }
}
