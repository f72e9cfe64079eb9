//! kvpick against real vLLM: two vLLM CPU servers serving a tiny random-weight Llama
//! (`tests/vllm/make_tiny_model.py`), the real `kvpick-epp` binary (KV events in connect mode with
//! replay, the model's tokenizer and chat template) and a real Envoy in front. vLLM's own
//! `usage.prompt_tokens_details.cached_tokens` is the ground truth: a follow-up routed to the pod
//! holding its prefix finds it cached there.
//!
//! The simulated fleet is then compared with vLLM field by field (`real_vllm/conformance.rs`).
//!
//! Servers take a minute to start and 2 GB each, so one test starts them once and runs the
//! scenarios in sequence, each on prompts of its own. Run it alone with
//! `cargo test -p kvpick-epp --test real_vllm` (vLLM comes from `.ci/setup`'s venv).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test crate: a failed unwrap is a failed test

mod common;
#[path = "real_vllm/conformance.rs"]
mod conformance;

use std::time::Duration;

use common::envoy::{self, Envoy, post_direct};
use common::epp::Epp;
use common::vllm_cpu::{BLOCK, MODEL, Vllm, tiny_model};
use kvpick_tokenize::{ChatRequest, ModelTokenizer, TokenCache, TokenizeInput};
use serde_json::{Value, json};

/// Both servers, kvpick-epp and Envoy, started once.
struct Rig {
    pods: [Vllm; 2],
    epp: Epp,
    gateway: Envoy,
    _dir: tempfile::TempDir,
}

/// A text of `words` words whose very first words differ for each `seed`: its own prefix.
fn passage(seed: usize, words: usize) -> String {
    const WORDS: [&str; 24] = [
        "amber", "basalt", "cedar", "delta", "ember", "fjord", "granite", "harbor", "iris",
        "juniper", "kelp", "lagoon", "meadow", "nickel", "orchid", "pumice", "quartz", "river",
        "slate", "tundra", "umber", "valley", "willow", "zephyr",
    ];
    let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut out = format!("Passage {seed}:");
    for i in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push(' ');
        out.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        if i % 9 == 8 {
            out.push_str(&format!(" {}.", x % 1000));
        }
    }
    out
}

/// Distinct token ids under the tiny vocabulary (1024), `n` of them, different per `seed`.
fn token_prompt(seed: u32, n: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| 3 + (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 1000)
        .collect()
}

fn weather() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "Current weather in a city, in °C.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}})
}

fn cached(response: &Value) -> u64 {
    response["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or(0)
}

fn prompt_tokens(response: &Value) -> u64 {
    response["usage"]["prompt_tokens"].as_u64().unwrap()
}

/// How many whole blocks' worth of tokens a prefix of `tokens` tokens fills.
fn whole_blocks(tokens: u64) -> u64 {
    tokens / BLOCK as u64 * BLOCK as u64
}

/// What a request extending `seeded`'s prompt must find cached: its whole blocks but the last.
fn reusable(seeded: &Value) -> u64 {
    whole_blocks(prompt_tokens(seeded)) - BLOCK as u64
}

/// The first `n` words of `text`: a shorter prefix of it.
fn first_words(text: &str, n: usize) -> String {
    text.split(' ').take(n).collect::<Vec<_>>().join(" ")
}

const COMPLETIONS: &str = "/v1/completions";

impl Rig {
    async fn prompt_counters(&self) -> [f64; 2] {
        [
            self.pods[0].counter("vllm:prompt_tokens_total").await,
            self.pods[1].counter("vllm:prompt_tokens_total").await,
        ]
    }

    /// Which pod's prompt-token counter moved by `tokens` since `before` (vLLM's own account of
    /// who served the request).
    async fn served_by(&self, before: [f64; 2], tokens: u64) -> usize {
        for _ in 0..100 {
            let now = self.prompt_counters().await;
            let moved: Vec<usize> = (0..2).filter(|&i| now[i] > before[i]).collect();
            if moved.len() == 1 && now[moved[0]] - before[moved[0]] >= tokens as f64 {
                return moved[0];
            }
            assert!(moved.len() < 2, "both pods served: {before:?} -> {now:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no pod counted the request's {tokens} prompt tokens");
    }

    fn label(&self, pod: usize) -> String {
        self.pods[pod].addr.to_string()
    }

    /// kvpick's count of `pod`'s blocks by event (`stored`, `removed`, `cleared`).
    fn blocks_series(&self, pod: usize, op: &str) -> String {
        format!(
            "kvpick_kv_events_blocks_total{{endpoint=\"{}\",op=\"{op}\"}}",
            self.label(pod)
        )
    }

    async fn blocks(&mut self, pod: usize, op: &str) -> f64 {
        let series = self.blocks_series(pod, op);
        self.epp.value(&series).await
    }

    async fn wait_blocks(&mut self, pod: usize, op: &str, at_least: f64) {
        let series = self.blocks_series(pod, op);
        self.epp.wait_for(&series, at_least).await;
    }

    /// Serves `body` on `pod` directly (past Envoy and kvpick) and waits until kvpick has applied
    /// the blocks it stored: only the pod's KV events tell kvpick where that prefix lives.
    async fn seed(&mut self, pod: usize, path: &str, body: &Value) -> Value {
        let held = self.blocks(pod, "stored").await;
        let before = self.prompt_counters().await;
        let response = post_direct(self.pods[pod].addr, path, body).await;
        let new_blocks = (prompt_tokens(&response) - cached(&response)) / BLOCK as u64;
        assert_eq!(self.served_by(before, prompt_tokens(&response)).await, pod);
        self.wait_blocks(pod, "stored", held + new_blocks as f64)
            .await;
        response
    }

    /// Sends `body` through Envoy (kvpick picks the pod); returns the pod that served it and
    /// vLLM's answer. Streamed answers are returned as their final usage chunk.
    async fn route(&self, path: &str, body: &Value) -> (usize, Value) {
        let before = self.prompt_counters().await;
        let (status, _, bytes) =
            envoy::post(&self.gateway, path, body.to_string().as_bytes(), &[]).await;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        assert_eq!(status, 200, "{path} through Envoy: {text}");
        let response = if body["stream"] == true {
            let events: Vec<Value> = text
                .split("\n\n")
                .filter_map(|e| e.trim().strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            assert!(
                events.len() >= 3 && text.trim_end().ends_with("data: [DONE]"),
                "a streamed answer: {text}"
            );
            events.last().unwrap().clone()
        } else {
            serde_json::from_str(&text).unwrap()
        };
        let pod = self.served_by(before, prompt_tokens(&response)).await;
        (pod, response)
    }

    /// Routes `body` and asserts it lands on `pod` and finds at least `at_least` tokens cached.
    async fn expect_routed(
        &mut self,
        what: &str,
        path: &str,
        body: &Value,
        pod: usize,
        at_least: u64,
    ) {
        let (served, response) = self.route(path, body).await;
        assert_eq!(
            served,
            pod,
            "{what}: went to pod {served}, its prefix is on pod {pod} ({response}); kvpick-epp's log:\n{}",
            self.epp.log_text()
        );
        assert!(
            cached(&response) >= at_least,
            "{what}: vLLM found {} tokens cached, expected at least {at_least}: {response}",
            cached(&response)
        );
    }

    /// Seeds `first` on `pod` directly, then routes `next`, which extends it: it must land on
    /// `pod` and find the seed's prefix there.
    async fn follows(&mut self, what: &str, pod: usize, path: &str, first: &Value, next: &Value) {
        let seeded = self.seed(pod, path, first).await;
        self.expect_routed(what, path, next, pod, reusable(&seeded))
            .await;
    }

    /// A passage held whole on pod 0 and in part (its first 60 words) on pod 1: its follow-up
    /// goes to pod 0 until pod 0 loses it (the `what` a scenario then does), and after that to
    /// pod 1, with [`Contested::after`].
    async fn contested(&mut self, seed: usize, what: &str) -> Contested {
        let text = passage(seed, 300);
        let seeded = self.seed(0, COMPLETIONS, &completion(text.clone())).await;
        let short = completion(first_words(&text, 60));
        let short_seeded = self.seed(1, COMPLETIONS, &short).await;
        let follow_up = completion(format!("{text} {what}"));
        let before = format!("before the {what}");
        self.expect_routed(&before, COMPLETIONS, &follow_up, 0, reusable(&seeded))
            .await;
        Contested {
            what: what.to_owned(),
            follow_up,
            on_pod_1: reusable(&short_seeded),
        }
    }
}

/// See [`Rig::contested`].
struct Contested {
    what: String,
    follow_up: Value,
    /// What the follow-up finds cached on pod 1.
    on_pod_1: u64,
}

impl Contested {
    /// Pod 0 lost the passage: the follow-up goes to pod 1 and finds its part there.
    async fn after(self, rig: &mut Rig) {
        let after = format!("after the {}", self.what);
        rig.expect_routed(&after, COMPLETIONS, &self.follow_up, 1, self.on_pod_1)
            .await;
    }
}

fn completion(prompt: impl Into<Value>) -> Value {
    json!({"model": MODEL, "prompt": prompt.into(), "max_tokens": 2, "temperature": 0})
}

fn chat(messages: Value) -> Value {
    json!({"model": MODEL, "messages": messages, "max_tokens": 2, "temperature": 0})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kvpick_routes_real_vllm_to_the_pod_holding_the_prefix() {
    let started = tokio::time::Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let model = tiny_model();
    let mut pods = [Vllm::spawn(dir.path()), Vllm::spawn(dir.path())];
    for p in &mut pods {
        p.wait_healthy().await;
    }
    eprintln!("vLLM servers healthy after {:?}", started.elapsed());
    // Everything pod 0 publishes from now on, for the fleet-vs-vLLM comparison.
    let tap = conformance::Tap::connect(&format!("tcp://127.0.0.1:{}", pods[0].events)).await;

    // History from before kvpick started: pod 0 serves a prompt nobody subscribes to yet; kvpick
    // learns of it only by asking the pod's replay endpoint.
    let history = passage(1, 300);
    let first = post_direct(pods[0].addr, COMPLETIONS, &completion(history.clone())).await;
    let history_tokens = prompt_tokens(&first);

    let endpoints = dir.path().join("endpoints.yaml");
    let mut file = format!("model: {MODEL}\nendpoints:\n");
    for p in &pods {
        file += &format!(
            "  - address: {}\n    kvEvents: tcp://127.0.0.1:{}\n    kvReplay: tcp://127.0.0.1:{}\n",
            p.addr, p.events, p.replay
        );
    }
    std::fs::write(&endpoints, file).unwrap();
    let mut epp = Epp::start(&endpoints, dir.path(), model);
    let addresses: Vec<_> = pods.iter().map(|p| p.addr).collect();
    epp.wait_live(&addresses).await;
    let gateway = Envoy::start(epp.grpc).await;
    let mut rig = Rig {
        pods,
        epp,
        gateway,
        _dir: dir,
    };
    rig.wait_blocks(0, "stored", (history_tokens / BLOCK as u64) as f64)
        .await;

    replayed_history_routes_to_its_pod(&mut rig, &history, history_tokens).await;
    a_pod_with_no_events_yet_gets_traffic(&mut rig).await;
    follow_ups_land_on_the_prefix(&mut rig).await;
    kvpick_tokenizes_as_vllm(&mut rig).await;
    a_cache_reset_moves_traffic(&mut rig).await;
    an_eviction_moves_traffic(&mut rig).await;
    a_restarted_pod_is_relearned(&mut rig).await;
    conformance::fleet_matches_vllm(&rig.pods[0], &tap).await;

    eprintln!("real-vLLM suite done in {:?}", started.elapsed());
}

async fn replayed_history_routes_to_its_pod(rig: &mut Rig, history: &str, tokens: u64) {
    let replays = format!(
        "kvpick_kv_events_replays_total{{endpoint=\"{}\",outcome=\"ok\"}}",
        rig.label(0)
    );
    assert!(rig.epp.value(&replays).await >= 1.0, "pod 0 was replayed");
    let body = completion(format!("{history} and then"));
    rig.expect_routed(
        "replayed history",
        COMPLETIONS,
        &body,
        0,
        whole_blocks(tokens) - BLOCK as u64,
    )
    .await;
}

/// Pod 1 has published nothing yet: kvpick must still send it work (prompts no pod holds).
async fn a_pod_with_no_events_yet_gets_traffic(rig: &mut Rig) {
    assert_eq!(
        rig.blocks(1, "stored").await,
        0.0,
        "pod 1 published nothing yet"
    );
    let mut per_pod = [0; 2];
    for seed in 0..8 {
        let (pod, _) = rig
            .route(COMPLETIONS, &completion(passage(100 + seed, 20)))
            .await;
        per_pod[pod] += 1;
    }
    assert!(per_pod[1] >= 1, "pod 1 got no traffic: {per_pod:?}");
}

/// Completion, chat (through the model's template) and token-id prompts, each seeded on a pod
/// directly and followed up through Envoy; one of them streamed.
async fn follow_ups_land_on_the_prefix(rig: &mut Rig) {
    // Text completion on pod 1.
    let text = passage(2, 250);
    let (first, next) = (
        completion(text.clone()),
        completion(format!("{text} and more words")),
    );
    rig.follows("completion", 1, COMPLETIONS, &first, &next)
        .await;

    // Chat on pod 0: the follow-up repeats the conversation and adds a turn.
    let turn = json!([{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": passage(3, 250)}]);
    let mut next = turn.as_array().unwrap().clone();
    next.push(json!({"role": "assistant", "content": "Noted."}));
    next.push(json!({"role": "user", "content": "And the next word?"}));
    let (first, next) = (chat(turn), chat(json!(next)));
    rig.follows("chat", 0, "/v1/chat/completions", &first, &next)
        .await;

    // Token ids on pod 1.
    let ids = token_prompt(4, 400);
    let mut more = ids.clone();
    more.extend(token_prompt(5, 40));
    let (first, next) = (completion(json!(ids)), completion(json!(more)));
    rig.follows("token ids", 1, COMPLETIONS, &first, &next)
        .await;

    // Streamed, on pod 0: the answer arrives as server-sent events through kvpick and Envoy, and
    // its final usage chunk carries vLLM's count.
    let text = passage(6, 250);
    let mut next = completion(format!("{text} streamed"));
    next["stream"] = json!(true);
    next["max_tokens"] = json!(8);
    next["stream_options"] = json!({"include_usage": true});
    rig.follows("streamed", 0, COMPLETIONS, &completion(text), &next)
        .await;
}

/// kvpick's token ids (the tokenize crate kvpick-epp runs, on the model's own files) equal
/// vLLM's `/tokenize` for text and chat requests.
async fn kvpick_tokenizes_as_vllm(rig: &mut Rig) {
    let tokenizer = ModelTokenizer::load(tiny_model()).unwrap();
    let cache = TokenCache::new(0);
    let cases = [
        json!({"prompt": "Hello world, café — 中文 😀 and tabs\tand  spaces"}),
        json!({"prompt": passage(7, 40)}),
        json!({"messages": [{"role": "user", "content": "hello"}]}),
        json!({"messages": [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": passage(8, 30)},
                            {"role": "assistant", "content": "Sure."},
                            {"role": "user", "content": "More?"}]}),
        json!({"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": false}),
        // Agentic chats: tools, tool calls (fields in an order of the client's choosing, extra
        // fields, arguments as JSON text or empty), tool results as text and as parts,
        // multi-part user and system content, a system prompt with Claude Code's billing line.
        json!({"tools": [weather(), {"type": "function", "x": 1, "defer_loading": true,
                    "function": {"name": "search", "strict": true, "y": 2,
                                 "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}}],
               "messages": [
            {"role": "system", "content": "You call tools."},
            {"role": "user", "content": "Weather in Paris and Zürich?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"celsius\"}"}, "id": "call_1"},
                {"function": {"arguments": "", "name": "get_weather", "extra": 1}, "id": "call_2", "type": "function", "index": 1}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"temperature\": 21}"},
            {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "cloudy"}, {"type": "text", "text": "12 C"}]},
            {"role": "assistant", "content": "Paris is 21 C, Zürich cloudy."},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}, {"type": "text", "text": "Tomorrow?"}]}]}),
        json!({"messages": [
            {"role": "system", "content": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=ab12\nYou are Claude Code."},
                                           {"type": "text", "text": "Be brief."}]},
            {"role": "user", "content": "hi"}]}),
        json!({"tools": [weather()], "messages": [
            {"role": "user", "content": "and now?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "c9", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]}],
               "add_generation_prompt": false}),
    ];
    for case in cases {
        let mut body = case.clone();
        body["model"] = json!(MODEL);
        let theirs = post_direct(rig.pods[0].addr, "/tokenize", &body).await;
        let theirs: Vec<u32> = serde_json::from_value(theirs["tokens"].clone()).unwrap();
        let input = match body.get("prompt") {
            Some(p) => TokenizeInput::Prompt {
                text: p.as_str().unwrap().to_owned(),
                add_special_tokens: true,
            },
            None => TokenizeInput::Chat(ChatRequest::from_body(body.as_object().unwrap()).unwrap()),
        };
        let ours = tokenizer.tokenize(&input, &cache).unwrap().ids;
        assert_eq!(
            ours, theirs,
            "kvpick's ids differ from vLLM's /tokenize for {case}"
        );
    }
    tool_call_arguments_vllm_refuses(rig, &tokenizer, &cache).await;
}

/// A tool call whose `arguments` is an object (or absent) is refused by vLLM 0.32 (400): kvpick
/// makes no ids for it either, routes it without them (by load) and counts it.
async fn tool_call_arguments_vllm_refuses(
    rig: &mut Rig,
    tokenizer: &ModelTokenizer,
    cache: &TokenCache,
) {
    let series = "kvpick_tokenize_total{source=\"unavailable\",outcome=\"invalid_request\"}";
    for (n, function) in [
        json!({"name": "get_weather", "arguments": {"city": "Oslo"}}),
        json!({"name": "get_weather"}),
    ]
    .into_iter()
    .enumerate()
    {
        let body = json!({"model": MODEL, "max_tokens": 2, "tools": [weather()], "messages": [
            {"role": "user", "content": "Weather in Oslo?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_9", "type": "function", "function": function}]},
            {"role": "tool", "tool_call_id": "call_9", "content": "3 C"}]});
        let req = hyper::Request::post(format!("http://{}/tokenize", rig.pods[0].addr))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        let status = envoy::client().request(req).await.unwrap().status();
        assert_eq!(status, 400, "vLLM's /tokenize for {function}");
        let ours = ChatRequest::from_body(body.as_object().unwrap())
            .and_then(|chat| tokenizer.tokenize(&TokenizeInput::Chat(chat), cache));
        assert!(
            matches!(ours, Err(kvpick_tokenize::Error::InvalidRequest(_))),
            "kvpick tokenized what vLLM refuses ({function}): {ours:?}"
        );
        let before = rig.epp.value(series).await;
        let (status, _, answer) = envoy::post(
            &rig.gateway,
            "/v1/chat/completions",
            body.to_string().as_bytes(),
            &[],
        )
        .await;
        assert_eq!(
            status,
            400,
            "routed to a pod, which refuses it: {}",
            String::from_utf8_lossy(&answer)
        );
        rig.epp.wait_for(series, before + 1.0).await;
        assert!(rig.epp.value(series).await >= (n + 1) as f64);
    }
}

/// `/reset_prefix_cache` on pod 0, which holds the longer prefix: vLLM publishes
/// `AllBlocksCleared` when its engine next steps, and the follow-up then goes to pod 1, which
/// holds a shorter one.
async fn a_cache_reset_moves_traffic(rig: &mut Rig) {
    let contested = rig.contested(9, "reset").await;
    let cleared = rig.blocks(0, "cleared").await;
    let uri = format!("http://{}/reset_prefix_cache", rig.pods[0].addr);
    let req = hyper::Request::post(uri)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = envoy::client().request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "/reset_prefix_cache (VLLM_SERVER_DEV_MODE=1)"
    );
    // The reset reaches the KV-event stream with the engine's next step.
    post_direct(rig.pods[0].addr, COMPLETIONS, &completion("wake up")).await;
    rig.wait_blocks(0, "cleared", cleared + 1.0).await;
    contested.after(rig).await;
}

/// Pod 0 is flooded with distinct prompts until vLLM evicts older blocks (`BlockRemoved`): a
/// prefix it held longer than pod 1 then routes to pod 1.
async fn an_eviction_moves_traffic(rig: &mut Rig) {
    let contested = rig.contested(10, "eviction").await;

    // 1024 blocks of 32 tokens: ten distinct prompts of 3,900 tokens overflow them.
    let removed = rig.blocks(0, "removed").await;
    for seed in 0..10 {
        post_direct(
            rig.pods[0].addr,
            COMPLETIONS,
            &completion(json!(token_prompt(1000 + seed, 3900))),
        )
        .await;
    }
    rig.wait_blocks(0, "removed", removed + 1.0).await;
    // ...and until kvpick has applied the last of them.
    let mut last = rig.blocks(0, "removed").await;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = rig.blocks(0, "removed").await;
        if now == last {
            break;
        }
        last = now;
    }
    contested.after(rig).await;
}

/// Pod 1 restarts (same ports, its sequence back at 0, its cache empty): kvpick forgets what it
/// held and learns what it stores next.
async fn a_restarted_pod_is_relearned(rig: &mut Rig) {
    let text = passage(11, 300);
    rig.seed(1, COMPLETIONS, &completion(text.clone())).await;
    let restarts = format!(
        "kvpick_kv_events_restarts_total{{endpoint=\"{}\"}}",
        rig.label(1)
    );
    let before = rig.epp.value(&restarts).await;
    rig.pods[1].restart().await;

    // Its first events after the restart (sequence 0) tell kvpick it restarted.
    let fresh = passage(12, 250);
    let relearned = rig.seed(1, COMPLETIONS, &completion(fresh.clone())).await;
    rig.epp.wait_for(&restarts, before + 1.0).await;
    // Said at info, in a plain-text log (no colour codes when not on a terminal).
    let log = rig.epp.log_text();
    let pod = rig.label(1);
    assert!(
        log.lines().any(|l| l.contains(" INFO ")
            && l.contains("KV-event index reset")
            && l.contains(&pod)),
        "the restart is logged at info:\n{log}"
    );
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{log}"
    );
    let body = completion(format!("{fresh} again"));
    let at_least = reusable(&relearned);
    rig.expect_routed(
        "re-learned after the restart",
        COMPLETIONS,
        &body,
        1,
        at_least,
    )
    .await;

    // The long prefix pod 1 held before is gone; pod 0 now holds a part of it.
    let (first, next) = (
        completion(first_words(&text, 60)),
        completion(format!("{text} forgotten")),
    );
    rig.follows("forgotten after the restart", 0, COMPLETIONS, &first, &next)
        .await;
}
