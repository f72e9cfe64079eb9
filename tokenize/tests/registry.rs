//! Loading tokenizers from a directory layout (as mounted in Kubernetes) and explicit entries.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;
use std::sync::Arc;

use kvpick_tokenize::{ChatRequest, Error, ModelSource, RegistryConfig, TokenizerRegistry};

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn directory_layout_with_orgs_hidden_entries_symlinks_and_aliases() {
    let root = tempfile::tempdir().unwrap();
    copy_dir(&fixture("chatml"), &root.path().join("qwen"));
    copy_dir(&fixture("llama3"), &root.path().join("meta/llama-3"));
    copy_dir(
        &fixture("mistral"),
        &root.path().join("..2024_01_01_data/mistral"),
    ); // k8s volume internals
    std::fs::create_dir_all(root.path().join("no-tokenizer-here")).unwrap();
    std::os::unix::fs::symlink(root.path().join("qwen"), root.path().join("qwen-copy")).unwrap();

    let config = RegistryConfig {
        dir: Some(root.path().to_path_buf()),
        models: vec![
            RegistryConfig::parse_entry("sql-lora=@qwen").unwrap(),
            RegistryConfig::parse_entry(&format!("mistral={}", fixture("mistral").display()))
                .unwrap(),
        ],
        ..Default::default()
    };
    let registry = TokenizerRegistry::load(&config).unwrap();
    assert_eq!(
        registry.models(),
        ["meta/llama-3", "mistral", "qwen", "qwen-copy", "sql-lora"]
    );
    let qwen = registry.get("qwen").unwrap();
    assert!(
        Arc::ptr_eq(qwen, registry.get("qwen-copy").unwrap()),
        "one tokenizer per directory"
    );
    assert!(
        Arc::ptr_eq(qwen, registry.get("sql-lora").unwrap()),
        "the adapter uses its base"
    );
    assert!(
        registry.get("meta/llama-3").unwrap().has_chat_template(),
        "chat_template.jinja is read"
    );
    let text = registry
        .get("mistral")
        .unwrap()
        .render_chat(&ChatRequest::new(vec![
            serde_json::json!({"role": "user", "content": "hi"}),
        ]))
        .unwrap();
    assert_eq!(
        text, "<s>[INST] hi[/INST]",
        "bos_token from an AddedToken dict"
    );
}

#[test]
fn errors_name_what_is_wrong() {
    let missing = RegistryConfig {
        dir: None,
        models: vec![("m".into(), ModelSource::Dir("/nonexistent/dir".into()))],
        ..Default::default()
    };
    assert!(
        matches!(TokenizerRegistry::load(&missing), Err(Error::Load(m)) if m.contains("/nonexistent/dir"))
    );
    let alias = RegistryConfig {
        dir: None,
        models: vec![RegistryConfig::parse_entry("lora=@base").unwrap()],
        ..Default::default()
    };
    assert!(matches!(
        TokenizerRegistry::load(&alias),
        Err(Error::Config(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), "{not json").unwrap();
    let broken = RegistryConfig {
        dir: None,
        models: vec![("m".into(), ModelSource::Dir(dir.path().to_path_buf()))],
        ..Default::default()
    };
    assert!(matches!(
        TokenizerRegistry::load(&broken),
        Err(Error::Load(_))
    ));
    assert!(
        TokenizerRegistry::load(&RegistryConfig::default())
            .unwrap()
            .is_empty()
    );
}
