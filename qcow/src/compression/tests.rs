//! The codecs and the packer against what QEMU writes and reads (notes §1.6).

use super::*;
use crate::format::table::{compressed_len, L2Entry};
use crate::geometry::Version;
use crate::types::HostCluster;

/// Text-like bytes that compress well, and xorshift bytes that do not.
fn text(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"ext4 inode table "[i % 17] ^ (i / 4096) as u8)
        .collect()
}

fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn every_type_and_cluster_size_round_trips() {
    for kind in [CompressionType::Deflate, CompressionType::Zstd] {
        for cb in [9, 12, 16, 21] {
            let c = 1usize << cb;
            let comp = Compression::new(kind, None).unwrap();
            let data = text(c);
            let CompressedCluster::Payload(p) = comp.compress_cluster(&data).unwrap() else {
                panic!("{kind:?} {cb}: text does not compress");
            };
            assert!(p.len() < c, "{kind:?} {cb}");
            let mut out = vec![0u8; c];
            decompress_cluster(kind, &p, &mut out, 0).unwrap();
            assert!(out == data, "{kind:?} {cb}");
            // Random bytes do not fit in C − 1 bytes: stored plain.
            let plain = comp.compress_cluster(&noise(c, cb as u64)).unwrap();
            assert_eq!(plain, CompressedCluster::Plain, "{kind:?} {cb}");
        }
    }
}

#[test]
fn levels_are_checked_and_defaults_are_qemus() {
    let z = Compression::new(CompressionType::Deflate, None).unwrap();
    assert_eq!((z.kind(), z.level()), (CompressionType::Deflate, 6));
    assert_eq!(
        Compression::new(CompressionType::Zstd, None)
            .unwrap()
            .level(),
        3
    );
    for (kind, bad) in [
        (CompressionType::Deflate, [0, 10]),
        (CompressionType::Zstd, [0, 20]),
    ] {
        for level in bad {
            assert!(matches!(
                Compression::new(kind, Some(level)),
                Err(Error::InvalidArgument(_))
            ));
        }
    }
    let data = text(65536);
    for level in [1, 9] {
        let c = Compression::new(CompressionType::Deflate, Some(level)).unwrap();
        assert!(matches!(
            c.compress_cluster(&data),
            Ok(CompressedCluster::Payload(_))
        ));
    }
    assert!(z.compress_cluster(&[0u8; 1000]).is_err(), "no cluster size");
    assert_eq!(CompressionType::from_header(1), Some(CompressionType::Zstd));
    assert_eq!(CompressionType::from_header(2), None);
    assert_eq!(CompressionType::Zstd.header_value(), 1);
}

#[test]
fn compressing_on_many_threads_gives_the_same_payloads() {
    let comp = Compression::new(CompressionType::Zstd, Some(5)).unwrap();
    let data = text(4096);
    let one = comp.compress_cluster(&data).unwrap();
    let others: Vec<CompressedCluster> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4)
            .map(|_| s.spawn(|| comp.compress_cluster(&data).unwrap()))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(others.iter().all(|o| *o == one));
}

#[test]
fn descriptors_round_trip_at_every_cluster_size() {
    for cb in 9..=21u32 {
        let c = 1u64 << cb;
        for (host, len) in [
            (c, 1),
            (c + 0x173, 0x8d),
            (3 * c - 1, c - 1),
            (5 * c + 511, 2),
        ] {
            let d = compressed_descriptor(host, len, cb).unwrap();
            let e = L2Entry::decode(d, cb, Version::V3, 0).unwrap();
            let L2Entry::Compressed {
                host: h,
                additional_sectors,
            } = e
            else {
                panic!("{cb}: not compressed");
            };
            assert_eq!(h, host);
            // The sectors QEMU reads cover the payload and end in its last sector.
            let read = compressed_len(h, additional_sectors);
            assert!(read >= len && read - len < 512, "{cb} {host:#x} {len}");
            let (first, last) = e.host_cluster_range(cb).unwrap();
            assert_eq!((first, last), (host / c, (host + len - 1) / c));
        }
        assert!(compressed_descriptor(c, 0, cb).is_err());
        assert!(compressed_descriptor(c, c, cb).is_err());
        assert!(compressed_descriptor(0, 1, cb).is_err());
    }
    // Notes §1.6: 64 KiB clusters, host 0x5e173, 57 additional sectors.
    let len = compressed_len(0x5e173, 57);
    assert_eq!(
        compressed_descriptor(0x5e173, len, 16).unwrap(),
        0x4e40_0000_0005_e173
    );
}

#[test]
fn payloads_are_packed_back_to_back_as_qemu_packs_them() {
    let cb = 12; // 4 KiB clusters
    let mut p = PayloadPacker::new();
    let mut next = 5u64;
    let mut bump = |_wanted: Option<HostCluster>| {
        next += 1;
        Ok(HostCluster(next - 1))
    };
    let a = p.place(1000, cb, &mut bump).unwrap();
    assert_eq!(
        (a.host_offset, a.continues, a.allocated),
        (5 * 4096, None, Some(HostCluster(5)))
    );
    let b = p.place(3000, cb, &mut bump).unwrap();
    assert_eq!(
        (b.host_offset, b.continues, b.allocated),
        (5 * 4096 + 1000, Some(HostCluster(5)), None)
    );
    // 96 bytes left: the next payload crosses into cluster 6, the next one allocated.
    let c = p.place(500, cb, &mut bump).unwrap();
    assert_eq!(
        (c.host_offset, c.continues, c.allocated),
        (5 * 4096 + 4000, Some(HostCluster(5)), Some(HostCluster(6)))
    );
    // Something else took cluster 7: a payload that does not fit starts in the one given.
    let other = |wanted: Option<HostCluster>| {
        assert_eq!(wanted, Some(HostCluster(7)));
        Ok(HostCluster(9))
    };
    let d = p.place(4000, cb, other).unwrap();
    assert_eq!(
        (d.host_offset, d.continues, d.allocated),
        (9 * 4096, None, Some(HostCluster(9)))
    );
    // A payload ending on the cluster boundary closes the cluster.
    let e = p.place(96, cb, |_| unreachable!()).unwrap();
    assert_eq!(e.host_offset, 9 * 4096 + 4000);
    let f = p.place(10, cb, |w| {
        assert_eq!(w, None);
        Ok(HostCluster(12))
    });
    assert_eq!(f.unwrap().host_offset, 12 * 4096);
    assert!(p.place(4096, cb, |_| unreachable!()).is_err());
}

#[test]
fn a_cluster_takes_a_bounded_number_of_payloads() {
    let mut p = PayloadPacker::new();
    let mut clusters = std::collections::BTreeSet::new();
    let mut next = 1u64;
    for _ in 0..MAX_PAYLOADS_PER_CLUSTER + 1 {
        let pl = p
            .place(8, 16, |_| {
                next += 1;
                Ok(HostCluster(next - 1))
            })
            .unwrap();
        clusters.insert(pl.host_offset >> 16);
    }
    assert_eq!(clusters.len(), 2);
}
