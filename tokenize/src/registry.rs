//! Which tokenizer each model (and LoRA adapter) uses, loaded once at startup and shared.
//!
//! Two sources, combined: a directory laid out like a model cache, `DIR/<model>/tokenizer.json`
//! (the model name may contain one `/`, as in `DIR/Qwen/Qwen2.5-7B-Instruct/`), and explicit
//! `MODEL=DIR` entries, which win. `ADAPTER=@BASE` makes a LoRA adapter use its base model's
//! tokenizer; an adapter that ships its own tokenizer files gets a `MODEL=DIR` entry instead.
//! Directories are deduplicated by their canonical path, so symlinked names share one tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use crate::limits::TemplatePolicy;
use crate::model::ModelTokenizer;

/// Where one model's tokenizer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory holding `tokenizer.json` and friends.
    Dir(PathBuf),
    /// Another model's tokenizer (a LoRA adapter on its base model).
    Alias(String),
}

/// How to build a [`TokenizerRegistry`] (`--tokenizers-dir`, `--tokenizer MODEL=DIR`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// A directory with one subdirectory per model.
    pub dir: Option<PathBuf>,
    /// Explicit entries, applied after `dir` in order.
    pub models: Vec<(String, ModelSource)>,
    /// How every model's chat templates run.
    pub templates: TemplatePolicy,
}

impl RegistryConfig {
    /// Parses a `--tokenizer` flag: `MODEL=DIR` or `ADAPTER=@BASE`.
    pub fn parse_entry(flag: &str) -> Result<(String, ModelSource), Error> {
        let (model, source) = flag
            .split_once('=')
            .filter(|(m, s)| !m.is_empty() && !s.is_empty())
            .ok_or_else(|| {
                Error::Config(format!("expected MODEL=DIR or ADAPTER=@BASE, got {flag:?}"))
            })?;
        let source = match source.strip_prefix('@') {
            Some(base) if !base.is_empty() => ModelSource::Alias(base.to_string()),
            Some(_) => return Err(Error::Config(format!("empty base model in {flag:?}"))),
            None => ModelSource::Dir(PathBuf::from(source)),
        };
        Ok((model.to_string(), source))
    }
}

/// Model name → tokenizer, immutable once loaded.
#[derive(Debug, Default)]
pub struct TokenizerRegistry {
    models: HashMap<String, Arc<ModelTokenizer>>,
}

impl TokenizerRegistry {
    /// An empty registry (every model falls back to remote or approximate routing).
    pub fn empty() -> Self {
        Self::default()
    }

    /// Loads every tokenizer `config` names; any unreadable one is an error (fail at startup, not
    /// per request).
    pub fn load(config: &RegistryConfig) -> Result<Self, Error> {
        let mut dirs: Vec<(String, PathBuf)> = Vec::new();
        if let Some(root) = &config.dir {
            discover(root, root, 0, &mut dirs)?;
            if dirs.is_empty() {
                tracing::warn!(dir = %root.display(), "no tokenizer.json under the tokenizers directory");
            }
        }
        let mut by_path: HashMap<PathBuf, Arc<ModelTokenizer>> = HashMap::new();
        let mut registry = Self::default();
        let mut load_dir = |name: &str, dir: &Path, registry: &mut Self| -> Result<(), Error> {
            let canonical = dir
                .canonicalize()
                .map_err(|e| Error::Load(format!("{}: {e}", dir.display())))?;
            let tokenizer = match by_path.get(&canonical) {
                Some(t) => t.clone(),
                None => {
                    let t = Arc::new(ModelTokenizer::load_with(&canonical, config.templates)?);
                    by_path.insert(canonical, t.clone());
                    t
                }
            };
            registry.models.insert(name.to_string(), tokenizer);
            Ok(())
        };
        for (name, dir) in &dirs {
            load_dir(name, dir, &mut registry)?;
        }
        for (name, source) in &config.models {
            match source {
                ModelSource::Dir(dir) => load_dir(name, dir, &mut registry)?,
                ModelSource::Alias(base) => {
                    let t = registry.models.get(base).cloned().ok_or_else(|| {
                        Error::Config(format!(
                            "{name}=@{base}: no tokenizer for {base:?} (list the base first)"
                        ))
                    })?;
                    registry.models.insert(name.clone(), t);
                }
            }
        }
        Ok(registry)
    }

    /// Adds or replaces one model's tokenizer.
    pub fn insert(&mut self, model: impl Into<String>, tokenizer: Arc<ModelTokenizer>) {
        self.models.insert(model.into(), tokenizer);
    }

    /// The tokenizer of `model`, if it has a local one.
    pub fn get(&self, model: &str) -> Option<&Arc<ModelTokenizer>> {
        self.models.get(model)
    }

    /// The model names, sorted.
    pub fn models(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.models.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// How many model names it serves.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether it serves none.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// Finds `tokenizer.json` up to two levels below `root` (`model/` or `org/model/`), skipping hidden
/// entries (Kubernetes volume mounts keep `..data` and timestamped copies there).
fn discover(
    root: &Path,
    dir: &Path,
    depth: usize,
    out: &mut Vec<(String, PathBuf)>,
) -> Result<(), Error> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| Error::Load(format!("{}: {e}", dir.display())))?;
    let mut subdirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    subdirs.sort();
    for sub in subdirs {
        if sub.join("tokenizer.json").is_file() {
            let name = sub
                .strip_prefix(root)
                .map_err(|e| Error::Load(e.to_string()))?
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push((name, sub));
        } else if depth < 1 {
            discover(root, &sub, depth + 1, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries() {
        assert_eq!(
            RegistryConfig::parse_entry("m=/a/b").unwrap(),
            ("m".to_string(), ModelSource::Dir("/a/b".into()))
        );
        assert_eq!(
            RegistryConfig::parse_entry("lora=@base").unwrap(),
            ("lora".to_string(), ModelSource::Alias("base".into()))
        );
        for bad in ["", "m", "=d", "m=", "m=@"] {
            assert!(RegistryConfig::parse_entry(bad).is_err(), "{bad:?}");
        }
    }
}
