//! The async API end to end: local tokenization on the pool, the cache, deadlines, shutdown, and the
//! remote fallback against a real HTTP server speaking vLLM's `/tokenize` protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers may panic

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use kvpick_tokenize::{
    ChatRequest, HyperClient, ModelTokenizer, RegistryConfig, RemoteTokenizer, TokenCache,
    Tokenization, TokenizationOptions, TokenizeInput, TokenizeOutcome, TokenizeRequest,
    TokenizeSource, TokenizerRegistry, Unavailable,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn registry() -> Arc<TokenizerRegistry> {
    let config = RegistryConfig {
        dir: None,
        models: vec![
            RegistryConfig::parse_entry(&format!("qwen={}", fixture("chatml").display())).unwrap(),
        ],
        ..Default::default()
    };
    Arc::new(TokenizerRegistry::load(&config).unwrap())
}

fn chat(turns: usize) -> TokenizeInput {
    let mut messages = vec![json!({"role": "system", "content": "Be brief."})];
    for i in 0..turns {
        messages.push(
            json!({"role": "user", "content": format!("question {i}: why is the sky blue?")}),
        );
        messages.push(
            json!({"role": "assistant", "content": format!("answer {i}: Rayleigh scattering.")}),
        );
    }
    messages.push(json!({"role": "user", "content": "and at sunset?"}));
    TokenizeInput::Chat(ChatRequest::new(messages))
}

/// A stand-in vLLM pod: `/tokenize` answers with the chatml fixture's ids (as a pod serving that
/// tokenizer would), after `delay`; any other path is a 404, a `model` of "broken" a 500.
struct Pod {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Pod {
    async fn start(delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let model = Arc::new(ModelTokenizer::load(&fixture("chatml")).unwrap());
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    Ok((stream, _)) = listener.accept() => {
                        let model = model.clone();
                        let service = service_fn(move |req| answer(req, model.clone(), delay));
                        connections.spawn(async move {
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        });
                    }
                }
            }
            connections.shutdown().await;
        });
        Self {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    model: Arc<ModelTokenizer>,
    delay: Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, body: String| {
        Ok(Response::builder()
            .status(status)
            .body(Full::from(body))
            .unwrap())
    };
    if req.uri().path() != "/tokenize" || req.method() != hyper::Method::POST {
        return reply(StatusCode::NOT_FOUND, "{}".into());
    }
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&body).unwrap();
    tokio::time::sleep(delay).await;
    if body["model"] == "broken" {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"error": "boom"}"#.into(),
        );
    }
    let input = if let Some(prompt) = body["prompt"].as_str() {
        TokenizeInput::Prompt {
            text: prompt.into(),
            add_special_tokens: body["add_special_tokens"].as_bool().unwrap(),
        }
    } else {
        TokenizeInput::Chat(ChatRequest::from_body(body.as_object().unwrap()).unwrap())
    };
    let ids = model.tokenize(&input, &TokenCache::new(0)).unwrap().ids;
    reply(
        StatusCode::OK,
        json!({"tokens": ids, "count": ids.len(), "max_model_len": 32768}).to_string(),
    )
}

fn service(timeout: Duration, remote: bool) -> Tokenization {
    let options = TokenizationOptions {
        timeout,
        ..TokenizationOptions::default()
    };
    let remote =
        remote.then(|| RemoteTokenizer::new(Arc::new(HyperClient::new()), Duration::from_secs(5)));
    Tokenization::new(registry(), remote, options)
}

fn request(model: &str, input: TokenizeInput) -> TokenizeRequest {
    TokenizeRequest {
        model: model.into(),
        input,
    }
}

#[tokio::test]
async fn local_then_cached() {
    let svc = service(Duration::from_secs(5), false);
    let want = ModelTokenizer::load(&fixture("chatml"))
        .unwrap()
        .tokenize(&chat(3), &TokenCache::new(0))
        .unwrap()
        .ids;
    let first = svc.tokenize(request("qwen", chat(3)), None).await;
    assert_eq!(first.source(), TokenizeSource::Local);
    assert_eq!(first.ids(), Some(&want[..]));
    let again = svc.tokenize(request("qwen", chat(3)), None).await;
    assert_eq!(again.source(), TokenizeSource::Cache);
    assert_eq!(again.ids(), Some(&want[..]));
    // The next turn: history from the cache, only the new turn encoded.
    let next = svc.tokenize(request("qwen", chat(4)), None).await;
    let TokenizeOutcome::Tokens {
        source,
        cached_tokens,
        ids,
    } = next
    else {
        panic!("no tokens: {next:?}");
    };
    assert_eq!(source, TokenizeSource::Local);
    assert!(
        cached_tokens * 10 > ids.len() * 8,
        "{cached_tokens} of {} from the cache",
        ids.len()
    );
    svc.shutdown().await;
    let closed = svc.tokenize(request("qwen", chat(1)), None).await;
    assert_eq!(closed, TokenizeOutcome::Unavailable(Unavailable::Closed));
}

#[tokio::test]
async fn deadline_passes_and_the_overrun_still_fills_the_cache() {
    let svc = service(Duration::from_micros(1), false);
    let long = TokenizeInput::Prompt {
        text: "the quick brown fox jumps over the lazy dog. ".repeat(20_000),
        add_special_tokens: true,
    };
    let out = svc.tokenize(request("qwen", long.clone()), None).await;
    assert_eq!(out, TokenizeOutcome::Unavailable(Unavailable::Timeout));
    assert_eq!(out.source().label(), "unavailable");
    svc.shutdown().await; // joins the overrunning encode
    assert!(
        !svc.cache().is_empty(),
        "the overrun encode filled the cache"
    );
}

#[tokio::test]
async fn refuses_when_the_queue_is_full_and_for_unknown_models() {
    let options = TokenizationOptions {
        max_queued: 0,
        ..TokenizationOptions::default()
    };
    let svc = Tokenization::new(registry(), None, options);
    let out = svc.tokenize(request("qwen", chat(1)), None).await;
    assert_eq!(out, TokenizeOutcome::Unavailable(Unavailable::Overloaded));
    let out = svc
        .tokenize(request("other", chat(1)), Some("http://127.0.0.1:9"))
        .await;
    assert_eq!(out, TokenizeOutcome::Unavailable(Unavailable::NoTokenizer));
    let svc = service(Duration::from_secs(5), false);
    let bad = svc
        .tokenize(
            request(
                "qwen",
                TokenizeInput::Chat(ChatRequest::new(vec![
                    json!({"role": "wizard", "content": "x"}),
                ])),
            ),
            None,
        )
        .await;
    assert_eq!(bad.source(), TokenizeSource::Unavailable);
    assert!(
        matches!(bad, TokenizeOutcome::Unavailable(Unavailable::Failed(ref e)) if e.label() == "template")
    );
}

#[tokio::test]
async fn remote_fallback_against_a_real_server() {
    let pod = Pod::start(Duration::ZERO).await;
    let svc = service(Duration::from_secs(5), true);
    let local = ModelTokenizer::load(&fixture("chatml")).unwrap();
    for input in [
        chat(2),
        TokenizeInput::Prompt {
            text: "plain <|im_start|> text".into(),
            add_special_tokens: true,
        },
    ] {
        let want = local.tokenize(&input, &TokenCache::new(0)).unwrap().ids;
        let out = svc
            .tokenize(request("remote-model", input), Some(&pod.base()))
            .await;
        assert_eq!(out.source(), TokenizeSource::Remote);
        assert_eq!(out.ids(), Some(&want[..]));
    }
    let out = svc
        .tokenize(request("broken", chat(1)), Some(&pod.base()))
        .await;
    assert!(
        matches!(out, TokenizeOutcome::Unavailable(Unavailable::Failed(ref e)) if e.label() == "remote"),
        "{out:?}"
    );
    let out = svc.tokenize(request("remote-model", chat(1)), None).await;
    assert_eq!(out, TokenizeOutcome::Unavailable(Unavailable::NoTokenizer));
    pod.stop().await;
    // Nobody listens there any more: a connection error, not a hang.
    let out = svc
        .tokenize(request("remote-model", chat(1)), Some(&pod_base_gone()))
        .await;
    assert_eq!(out.source(), TokenizeSource::Unavailable);
}

fn pod_base_gone() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

#[tokio::test]
async fn remote_timeout() {
    let pod = Pod::start(Duration::from_secs(2)).await;
    let svc = service(Duration::from_millis(100), true);
    let out = svc
        .tokenize(request("remote-model", chat(1)), Some(&pod.base()))
        .await;
    assert_eq!(out, TokenizeOutcome::Unavailable(Unavailable::Timeout));
    pod.stop().await;
}

#[tokio::test]
async fn a_caller_that_gives_up_frees_its_queue_place() {
    let options = TokenizationOptions {
        timeout: Duration::from_secs(30),
        max_in_flight: 1,
        max_queued: 1,
        ..TokenizationOptions::default()
    };
    let svc = Arc::new(Tokenization::new(registry(), None, options));
    let long = TokenizeInput::Prompt {
        text: "lorem ipsum dolor sit amet, ".repeat(40_000),
        add_special_tokens: true,
    };
    // Occupies the only slot for a while.
    let busy = {
        let svc = svc.clone();
        tokio::spawn(async move { svc.tokenize(request("qwen", long), None).await })
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    // Waits for the slot, then gives up (its future is dropped).
    let gave_up = tokio::time::timeout(
        Duration::from_millis(1),
        svc.tokenize(request("qwen", chat(1)), None),
    )
    .await;
    assert!(gave_up.is_err(), "it was still waiting");
    // Its queue place is free again: this one waits and gets its ids.
    let out = svc.tokenize(request("qwen", chat(2)), None).await;
    assert_eq!(out.source(), TokenizeSource::Local, "{out:?}");
    assert_eq!(busy.await.unwrap().source(), TokenizeSource::Local);
    svc.shutdown().await;
}

#[tokio::test]
async fn content_only_the_pod_can_expand_goes_remote() {
    let image = TokenizeInput::Chat(ChatRequest::new(vec![json!({"role": "user", "content": [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]})]));
    let local_only = service(Duration::from_secs(5), false);
    let out = local_only
        .tokenize(request("qwen", image.clone()), None)
        .await;
    assert!(
        matches!(out, TokenizeOutcome::Unavailable(Unavailable::Failed(ref e)) if e.label() == "unsupported")
    );

    // A stand-in pod that answers for anything: here it refuses images as a text-only pod would,
    // which shows the request did go to it.
    let pod = Pod::start(Duration::ZERO).await;
    let with_remote = service(Duration::from_secs(5), true);
    let out = with_remote
        .tokenize(request("qwen", image), Some(&pod.base()))
        .await;
    assert!(
        matches!(out, TokenizeOutcome::Unavailable(Unavailable::Failed(ref e)) if e.label() == "remote"),
        "{out:?}"
    );
    pod.stop().await;
}
