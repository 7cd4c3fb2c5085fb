//! Helpers shared by the integration tests: tools and skips (`skip`: visible past the output
//! capture, fatal under `CI=true`), the `../shared` corpus, scratch directories, fixture
//! images.

mod skip;
pub use skip::*;

use ext::{BlockSet, FileView, Filesystem, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A scratch directory under the temporary directory, removed on drop (also when a test
/// fails).
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// `ext-{prefix}-{pid}-{name}-{nanos}`, created.
    pub fn new(prefix: &str, name: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let d = std::env::temp_dir().join(format!(
            "ext-{prefix}-{}-{name}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The corpus's gzipped images, sorted by name.
pub fn corpus_images(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "gz"))
        .collect();
    entries.sort();
    entries
}

/// A committed fixture image (`fixtures/images/NAME`, gzip-compressed).
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures/images")
        .join(name)
}

/// The decompressed bytes of the gzip file `src`.
pub fn gunzip_bytes(src: &Path) -> Vec<u8> {
    let mut v = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(src).unwrap())
        .read_to_end(&mut v)
        .unwrap();
    v
}

/// Decompresses the gzip file `src` into `dst`.
pub fn gunzip(src: &Path, dst: &Path) {
    let gz = std::fs::File::open(src).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    std::io::copy(&mut flate2::read::GzDecoder::new(gz), &mut out).unwrap();
}

/// Runs `cmd`, which must succeed; returns its standard output.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `mke2fs -q -F ARGS -d DIR/src DIR/fs.img SIZE` after `populate(DIR/src)`; returns the
/// image.
pub fn mkfs(dir: &Path, args: &[&str], size: &str, populate: fn(&Path)) -> PathBuf {
    let src = dir.join("src");
    populate(&src);
    let img = dir.join("fs.img");
    run(Command::new("mke2fs")
        .args(["-q", "-F"])
        .args(args)
        .arg("-d")
        .arg(&src)
        .arg(&img)
        .arg(size));
    img
}

/// Opens the filesystem image `img` through its primary superblock.
pub fn open(img: &Path) -> Filesystem<FileView> {
    Filesystem::open(FileView::open(img).unwrap(), &OpenOptions::default()).unwrap()
}

/// The blocks (of `block_size` bytes) of the raw image `data` that hold a non-zero byte but
/// are not in `set`: what `e2image -r` copied and our walk did not.
pub fn missing_blocks(data: &[u8], block_size: usize, set: &BlockSet) -> Vec<usize> {
    data.chunks(block_size)
        .enumerate()
        .filter(|(b, c)| c.iter().any(|&x| x != 0) && !set.contains(*b as u64))
        .map(|(b, _)| b)
        .collect()
}
