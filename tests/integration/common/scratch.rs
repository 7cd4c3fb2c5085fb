//! Scratch directories of the tests, and sparse copies of filesystem images into them.

use super::root;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A scratch directory of one test, removed with everything in it when the test ends
/// (also when it fails), unless `E2IMAGE_RS_KEEP_SCRATCH` is set. The tests copy and write
/// whole filesystem images; kept, they would fill a CI machine's disk.
pub struct Scratch(PathBuf);

impl std::ops::Deref for Scratch {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<std::ffi::OsStr> for Scratch {
    fn as_ref(&self) -> &std::ffi::OsStr {
        self.0.as_os_str()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("E2IMAGE_RS_KEEP_SCRATCH").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A fresh scratch directory for one test (see [`Scratch`]).
pub fn scratch(name: &str) -> Scratch {
    let d = root()
        .join("target/test-scratch")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    Scratch(d)
}

/// Bytes per read of the sparse copies below.
const SPARSE_CHUNK: usize = 64 * 1024;

/// Writes everything `src` yields into a new file `to`, leaving holes where a whole
/// [`SPARSE_CHUNK`] is zero, so that copies of mostly empty filesystem images stay small.
fn write_sparse(mut src: impl Read, to: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let _ = std::fs::remove_file(to);
    let mut out = File::create(to).unwrap();
    let mut buf = vec![0u8; SPARSE_CHUNK];
    let mut len = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match src.read(&mut buf[n..]).unwrap() {
                0 => break,
                k => n += k,
            }
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(len)).unwrap();
            out.write_all(&buf[..n]).unwrap();
        }
        len += n as u64;
    }
    out.set_len(len).unwrap();
}

/// Copies the file `from` to `to` (replacing it) as a sparse file; returns `to`.
pub fn sparse_copy(from: &Path, to: &Path) -> PathBuf {
    write_sparse(File::open(from).unwrap(), to);
    to.to_path_buf()
}

/// Gunzips a committed image into `dir`, as a sparse file.
pub fn gunzip_to(gz: &Path, dir: &Path) -> PathBuf {
    let name = gz.file_stem().unwrap();
    let out = dir.join(name);
    write_sparse(flate2::read::GzDecoder::new(File::open(gz).unwrap()), &out);
    out
}
