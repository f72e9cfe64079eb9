//! What real traffic does to a picker in full-duplex mode: request bodies in many chunks, and
//! responses that stream.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use super::{Ctx, PATH, routed};
use crate::client;
use crate::gateway::Listener;
use crate::pods::{self, BODY_BYTES, BODY_DIGEST, EVENTS, HOLD};
use crate::report::Report;

pub(super) async fn run(ctx: &Ctx<'_>, report: &mut Report) {
    report.record(
        "body_in_many_chunks_arrives_whole",
        chunked(ctx, 300_000).await,
    );
    report.record(
        "small_body_in_three_chunks_arrives_whole",
        chunked(ctx, 200).await,
    );
    report.record("server_sent_events_stream_through", sse(ctx).await);
}

/// A completions body of about `size` bytes whose prompt mixes one-, two-, three- and four-byte
/// characters, so that chunk boundaries fall inside them.
fn body(ctx: &Ctx<'_>, size: usize) -> Vec<u8> {
    let piece = "chunked prompt é 中文 😀 \"quoted\" \\ ";
    let prompt = piece.repeat(size / piece.len() + 1);
    ctx.completion(&prompt)
}

/// Cuts `body` into chunks of uneven sizes.
fn cut(body: &[u8]) -> Vec<Bytes> {
    const SIZES: [usize; 6] = [1, 7, 113, 4096, 17, 16_384];
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < body.len() {
        let end = (at + SIZES[i % SIZES.len()]).min(body.len());
        out.push(Bytes::copy_from_slice(&body[at..end]));
        at = end;
        i += 1;
    }
    out
}

async fn chunked(ctx: &Ctx<'_>, size: usize) -> Result<(), String> {
    let body = body(ctx, size);
    let chunks = cut(&body);
    let answer = ctx
        .client
        .post_chunked(ctx.gateway.address(Listener::Pool), PATH, chunks, &[])
        .await?;
    routed(&answer, &ctx.target.pods)?;
    let bytes = answer.header(BODY_BYTES).unwrap_or_default();
    let digest = answer.header(BODY_DIGEST).unwrap_or_default();
    if bytes != body.len().to_string() || digest != pods::digest(&body) {
        return Err(format!(
            "the pod received {bytes} bytes (digest {digest}), the client sent {} ({})",
            body.len(),
            pods::digest(&body)
        ));
    }
    Ok(())
}

/// The pod sends its first event and holds the rest: the client must get that event (the answer
/// is streamed, not buffered), then, released, every event in order.
async fn sse(ctx: &Ctx<'_>) -> Result<(), String> {
    let body = serde_json::json!({"model": ctx.target.model, "prompt": "stream me",
        "max_tokens": 4, "stream": true});
    let resp = ctx
        .client
        .open(
            ctx.gateway.address(Listener::Pool),
            PATH,
            http_body_util::Full::new(Bytes::from(body.to_string())).boxed(),
            &[(HOLD, "1")],
        )
        .await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let served = client::header(&headers, pods::POD)
        .unwrap_or_default()
        .to_owned();
    let content_type = client::header(&headers, "content-type").unwrap_or_default();
    if status != 200 || !content_type.starts_with("text/event-stream") {
        return Err(format!("status {status}, content type {content_type:?}"));
    }
    let mut body = resp.into_body();
    let mut received = Vec::new();
    let first_event = async {
        while !received.windows(2).any(|w| w == b"\n\n") {
            match body.frame().await {
                Some(Ok(frame)) => {
                    received.extend_from_slice(frame.data_ref().map_or(&[][..], |d| d))
                }
                Some(Err(e)) => return Err(format!("reading the stream: {e}")),
                None => return Err("the stream ended before its first event".to_owned()),
            }
        }
        Ok(())
    };
    let hold = Duration::from_secs(30);
    tokio::time::timeout(hold, first_event).await.map_err(|_| {
        format!("the first event did not arrive in {hold:?} while the pod held the rest: the answer is buffered")
    })??;
    let pod = served
        .parse()
        .map_err(|_| format!("no pod header on the stream: {headers:?}"))?;
    ctx.pods.release(pod);
    let rest = tokio::time::timeout(Duration::from_secs(60), body.collect())
        .await
        .map_err(|_| "the rest of the stream did not arrive".to_owned())?
        .map_err(|e| format!("reading the stream: {e}"))?
        .to_bytes();
    received.extend_from_slice(&rest);
    let mut want = String::new();
    for i in 0..EVENTS {
        want += &format!("data: {{\"index\":{i},\"text\":\"t{i}\"}}\n\n");
    }
    want += "data: [DONE]\n\n";
    if received != want.as_bytes() {
        return Err(format!(
            "events differ: got {:?}, want {want:?}",
            String::from_utf8_lossy(&received)
        ));
    }
    Ok(())
}
