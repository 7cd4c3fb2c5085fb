//! qcow2-rs (the QCOW2 crate of the project's brief), one more independent reader of our
//! outputs: it reads the active layer, plain and deflate-compressed (its inflater is
//! miniz_oxide), through its synchronous I/O. What it cannot read (`what_qcow2_rs_cannot_read`
//! documents each, and fails once qcow2-rs learns it): zstd clusters (it has no zstd
//! decoder); version 2 images with header extensions (it reads a v3 header from every image,
//! so the extensions after a 72-byte v2 header become its feature bits); clusters under
//! 4 KiB (its L2 cache slices are 4 KiB: an arithmetic overflow panics). So it reads our v3
//! outputs with clusters of 4 KiB and more.

use crate::common::*;
use qcow2_rs::dev::Qcow2DevParams;
use qcow2_rs::helpers::Qcow2IoBuf;
use qcow2_rs::utils::qcow2_setup_dev_sync;
use std::future::Future;
use std::path::Path;
use std::task::{Context, Poll, Waker};

/// Runs a future of qcow2-rs's synchronous I/O to its end (it never waits on anything).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::yield_now();
    }
}

/// The active layer of `img` as qcow2-rs reads it, or its error.
pub fn qcow2_rs_read(img: &Path, size: usize) -> Result<Vec<u8>, String> {
    let params = Qcow2DevParams::new(9, None, None, true, false);
    let dev = qcow2_setup_dev_sync(img, &params).map_err(|e| format!("{e:?}"))?;
    block_on(async {
        dev.qcow2_prep_io().await.map_err(|e| format!("{e:?}"))?;
        let mut out = Vec::with_capacity(size);
        let chunk = 1 << 20;
        let mut buf = Qcow2IoBuf::<u8>::new(chunk);
        let mut at = 0usize;
        while at < size {
            let n = chunk.min(size - at);
            dev.read_at(&mut buf[..n], at as u64)
                .await
                .map_err(|e| format!("{e:?} at guest byte {at}"))?;
            out.extend_from_slice(&buf[..n]);
            at += n;
        }
        Ok(out)
    })
}

/// Whether qcow2-rs can read `img` (see the module comment): v3, clusters of 4 KiB or more.
pub fn readable(img: &Path) -> bool {
    let r = qcow::Reader::open(std::fs::File::open(img).unwrap()).unwrap();
    r.header().version == qcow::Version::V3 && r.cluster_size() >= 4096
}

/// qcow2-rs reads the active layer of `img` as the raw image `raw` (when it can read it).
pub fn assert_qcow2_rs_reads(img: &Path, raw: &Path) {
    if !readable(img) {
        return;
    }
    let want = read(raw);
    let got = qcow2_rs_read(img, want.len())
        .unwrap_or_else(|e| panic!("qcow2-rs on {}: {e}", img.display()));
    assert!(got == want, "qcow2-rs reads {} otherwise", img.display());
}

#[test]
fn what_qcow2_rs_cannot_read() {
    if skip() {
        return;
    }
    let dir = scratch("compress-qcow2rs");
    let img = small_image(&dir);
    let raw = dir.join("r.raw");
    expect(&[&"-r", &img, &raw], 0);
    let want = read(&raw);
    let out = |name: &str, args: &[&str]| {
        let q = dir.join(name);
        let mut a: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"-Q"];
        for x in args {
            a.push(x);
        }
        a.push(&img);
        a.push(&q);
        expect(&a, 0);
        q
    };
    // What it reads: v3 at 4 KiB and 64 KiB clusters, plain and zlib.
    for (name, args) in [
        ("plain.qcow2", &["--cluster-size", "4096"][..]),
        ("zlib.qcow2", &["-c", "--cluster-size", "4096"]),
        ("zlib64.qcow2", &["-c", "--cluster-size", "65536"]),
    ] {
        let q = out(name, args);
        assert!(qcow2_rs_read(&q, want.len()).unwrap() == want, "{name}");
    }
    // What it does not: each is refused or read wrong (never equal).
    let zstd = out(
        "zstd.qcow2",
        &["-c", "--compression-type", "zstd", "--cluster-size", "4096"],
    );
    let v2 = out("v2.qcow2", &["--compat", "0.10", "--cluster-size", "4096"]);
    for q in [zstd, v2] {
        match qcow2_rs_read(&q, want.len()) {
            Err(e) => eprintln!("qcow2-rs cannot read {}: {e}", q.display()),
            Ok(got) => assert!(
                got != want,
                "qcow2-rs reads {} now: update this test",
                q.display()
            ),
        }
    }
    let small = out("1k.qcow2", &["--cluster-size", "1024"]);
    let r = std::panic::catch_unwind(|| qcow2_rs_read(&small, want.len()));
    assert!(
        !matches!(r, Ok(Ok(ref got)) if *got == want),
        "qcow2-rs reads 1 KiB clusters now: update this test"
    );
}
