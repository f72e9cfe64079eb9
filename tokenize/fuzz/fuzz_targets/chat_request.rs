//! Any request body, read as a chat completions, Responses and Messages body: parsing, vLLM's
//! conversion and normalisation, template rendering and splice-encoding must return ids or an
//! error, never panic; and the spliced ids must equal a whole encode.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use kvpick_tokenize::{ChatApi, ChatRequest, ModelTokenizer, TokenCache, TokenizeInput};
use libfuzzer_sys::fuzz_target;

fn model() -> &'static (ModelTokenizer, TokenCache) {
    static MODEL: OnceLock<(ModelTokenizer, TokenCache)> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chatml");
        (ModelTokenizer::load(&dir).expect("fixture loads"), TokenCache::new(16 << 20))
    })
}

fuzz_target!(|data: &[u8]| {
    let (model, cache) = model();
    if let Ok(serde_json::Value::Object(body)) = serde_json::from_slice::<serde_json::Value>(data) {
        // The body as each API's: chat completions, Responses, Anthropic Messages.
        for api in [ChatApi::ChatCompletions, ChatApi::Responses, ChatApi::Messages] {
            if let Ok(request) = ChatRequest::from_api_body(api, &body) {
                let _ = model.tokenize(&TokenizeInput::Chat(request), cache);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let spliced = model.encode(text, false, cache).map(|e| e.ids);
        let whole = model.tokenizer().encode_fast(text, false).map(|e| e.get_ids().to_vec());
        if let (Ok(s), Ok(w)) = (spliced, whole) {
            assert_eq!(s, w, "splice differs for {text:?}");
        }
    }
});
