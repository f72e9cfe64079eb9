//! Replays a fuzz target's corpus through the property the target checks. Shared, by `#[path]`,
//! by the scheduler's and the endpoint picker's `tests/fuzz_corpus.rs`: `CARGO_MANIFEST_DIR` is
//! the including crate's, so each replays its own `fuzz/corpus/<target>/`.

use std::path::Path;

/// Runs `check` on every file of `fuzz/corpus/<target>/`, in name order; an empty or missing
/// corpus fails (a replay that checks nothing must not pass).
pub fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for path in files {
        // Printed before the check so that a panic names its input.
        eprintln!("{target}: {}", path.display());
        check(&std::fs::read(&path).unwrap());
    }
}
