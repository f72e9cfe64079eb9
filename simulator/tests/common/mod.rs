//! Shared helpers of the integration tests.

use std::path::PathBuf;

/// The shared traces folder: `$KVPICK_TRACES`, else `shared/traces` beside the repository (or
/// beside the worktrees' folder). Panics, naming where it looked, when it is absent: the validation
/// tests must not silently skip.
#[allow(dead_code)]
pub fn traces_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("KVPICK_TRACES") {
        return PathBuf::from(dir);
    }
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let candidates: Vec<PathBuf> = manifest
        .ancestors()
        .skip(1)
        .take(3)
        .map(|a| a.join("shared/traces"))
        .collect();
    candidates
        .iter()
        .find(|p| p.join("conversation_trace.jsonl").is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!("Mooncake traces not found (set KVPICK_TRACES); looked in {candidates:?}")
        })
}
