//! An open-loop load generator for any OpenAI-compatible endpoint (the fleet, a gateway in front
//! of it, or a real vLLM cluster), measuring at the client.
//!
//! Requests leave at their trace arrival times whatever the server does (open loop), except that
//! at most `max_concurrency` are in flight: a request due while the cap is reached waits for a
//! slot and is counted as `delayed`. Prompts go out as token ids (`/v1/completions` with
//! `prompt: [ids]`, which vLLM takes as is) or, with `text`, as words: each token id becomes the
//! fleet tokenizer's word for it, so equal token prefixes are equal text prefixes for any
//! tokenizer. Every request asks for exactly its trace's output length (`max_tokens` with
//! `ignore_eos`). Measurements are in [`client::Outcome`], summaries in [`report`].

pub mod client;
pub mod report;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::FleetError;
use crate::servers::tokenizer::word;
use client::Outcome;
use kvpick_sim::trace::Trace;
use report::Record;

/// Which endpoint the generator calls.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ApiKind {
    /// `/v1/completions`.
    Completions,
    /// `/v1/chat/completions` (the prompt becomes one user message of text).
    Chat,
}

/// How to drive the load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// `http://host:port` of the server or gateway.
    pub base_url: String,
    /// The `model` field.
    pub model: String,
    /// Endpoint.
    pub api: ApiKind,
    /// Send prompts as text instead of token ids (always text for chat).
    pub text: bool,
    /// SSE streaming (TTFT and ITL need it).
    pub stream: bool,
    /// Requests in flight at most.
    pub max_concurrency: usize,
    /// Per-request deadline.
    pub timeout: Duration,
    /// Caps every request's output length.
    pub max_output_tokens: Option<u32>,
}

impl LoadConfig {
    /// The URL requests go to.
    pub fn url(&self) -> String {
        let base = self.base_url.trim_end_matches('/');
        match self.api {
            ApiKind::Completions => format!("{base}/v1/completions"),
            ApiKind::Chat => format!("{base}/v1/chat/completions"),
        }
    }

    /// The request body for a prompt of `tokens` generating `output` tokens.
    pub fn body(&self, tokens: &[u32], output: u32) -> Bytes {
        let output = self
            .max_output_tokens
            .map_or(output, |m| output.min(m))
            .max(1);
        let text = || {
            tokens
                .iter()
                .map(|&t| word(t))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut v = match self.api {
            ApiKind::Completions if !self.text => json!({ "prompt": tokens }),
            ApiKind::Completions => json!({ "prompt": text() }),
            ApiKind::Chat => json!({
                "messages": [{"role": "user", "content": text()}],
                "max_completion_tokens": output,
            }),
        };
        v["model"] = Value::from(self.model.as_str());
        v["max_tokens"] = output.into();
        v["ignore_eos"] = true.into();
        v["temperature"] = 0.into();
        v["stream"] = self.stream.into();
        if self.stream {
            v["stream_options"] = json!({ "include_usage": true });
        }
        Bytes::from(v.to_string())
    }
}

/// Checks that `url` is plain `http://host:port[/]`.
pub fn check_url(url: &str) -> Result<(), FleetError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| FleetError::InvalidConfig(format!("--url {url:?}: {e}")))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(FleetError::InvalidConfig(format!(
            "--url {url:?}: expected http://host:port (TLS is not supported; port-forward instead)"
        )));
    }
    Ok(())
}

/// Runs `trace` against the server; stops early (keeping what was measured) on `cancel`.
pub async fn run(
    trace: &Trace,
    cfg: &LoadConfig,
    cancel: &CancellationToken,
) -> Result<Vec<Record>, FleetError> {
    check_url(&cfg.base_url)?;
    if cfg.max_concurrency == 0 {
        return Err(FleetError::InvalidConfig(
            "--max-concurrency must be positive".into(),
        ));
    }
    let url: Arc<str> = Arc::from(cfg.url());
    let http = client::client(cfg.max_concurrency);
    let slots = Arc::new(Semaphore::new(cfg.max_concurrency));
    let mut tasks: JoinSet<Record> = JoinSet::new();
    let mut records = Vec::with_capacity(trace.requests.len());
    let start = Instant::now();
    let mut tokens = Vec::new();
    for (index, r) in trace.requests.iter().enumerate() {
        let due = start + Duration::from_micros(r.arrival.micros());
        let slot = tokio::select! {
            _ = cancel.cancelled() => break,
            p = async {
                tokio::time::sleep_until(due).await;
                match slots.clone().try_acquire_owned() {
                    Ok(p) => Ok((p, false)),
                    Err(_) => slots.clone().acquire_owned().await.map(|p| (p, true)),
                }
            } => p,
        };
        let Ok((permit, delayed)) = slot else { break };
        let sent = Instant::now();
        r.prompt.materialize(&mut tokens);
        let body = cfg.body(&tokens, r.output_tokens);
        let (http, url, stream, timeout) = (http.clone(), url.clone(), cfg.stream, cfg.timeout);
        let input_tokens = r.input_tokens();
        tasks.spawn(async move {
            let outcome: Outcome = client::send(&http, &url, body, stream, timeout).await;
            drop(permit);
            Record {
                index,
                due_s: (due - start).as_secs_f64(),
                sent_s: (sent - start).as_secs_f64(),
                delayed,
                input_tokens,
                outcome,
            }
        });
        while let Some(done) = tasks.try_join_next() {
            records.extend(done.ok());
        }
    }
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                break;
            }
            next = tasks.join_next() => match next {
                Some(done) => records.extend(done.ok()),
                None => break,
            },
        }
    }
    records.sort_by_key(|r| r.index);
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_urls() {
        let cfg = LoadConfig {
            base_url: "http://127.0.0.1:1/".into(),
            model: "m".into(),
            api: ApiKind::Completions,
            text: false,
            stream: true,
            max_concurrency: 1,
            timeout: Duration::from_secs(1),
            max_output_tokens: Some(4),
        };
        assert_eq!(cfg.url(), "http://127.0.0.1:1/v1/completions");
        let v: Value = serde_json::from_slice(&cfg.body(&[5, 6], 10)).unwrap();
        assert_eq!(v["prompt"], json!([5, 6]));
        assert_eq!(
            (
                v["max_tokens"].as_u64(),
                v["stream_options"]["include_usage"].as_bool()
            ),
            (Some(4), Some(true))
        );
        let chat = LoadConfig {
            api: ApiKind::Chat,
            ..cfg
        };
        let v: Value = serde_json::from_slice(&chat.body(&[5, 6], 2)).unwrap();
        assert_eq!(
            v["messages"][0]["content"],
            format!("{} {}", word(5), word(6))
        );
        assert!(check_url("https://x:1").is_err() && check_url("http://x:1").is_ok());
    }
}
