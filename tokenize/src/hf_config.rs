//! Reading a model directory's HuggingFace files: `tokenizer_config.json` values as transformers
//! reads them (special tokens as strings or AddedToken dicts, templates as a string or a named list).

use std::path::Path;

use serde_json::Value;
use tokenizers::AddedToken;

use crate::error::Error;

/// Named special tokens transformers puts in the template context.
pub const SPECIAL_NAMES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

pub fn read(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Load(format!("{}: {e}", path.display()))),
    }
}

pub fn parse_json(path: &Path, text: &str) -> Result<Value, Error> {
    serde_json::from_str(text).map_err(|e| Error::Load(format!("{}: {e}", path.display())))
}

/// The content of a token given as a string or an AddedToken dict, with its flags.
pub fn token_of(value: &Value) -> Option<AddedToken> {
    match value {
        Value::String(s) => Some(AddedToken::from(s.clone(), true).normalized(false)),
        Value::Object(o) => {
            let flag = |k: &str, d: bool| o.get(k).and_then(Value::as_bool).unwrap_or(d);
            let content = o.get("content")?.as_str()?.to_string();
            let special = flag("special", true);
            Some(
                AddedToken::from(content, special)
                    .single_word(flag("single_word", false))
                    .lstrip(flag("lstrip", false))
                    .rstrip(flag("rstrip", false))
                    .normalized(flag("normalized", !special)),
            )
        }
        _ => None,
    }
}

/// The chat templates in a config: a string (`default`) or a list of `{name, template}`.
pub fn config_templates(config: &Value) -> Vec<(String, String)> {
    match config.get("chat_template") {
        Some(Value::String(s)) => vec![("default".into(), s.clone())],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|t| {
                Some((
                    t.get("name")?.as_str()?.to_string(),
                    t.get("template")?.as_str()?.to_string(),
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}
