//! Files the tests read from the repository.

use std::path::PathBuf;

/// The tokenizer fixture (byte-level BPE, ChatML template) of the `tokenize` crate's tests: a
/// model directory as kvpick-epp and the simulated pods load it.
pub fn chatml() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tokenize/tests/fixtures/chatml")
}
