//! One request over ext_proc up to its routing decision, as Envoy sends it in duplex mode: the
//! headers (with whatever the client set), then a completions body of token ids.

use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use super::{
    Picker, Stream, duplex, mutation, request_body, request_headers, set_header, streamed,
    token_body,
};

/// Opens a stream and sends `tokens` with the client's `headers`; answers are left to read.
pub async fn send(p: &Picker, tokens: &[u32], headers: &[(&str, &str)]) -> Stream {
    let s = p.stream().await;
    s.send(request_headers(duplex(), "POST", headers, false, None))
        .await;
    s.send(request_body(&token_body(tokens), true)).await;
    s
}

/// [`send`], then the answer: the stream, still open, and the header mutation that routes the
/// request.
pub async fn decide(
    p: &Picker,
    tokens: &[u32],
    headers: &[(&str, &str)],
) -> (Stream, pb::HeaderMutation) {
    let mut s = send(p, tokens, headers).await;
    let answer = s.recv().await;
    let m = mutation(&answer).clone();
    (s, m)
}

/// [`decide`] with no client headers, the body passed on whole: the stream, left open (its
/// reservation held), and the endpoint it was routed to.
pub async fn routed_and_held(p: &Picker, tokens: &[u32]) -> (Stream, String) {
    let (mut s, m) = decide(p, tokens, &[]).await;
    let to = set_header(&m, "x-gateway-destination-endpoint")
        .expect("a destination")
        .to_owned();
    let (_, eos) = streamed(&s.recv().await);
    assert!(eos, "the body passed on whole");
    (s, to)
}
