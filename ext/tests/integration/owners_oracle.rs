//! `file_runs` and `inode_paths` against debugfs: for every inode of small images built with
//! `mke2fs -d` (ext4 with extent trees, an unwritten extent and an xattr block; ext2/ext3
//! with indirect maps reaching DIND and holes), our logical→physical map, tree blocks and
//! xattr block equal what `debugfs -R "stat <ino>"` prints, and our paths are among the
//! names `debugfs -R "ncheck"` gives. Skips when e2fsprogs is not installed.

use crate::common::{fixture, gunzip, mkfs, open, require, run, Scratch};
use ext::{
    file_runs, file_runs_and_inodes, inode_paths, FileRun, FileView, Filesystem, InodeNr, RunKind,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;

/// Inodes compared in the images built here (all their used inodes are below this).
const MAX_INO: u32 = 160;
/// Inodes compared in the committed fixture images.
const MAX_FIXTURE_INO: u32 = 1024;

/// Source tree: a file reaching DIND at 1 KiB blocks, a sparse file, a fragmented file (an
/// extent index block on ext4), nested directories, a hard link, slow and fast symlinks and
/// a directory spanning several blocks.
fn populate(src: &Path) {
    std::fs::create_dir_all(src.join("d/sub/deep")).unwrap();
    std::fs::create_dir_all(src.join("many")).unwrap();
    std::fs::write(src.join("big"), vec![b'y'; 300 * 1024]).unwrap();
    let mut holey = vec![b'a'; 4096];
    holey.resize(400 * 1024, 0);
    holey.extend_from_slice(&[b'b'; 4096]);
    std::fs::write(src.join("holey"), holey).unwrap();
    let mut frag = Vec::new();
    for i in 0..40 {
        frag.extend_from_slice(&[if i % 2 == 0 { b'x' } else { 0 }; 4096]);
    }
    std::fs::write(src.join("frag"), frag).unwrap();
    std::fs::write(src.join("d/small"), "hi").unwrap();
    std::fs::write(src.join("d/sub/deep/file"), "deep").unwrap();
    std::fs::hard_link(src.join("d/small"), src.join("link")).unwrap();
    std::os::unix::fs::symlink("s".repeat(100), src.join("slow")).unwrap();
    std::os::unix::fs::symlink("short", src.join("fast")).unwrap();
    for i in 0..60 {
        std::fs::write(src.join(format!("many/file_number_{i:03}")), "m").unwrap();
    }
}

fn debugfs(img: &Path, write: bool, request: &str) -> String {
    let mut cmd = Command::new("debugfs");
    if write {
        cmd.arg("-w");
    }
    run(cmd.arg("-R").arg(request).arg(img))
}

/// What one inode owns: (logical, physical, unwritten) per data block, tree blocks, xattr.
#[derive(Debug, Default, PartialEq, Eq)]
struct Owned {
    data: BTreeSet<(u64, u64, bool)>,
    tree: BTreeSet<u64>,
    xattr: Option<u64>,
}

/// `a` or `a-b` as an inclusive range.
fn range(s: &str) -> (u64, u64) {
    match s.split_once('-') {
        Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
        None => (s.parse().unwrap(), s.parse().unwrap()),
    }
}

/// Parses the BLOCKS/EXTENTS list and `File ACL` of one `stat` output.
fn parse_stat(text: &str) -> Owned {
    let mut o = Owned::default();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some(acl) = line.trim().strip_prefix("File ACL: ") {
            let acl: u64 = acl.split_whitespace().next().unwrap().parse().unwrap();
            o.xattr = (acl != 0).then_some(acl);
        }
        if line != "BLOCKS:" && line != "EXTENTS:" {
            continue;
        }
        let list = lines.next().unwrap_or("");
        for item in list.split(", ").filter(|i| !i.is_empty()) {
            let (label, value) = item.trim_start_matches('(').split_once("):").unwrap();
            let (p0, p1) = range(value);
            if label.contains("IND") || label.starts_with("ETB") {
                o.tree.extend(p0..=p1);
                continue;
            }
            let unwritten = label.ends_with("[u]");
            let (l0, l1) = range(label.trim_end_matches("[u]"));
            assert_eq!(l1 - l0, p1 - p0, "{item}");
            o.data
                .extend((0..=l1 - l0).map(|k| (l0 + k, p0 + k, unwritten)));
        }
    }
    o
}

/// `stat <ino>` for inodes 1..=max_ino in one debugfs run.
fn debugfs_owned(img: &Path, dir: &Path, max_ino: u32) -> BTreeMap<u32, Owned> {
    let cmds = dir.join("cmds");
    let text: String = (1..=max_ino).map(|i| format!("stat <{i}>\n")).collect();
    std::fs::write(&cmds, text).unwrap();
    let out = run(Command::new("debugfs").arg("-f").arg(&cmds).arg(img));
    let mut map = BTreeMap::new();
    for section in out.split("debugfs: stat <").skip(1) {
        let (ino, rest) = section.split_once('>').unwrap();
        let owned = parse_stat(rest);
        if owned != Owned::default() {
            map.insert(ino.parse().unwrap(), owned);
        }
    }
    map
}

fn our_owned(runs: &[FileRun], max_ino: u32) -> BTreeMap<u32, Owned> {
    let mut map: BTreeMap<u32, Owned> = BTreeMap::new();
    for r in runs.iter().filter(|r| r.ino.0 <= max_ino) {
        let o = map.entry(r.ino.0).or_default();
        match r.kind {
            RunKind::Data { unwritten } => o
                .data
                .extend((0..r.len).map(|k| (r.logical + k, r.physical + k, unwritten))),
            RunKind::Tree => o.tree.extend(r.physical..r.end()),
            RunKind::Xattr => {
                assert_eq!(r.len, 1);
                assert!(o.xattr.replace(r.physical).is_none());
            }
        }
    }
    map
}

/// Compares every inode's runs with debugfs and checks the `want` filter; returns ours.
fn check_runs(img: &Path, dir: &Path, max_ino: u32) -> BTreeMap<u32, Owned> {
    let fs = open(img);
    let (runs, warnings) = file_runs(&fs, &|_, _| true);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(runs.windows(2).all(|w| w[0].physical <= w[1].physical));
    let ours = our_owned(&runs, max_ino);
    let theirs = debugfs_owned(img, dir, max_ino);
    assert!(
        theirs.len() > 60,
        "debugfs output not understood: {theirs:?}"
    );
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    for (ino, o) in &ours {
        assert_eq!(o, &theirs[ino], "inode {ino}");
    }
    // The filter: only runs it accepts, all of them.
    let (lo, hi) = (runs[runs.len() / 3].physical, runs[runs.len() / 2].physical);
    let want = |p: u64, len: u64| p < hi && p + len > lo;
    let (some, _) = file_runs(&fs, &want);
    let expected: Vec<_> = runs.iter().filter(|r| want(r.physical, r.len)).collect();
    assert_eq!(some.iter().collect::<Vec<_>>(), expected);
    assert!(!expected.is_empty() && expected.len() < runs.len());
    check_inodes(&fs, img, &some, &want);
    ours
}

/// `file_runs_and_inodes` gives the same runs and keeps exactly the inodes it is asked to
/// (here: those owning a wanted run), with the times and generation `debugfs stat` shows.
fn check_inodes(
    fs: &Filesystem<FileView>,
    img: &Path,
    runs: &[FileRun],
    want: &dyn Fn(u64, u64) -> bool,
) {
    let o = file_runs_and_inodes(fs, want, &|_, r| !r.is_empty());
    assert_eq!(o.runs, runs);
    let mut owners: Vec<u32> = runs.iter().map(|r| r.ino.0).collect();
    owners.sort_unstable();
    owners.dedup();
    let kept: Vec<u32> = o.inodes.iter().map(|(i, _)| i.0).collect();
    assert_eq!(kept, owners);
    for (ino, inode) in o.inodes.iter().take(8) {
        let stat = debugfs(img, false, &format!("stat <{}>", ino.0));
        let field = |name: &str| -> Option<(u32, u32)> {
            let rest = stat.split_once(&format!("{name}: 0x"))?.1;
            let word = rest.split_whitespace().next()?;
            let (secs, extra) = word.split_once(':').unwrap_or((word, "0"));
            Some((
                u32::from_str_radix(secs, 16).ok()?,
                u32::from_str_radix(extra, 16).ok()?,
            ))
        };
        let generation: u32 = stat
            .split_once("Generation: ")
            .unwrap()
            .1
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(inode.i_generation, generation, "inode {ino}");
        assert_eq!(
            field(" ctime"),
            Some((inode.i_ctime, inode.i_ctime_extra)),
            "inode {ino}"
        );
        assert_eq!(
            field(" mtime"),
            Some((inode.i_mtime, inode.i_mtime_extra)),
            "inode {ino}"
        );
        let crtime = inode
            .crtime()
            .map(|_| (inode.i_crtime, inode.i_crtime_extra));
        assert_eq!(field("crtime"), crtime, "inode {ino}");
    }
}

/// Inode number of `path` from debugfs.
fn ino_of(img: &Path, path: &str) -> u32 {
    let out = debugfs(img, false, &format!("stat {path}"));
    let rest = out.split_once("Inode: ").unwrap().1;
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// [`inode_paths`] keyed by plain inode numbers.
fn paths_of(fs: &Filesystem<FileView>, inos: &[u32]) -> (HashMap<u32, String>, Vec<ext::Warning>) {
    let inos: Vec<InodeNr> = inos.iter().copied().map(InodeNr).collect();
    let (paths, warnings) = inode_paths(fs, &inos);
    (paths.into_iter().map(|(i, p)| (i.0, p)).collect(), warnings)
}

fn check_paths(img: &Path) {
    let fs = open(img);
    let names = [
        "/d/sub/deep/file",
        "/link",
        "/many/file_number_059",
        "/d/sub",
        "/slow",
    ];
    let mut inos: Vec<u32> = names.iter().map(|p| ino_of(img, p)).collect();
    inos.extend([2, 8, 0, u32::MAX]);
    let (paths, warnings) = paths_of(&fs, &inos);
    assert!(warnings.is_empty(), "{warnings:?}");
    let ncheck = debugfs(
        img,
        false,
        &format!(
            "ncheck {}",
            inos[..5]
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        ),
    );
    let mut all: HashMap<u32, Vec<String>> = HashMap::new();
    for line in ncheck.lines().skip(1) {
        if let Some((i, p)) = line.split_once('\t') {
            all.entry(i.trim().parse().unwrap())
                .or_default()
                .push(p.replacen("//", "/", 1)); // debugfs prints "//name" under the root
        }
    }
    for (k, ino) in inos[..5].iter().enumerate() {
        assert!(
            all[ino].contains(&paths[ino]),
            "{ino}: {:?} vs {:?}",
            paths[ino],
            all[ino]
        );
        if k != 1 {
            assert_eq!(paths[ino], names[k]);
        }
    }
    // The hard link's shallowest name is found first.
    assert_eq!(paths[&inos[1]], "/link");
    assert_eq!(paths[&2], "/");
    assert_eq!(paths.len(), 6, "{paths:?}");
}

#[test]
fn ext4_runs_and_paths_match_debugfs() {
    if !require(&["mke2fs", "debugfs"]) {
        return;
    }
    let dir = Scratch::new("owners", "ext4");
    let img = mkfs(&dir.0, &["-t", "ext4", "-b", "4096"], "16M", populate);
    debugfs(&img, true, "fallocate /holey 10 19");
    let value = dir.0.join("value");
    std::fs::write(&value, vec![b'v'; 1500]).unwrap();
    let ea = format!("ea_set -f {} /big user.big", value.display());
    debugfs(&img, true, &ea);
    let ours = check_runs(&img, &dir.0, MAX_INO);
    let holey = &ours[&ino_of(&img, "/holey")];
    assert!(holey
        .data
        .contains(&(10, holey.data.iter().nth(1).unwrap().1, true)));
    assert!(holey.data.iter().any(|d| d.0 == 100));
    assert!(
        !ours[&ino_of(&img, "/frag")].tree.is_empty(),
        "no extent index block"
    );
    assert!(ours[&ino_of(&img, "/big")].xattr.is_some());
    check_paths(&img);
}

#[test]
fn indirect_runs_and_paths_match_debugfs() {
    if !require(&["mke2fs", "debugfs"]) {
        return;
    }
    for (name, args) in [
        ("ext2_1k", ["-t", "ext2", "-b", "1024"]),
        ("ext3_2k", ["-t", "ext3", "-b", "2048"]),
    ] {
        let dir = Scratch::new("owners", name);
        let img = mkfs(&dir.0, &args, "8M", populate);
        let value = dir.0.join("value");
        std::fs::write(&value, vec![b'v'; 700]).unwrap();
        let ea = format!("ea_set -f {} /frag user.big", value.display());
        debugfs(&img, true, &ea);
        let ours = check_runs(&img, &dir.0, MAX_INO);
        let bs: u64 = if name == "ext2_1k" { 1024 } else { 2048 };
        let dind_start = 12 + bs / 4;
        let holey = &ours[&ino_of(&img, "/holey")];
        let last = 400 * 1024 / bs;
        assert!(holey.data.iter().any(|d| d.0 == last) && !holey.data.iter().any(|d| d.0 == 5));
        assert!(
            ours[&ino_of(&img, "/big")]
                .data
                .iter()
                .any(|d| d.0 >= dind_start)
                || bs > 1024
        );
        assert!(ours[&ino_of(&img, "/frag")].xattr.is_some());
        check_paths(&img);
    }
}

/// The committed fixtures: htree directories, TIND, bigalloc, fifo and device inodes.
#[test]
fn fixture_images_match_debugfs() {
    if !require(&["debugfs"]) {
        return;
    }
    for name in ["ext4-small", "ext2-1k", "ext3-4k", "ext4-bigalloc"] {
        let dir = Scratch::new("owners", name);
        let img = dir.0.join("fs.img");
        gunzip(&fixture(&format!("{name}.img.gz")), &img);
        let ours = check_runs(&img, &dir.0, MAX_FIXTURE_INO);
        let tind = &ours[&ino_of(&img, "/sparse/tind80m.bin")];
        assert_eq!(tind.data.len(), 4096 / open(&img).sb.block_size as usize);
        let names = [
            "/a/b/c/d/e/deep.txt",
            "/many/f399",
            "/longnames",
            "/special/fifo",
            "/links/slow",
        ];
        let fs = open(&img);
        let mut inos: Vec<u32> = names.iter().map(|p| ino_of(&img, p)).collect();
        let hard = ino_of(&img, "/links/hardlink");
        inos.push(hard);
        let (paths, warnings) = paths_of(&fs, &inos);
        assert!(warnings.is_empty(), "{warnings:?}");
        for (k, name) in names.iter().enumerate() {
            assert_eq!(paths[&inos[k]], *name);
        }
        // Both names have depth 2; BFS meets /links before /xattr (sorted entries).
        assert_eq!(paths[&hard], "/links/hardlink");
    }
}

#[test]
fn inline_data_directories_are_named() {
    if !require(&["mke2fs", "debugfs"]) {
        return;
    }
    let dir = Scratch::new("owners", "inline");
    let img = mkfs(
        &dir.0,
        &["-t", "ext4", "-O", "inline_data", "-b", "4096"],
        "16M",
        populate,
    );
    let stat = debugfs(&img, false, "stat /d/sub");
    assert!(stat.contains("Size of inline data"), "{stat}");
    check_paths(&img);
}
