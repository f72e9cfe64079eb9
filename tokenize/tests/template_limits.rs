//! Hostile chat templates against the real renderer: request templates are refused unless trusted,
//! and every render (trusted or the model's own) ends in a clear error, not an abort or a hang,
//! when it runs out of fuel, passes the output cap, or is cancelled by its caller.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::path::Path;
use std::time::Duration;

use kvpick_tokenize::limits::{self, Cancel, DEFAULT_FUEL, TemplatePolicy};
use kvpick_tokenize::{ChatRequest, Error, ModelTokenizer};
use serde_json::json;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn model(name: &str, policy: TemplatePolicy) -> ModelTokenizer {
    ModelTokenizer::load_with(&fixture(name), policy).unwrap()
}

fn trusted() -> TemplatePolicy {
    TemplatePolicy {
        trust_request_template: true,
        ..TemplatePolicy::default()
    }
}

fn with_template(source: &str) -> ChatRequest {
    ChatRequest {
        chat_template: Some(source.into()),
        ..ChatRequest::new(vec![json!({"role": "user", "content": "hi"})])
    }
}

/// The memory attack: 100,000 × a 100 MB string.
const MEMORY_BOMB: &str = "{% for i in range(100000) %}{{ 'x'*100000000 }}{% endfor %}";
/// The CPU-only variant: 10^10 loop steps, no output.
const CPU_BOMB: &str =
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";

#[test]
fn request_templates_are_refused_unless_trusted() {
    let m = model("chatml", TemplatePolicy::default());
    for source in [MEMORY_BOMB, CPU_BOMB, "{{ messages[0].content }}"] {
        assert_eq!(
            m.render_chat(&with_template(source)),
            Err(Error::UntrustedTemplate)
        );
    }
    assert_eq!(Error::UntrustedTemplate.label(), "untrusted_chat_template");
    // A trusted harmless template renders.
    let m = model("chatml", trusted());
    assert_eq!(
        m.render_chat(&with_template("{{ messages[0].content }}!"))
            .unwrap(),
        "hi!"
    );
}

#[test]
fn hostile_trusted_templates_end_in_a_limit_error() {
    let m = model("chatml", trusted());
    let bombs = [
        MEMORY_BOMB,
        CPU_BOMB,
        // Doubling a string through a namespace: 2^40 bytes in 40 steps.
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
        // A list of many references to one big string: small to build, huge to print or dump.
        "{% set s = 'x' * 1000000 %}{% set l = [s] * 100000 %}{{ l }}",
        "{% set s = 'x' * 1000000 %}{% set l = [s] * 100000 %}{{ l|tojson }}",
        // Our own filter's arguments.
        "{{ messages|tojson(indent=10000000000) }}",
        "{{ [[[[[[1]]]]]]|tojson(indent='x' * 1000000) * 1000 }}",
        // Deep recursion.
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    ];
    for source in bombs {
        match m.render_chat(&with_template(source)) {
            Err(Error::TemplateLimit(_) | Error::Template(_)) => {}
            other => panic!("{source}: {other:?}"),
        }
    }
    // The model's own template under the same fuel: a small fuel stops it too.
    let tight = model(
        "chatml",
        TemplatePolicy {
            fuel: 10,
            ..TemplatePolicy::default()
        },
    );
    let request = ChatRequest::new(vec![json!({"role": "user", "content": "hi"})]);
    assert!(matches!(
        tight.render_chat(&request),
        Err(Error::TemplateLimit(_))
    ));
}

#[test]
fn the_output_cap_holds_for_the_models_own_template() {
    let m = model(
        "chatml",
        TemplatePolicy {
            max_output_bytes: 1000,
            ..TemplatePolicy::default()
        },
    );
    let short = ChatRequest::new(vec![json!({"role": "user", "content": "hi"})]);
    assert!(m.render_chat(&short).is_ok());
    let long = ChatRequest::new(vec![json!({"role": "user", "content": "y".repeat(2000)})]);
    let err = m.render_chat(&long).unwrap_err();
    assert!(
        matches!(&err, Error::TemplateLimit(m) if m.contains("1000 bytes")),
        "{err:?}"
    );
}

#[test]
fn real_templates_fit_the_default_fuel_with_a_large_conversation() {
    // 2,000 turns of 2 KiB (8 MiB of prompt) with tools, through the most involved fixture.
    let m = model("llama3", TemplatePolicy::default());
    let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
    for i in 0..2000 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("{i} {}", "word ".repeat(400))}));
    }
    messages.push(json!({"role": "user", "content": "and?"}));
    let tools = vec![
        json!({"type": "function", "function": {"name": "f", "description": "d",
        "parameters": {"type": "object", "properties": {"a": {"type": "string"}}}}}),
    ];
    let request = ChatRequest {
        tools: Some(tools),
        ..ChatRequest::new(messages)
    };
    let text = m.render_chat(&request).unwrap();
    assert!(text.len() > 4_000_000, "{}", text.len());
    // Half the default fuel is enough for this conversation: headroom for a 16 MiB body.
    let half = model(
        "llama3",
        TemplatePolicy {
            fuel: DEFAULT_FUEL / 2,
            ..TemplatePolicy::default()
        },
    );
    assert_eq!(half.render_chat(&request).unwrap(), text);
}

#[test]
fn a_cancelled_render_stops() {
    // Fuel for ~forever: only the cancel flag can end this render.
    let m = model(
        "chatml",
        TemplatePolicy {
            trust_request_template: true,
            fuel: u64::MAX / 128,
            ..TemplatePolicy::default()
        },
    );
    for (source, over_range) in [
        (CPU_BOMB, true),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
            true,
        ),
        // No range and no output: loops over a string and over the request's own messages.
        (
            "{% set s = 'x' * 100000 %}{% for a in s %}{% for b in s %}{% set c = a ~ b %}{% endfor %}{% endfor %}",
            false,
        ),
        (
            "{% set s = 'y' * 1000000 %}{% for m in messages %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}{% endfor %}",
            false,
        ),
    ] {
        let flag = Cancel::new();
        let cancel = flag.clone();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            cancel.cancel();
        });
        let result = limits::with_cancel(&[flag], || m.render_chat(&with_template(source)));
        canceller.join().unwrap();
        // Every loop checks the flag at each iteration: the render fails as cancelled (without
        // the check, the silent loops would run for hours). A `range` may instead end early,
        // ending its loops and the render (the caller discards the result).
        match result {
            Err(Error::TemplateLimit(m)) => assert!(m.contains("cancelled"), "{m}"),
            Ok(text) if over_range => assert!(text.len() < 10_000_000_000),
            other => panic!("{source}: {other:?}"),
        }
    }
}
