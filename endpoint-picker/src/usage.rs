//! Token usage read from a response body as it streams past, for token metrics.
//!
//! The scanner only looks: the caller passes every chunk on to the client before or after feeding
//! it here, so the stream is never held back. A server-sent-event stream is scanned line by line
//! (vLLM puts `usage` in the last `data:` event when `stream_options.include_usage` is set); a
//! plain JSON body is buffered up to a cap and parsed at the end. Memory is bounded either way.

use serde::Deserialize;

/// Most bytes buffered: one SSE line, or a whole JSON body.
pub const DEFAULT_CAP: usize = 1 << 20;

/// Token counts from an OpenAI-style `usage` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    /// `prompt_tokens`.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// `completion_tokens`.
    #[serde(default)]
    pub completion_tokens: u64,
    /// `prompt_tokens_details.cached_tokens` (vLLM with `--enable-prompt-tokens-details`);
    /// `None` when the response does not report it (not the same as 0 cached tokens).
    #[serde(default, rename = "prompt_tokens_details", deserialize_with = "cached")]
    pub cached_tokens: Option<u64>,
}

fn cached<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    struct Details {
        #[serde(default)]
        cached_tokens: Option<u64>,
    }
    Ok(Option::<Details>::deserialize(d)?.and_then(|x| x.cached_tokens))
}

#[derive(Deserialize)]
struct WithUsage {
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Unknown,
    Sse,
    Json,
}

/// Incremental usage extraction from one response body.
#[derive(Debug)]
pub struct UsageScanner {
    mode: Mode,
    buf: Vec<u8>,
    cap: usize,
    /// Dropping bytes until the end of an over-long SSE line, or the JSON body overflowed.
    overflowed: bool,
    found: Option<Usage>,
}

impl UsageScanner {
    /// A scanner for a response with this `content-type` (SSE when `text/event-stream`, sniffed
    /// from the first bytes when absent).
    pub fn new(content_type: Option<&str>, cap: usize) -> Self {
        let mode = match content_type {
            Some(ct) if ct.starts_with("text/event-stream") => Mode::Sse,
            Some(ct) if ct.contains("json") => Mode::Json,
            _ => Mode::Unknown,
        };
        Self {
            mode,
            buf: Vec::new(),
            cap,
            overflowed: false,
            found: None,
        }
    }

    /// Looks at the next chunk of the body.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.mode == Mode::Unknown {
            match chunk.iter().find(|b| !b.is_ascii_whitespace()) {
                // Only whitespace so far: keep it (bounded, below) and sniff the next chunk.
                None => {}
                Some(b'{') => self.mode = Mode::Json,
                Some(_) => {
                    // Whitespace kept while sniffing holds line ends: scan it as SSE first.
                    self.mode = Mode::Sse;
                    let kept = std::mem::take(&mut self.buf);
                    if !self.overflowed {
                        self.feed_sse(&kept);
                    }
                }
            }
        }
        match self.mode {
            Mode::Sse => self.feed_sse(chunk),
            Mode::Json | Mode::Unknown => {
                if self.overflowed || self.buf.len() + chunk.len() > self.cap {
                    self.overflowed = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
        }
    }

    fn feed_sse(&mut self, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            let (line, rest) = chunk.split_at(nl);
            chunk = &rest[1..];
            if self.overflowed {
                self.overflowed = false;
                continue;
            }
            if self.buf.is_empty() {
                self.sse_line(line);
            } else {
                let mut whole = std::mem::take(&mut self.buf);
                whole.extend_from_slice(line);
                self.sse_line(&whole);
                whole.clear();
                self.buf = whole;
            }
        }
        if self.overflowed {
            return;
        }
        if self.buf.len() + chunk.len() > self.cap {
            self.overflowed = true;
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(chunk);
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        // Cheap filter first: most events carry no usage.
        if !data.windows(7).any(|w| w == b"\"usage\"") {
            return;
        }
        if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_slice(data.trim_ascii()) {
            self.found = Some(u);
        }
    }

    /// The usage the body reported, once it has ended.
    pub fn finish(mut self) -> Option<Usage> {
        match self.mode {
            Mode::Sse => {
                if !self.overflowed && !self.buf.is_empty() {
                    let line = std::mem::take(&mut self.buf);
                    self.sse_line(&line);
                }
                self.found
            }
            Mode::Json if !self.overflowed => serde_json::from_slice::<WithUsage>(&self.buf)
                .ok()
                .and_then(|w| w.usage),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: &str = r#""usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"prompt_tokens_details":{"cached_tokens":8}}"#;

    fn scan(ct: Option<&str>, chunks: &[&[u8]]) -> Option<Usage> {
        let mut s = UsageScanner::new(ct, 4096);
        for c in chunks {
            s.feed(c);
        }
        s.finish()
    }

    #[test]
    fn json_body_in_pieces() {
        let body = format!(r#"{{"id":"x","choices":[{{"text":"hi"}}],{USAGE}}}"#);
        let (a, b) = body.as_bytes().split_at(17);
        let want = Usage {
            prompt_tokens: 12,
            completion_tokens: 3,
            cached_tokens: Some(8),
        };
        assert_eq!(scan(Some("application/json"), &[a, b]), Some(want));
        assert_eq!(scan(None, &[a, b]), Some(want));
    }

    #[test]
    fn sse_usage_split_across_chunks() {
        let body = format!(
            "data: {{\"choices\":[{{\"text\":\"a\"}}],\"usage\":null}}\n\n\
             data: {{\"choices\":[],{USAGE}}}\n\ndata: [DONE]\n\n"
        );
        let bytes = body.as_bytes();
        for split in [1, 10, 60, bytes.len() - 3] {
            let (a, b) = bytes.split_at(split);
            let got = scan(Some("text/event-stream"), &[a, b]).unwrap();
            assert_eq!(
                (got.prompt_tokens, got.completion_tokens),
                (12, 3),
                "{split}"
            );
        }
    }

    #[test]
    fn sse_without_usage_and_missing_details() {
        assert_eq!(scan(None, &[b"data: {\"choices\":[]}\n\n"]), None);
        let got = scan(
            None,
            &[b"data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1}}\n"],
        );
        assert_eq!(
            got,
            Some(Usage {
                prompt_tokens: 2,
                completion_tokens: 1,
                cached_tokens: None
            })
        );
    }

    #[test]
    fn sniffing_does_not_depend_on_chunking() {
        let body = b"\n \ndata: {\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":1}}\n";
        let whole = scan(None, &[body]);
        assert_eq!(whole.map(|u| u.prompt_tokens), Some(4));
        for cut in 1..4 {
            let (a, b) = body.split_at(cut);
            assert_eq!(scan(None, &[a, b]), whole, "cut at {cut}");
        }
    }

    #[test]
    fn memory_is_bounded() {
        let big = vec![b'x'; 5000];
        let mut s = UsageScanner::new(Some("application/json"), 4096);
        s.feed(b"{");
        s.feed(&big);
        assert!(s.buf.is_empty());
        assert_eq!(s.finish(), None);
        // An over-long SSE line is skipped, and later lines still count.
        let mut s = UsageScanner::new(Some("text/event-stream"), 4096);
        s.feed(b"data: ");
        s.feed(&big);
        s.feed(b"\ndata: {\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n");
        assert_eq!(s.finish().map(|u| u.prompt_tokens), Some(1));
    }
}
