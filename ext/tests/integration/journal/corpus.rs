//! The dirty journals of the e2fsprogs test-suite images.

use super::*;

/// What happened to one corpus image: (name, outcome).
fn corpus_case(gz: &Path, tmp: &Path) -> Option<(String, String)> {
    let name = gz.file_stem().unwrap().to_string_lossy().into_owned();
    let img = tmp.join(&name);
    gunzip(gz, &img);
    let opened =
        Filesystem::open_with_fallback(FileView::open(&img).unwrap(), &OpenOptions::default());
    let Ok((fs, _)) = opened else {
        let _ = std::fs::remove_file(&img);
        return None;
    };
    if !fs.sb.has_incompat(ext::incompat::RECOVER) {
        let _ = std::fs::remove_file(&img);
        return None;
    }
    let before = sha(&img);
    let outcome = match Journal::locate(&fs, None).unwrap().lookup {
        JournalLookup::Found(j) => corpus_replay(&img, &fs, &j),
        JournalLookup::None => "no journal".into(),
        JournalLookup::ExternalNotGiven { .. } => "external journal not given".into(),
        JournalLookup::Unusable { reason } => format!("unusable: {reason}"),
    };
    assert_eq!(sha(&img), before, "{name}: the source changed");
    let _ = std::fs::remove_file(&img);
    Some((name, outcome))
}

/// Replays `j` in memory, reads every block of the view and walks it; where e2fsck
/// replays the journal alone, compares every block with its result.
fn corpus_replay(img: &Path, fs: &Filesystem<FileView>, j: &Journal<'_>) -> String {
    let rec = j.recover();
    let view = ReplayedView::new(fs.view(), j, &rec, ReplayMode::Replayed).unwrap();
    let bs = fs.sb.block_size as u64;
    let mut buf = vec![0u8; bs as usize];
    for b in 0..view.size() / bs {
        view.read_at(b * bs, &mut buf).unwrap();
    }
    if let Ok(rfs) = Filesystem::open(&view, &OpenOptions::default()) {
        walk(&rfs, &WalkOptions::default());
    }
    let out = img.with_extension("e2fsck");
    std::fs::copy(img, &out).unwrap();
    let o = Command::new("e2fsck")
        .args(["-E", "journal_only", "-y"])
        .arg(&out)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let clean = o.status.code() == Some(0) && text.lines().all(|l| !l.contains('?'));
    let summary = format!(
        "{} transactions, {} blocks, error {:?}",
        rec.transactions(),
        rec.overlay.len(),
        rec.error
    );
    let result = if clean {
        compare(img, &out, false);
        format!("replayed, equal to e2fsck on every block: {summary}")
    } else {
        format!(
            "e2fsck does more than replay (exit {:?}); ours: {summary}",
            o.status.code()
        )
    };
    let _ = std::fs::remove_file(&out);
    result
}

#[test]
fn corpus_dirty_journals() {
    let Some(dir) = shared_corpus() else {
        return;
    };
    if !tools() {
        return;
    }
    let tmp = Scratch::new("journal", "corpus");
    let mut seen = Vec::new();
    for gz in corpus_images(&dir) {
        if let Some(r) = corpus_case(&gz, &tmp.0) {
            eprintln!("{}: {}", r.0, r.1);
            seen.push(r);
        }
    }
    let equal = seen.iter().filter(|r| r.1.starts_with("replayed")).count();
    eprintln!(
        "{} dirty journals, {equal} equal to e2fsck on every block",
        seen.len()
    );
    assert!(seen.len() >= 5 && equal >= 3, "{seen:#?}");
}
