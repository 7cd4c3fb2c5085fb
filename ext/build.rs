//! Tells the tests whether the e2fsprogs corpus (`../shared/corpus/e2fsprogs`, beside the
//! checkout) is present: without it, the corpus tests are compiled as ignored with the reason,
//! so that `cargo test` shows them as ignored instead of passing in no time.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(no_shared_corpus)");
    let dir = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default())
        .join("../../shared/corpus/e2fsprogs");
    if dir.is_dir() {
        println!("cargo::rerun-if-changed={}", dir.display());
    } else {
        println!("cargo::rerun-if-changed=build.rs");
        println!("cargo::rustc-cfg=no_shared_corpus");
    }
}
