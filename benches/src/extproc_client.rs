//! The Envoy side of one ext_proc stream in full-duplex mode, for the load generators: request
//! headers, the body in pieces, the picker's decision (its headers answer and re-sent body), and
//! later the response headers and one response body chunk.

use std::time::Duration;

use anyhow::Context;
use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use kvpick_epp::envoy_headers::header_map;
use pb::external_processor_client::ExternalProcessorClient;
use pb::processing_request::Request as In;
use pb::processing_response::Response as Out;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

/// The header carrying the picker's choice (the Gateway API Inference Extension's).
pub const DESTINATION: &str = "x-gateway-destination-endpoint";

/// A client of the picker's ext_proc service.
pub type Client = ExternalProcessorClient<tonic::transport::Channel>;

/// Opens `connections` HTTP/2 connections to the picker at `url`.
pub async fn connect(url: &str, connections: usize) -> anyhow::Result<Vec<Client>> {
    let mut clients = Vec::new();
    for _ in 0..connections.max(1) {
        let channel = tonic::transport::Endpoint::from_shared(url.to_owned())?
            .tcp_nodelay(true)
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(64 << 20))
            .connect()
            .await?;
        clients.push(ExternalProcessorClient::new(channel).max_decoding_message_size(64 << 20));
    }
    Ok(clients)
}

fn msg(request: In) -> pb::ProcessingRequest {
    pb::ProcessingRequest {
        request: Some(request),
        ..Default::default()
    }
}

/// A stream whose request was decided; [`Decided::finish`] plays the response.
#[derive(Debug)]
pub struct Decided {
    tx: tokio::sync::mpsc::Sender<pb::ProcessingRequest>,
    answers: tonic::Streaming<pb::ProcessingResponse>,
    /// Last body byte sent → headers answer received.
    pub latency: Duration,
    /// The endpoint the picker chose (`host:port`).
    pub destination: String,
}

/// Sends one request (`path`, `body` in `chunk`-byte pieces) and waits for the decision and the
/// re-sent body.
pub async fn decide(
    client: &mut Client,
    path: &str,
    body: &[u8],
    chunk: usize,
) -> anyhow::Result<Decided> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let mut answers = client.process(ReceiverStream::new(rx)).await?.into_inner();
    let protocol = pb::ProtocolConfiguration {
        request_body_mode: BodySendMode::FullDuplexStreamed as i32,
        response_body_mode: BodySendMode::FullDuplexStreamed as i32,
        ..Default::default()
    };
    let mut first = msg(In::RequestHeaders(pb::HttpHeaders {
        headers: Some(header_map(&[
            (":method", "POST"),
            (":path", path),
            ("content-type", "application/json"),
        ])),
        ..Default::default()
    }));
    first.protocol_config = Some(protocol);
    tx.send(first).await?;
    let pieces = body.chunks(chunk).count();
    for (i, piece) in body.chunks(chunk).enumerate() {
        tx.send(msg(In::RequestBody(pb::HttpBody {
            body: piece.to_vec(),
            end_of_stream: i + 1 == pieces,
            ..Default::default()
        })))
        .await?;
    }
    let sent = Instant::now();
    let decision = answers
        .message()
        .await?
        .context("stream closed before the decision")?;
    let latency = sent.elapsed();
    let Some(Out::RequestHeaders(h)) = &decision.response else {
        anyhow::bail!("unexpected answer {decision:?}");
    };
    let destination = (h.response.as_ref())
        .and_then(|c| c.header_mutation.as_ref())
        .and_then(|m| {
            m.set_headers
                .iter()
                .filter_map(|o| o.header.as_ref())
                .find(|h| h.key == DESTINATION)
        })
        .map(|h| String::from_utf8_lossy(&h.raw_value).into_owned())
        .context("the decision names no destination")?;
    loop {
        let m = answers.message().await?.context("stream closed mid-body")?;
        if let Some(Out::RequestBody(b)) = &m.response
            && let Some(pb::body_mutation::Mutation::StreamedResponse(s)) = b
                .response
                .as_ref()
                .and_then(|c| c.body_mutation.as_ref())
                .and_then(|m| m.mutation.as_ref())
            && s.end_of_stream
        {
            break;
        }
    }
    Ok(Decided {
        tx,
        answers,
        latency,
        destination,
    })
}

impl Decided {
    /// Plays the response (headers, then `usage` as the whole body) and closes the stream.
    pub async fn finish(mut self, usage: &[u8]) -> anyhow::Result<()> {
        self.tx
            .send(msg(In::ResponseHeaders(pb::HttpHeaders {
                headers: Some(header_map(&[
                    (":status", "200"),
                    ("content-type", "application/json"),
                ])),
                ..Default::default()
            })))
            .await?;
        self.answers.message().await?;
        self.tx
            .send(msg(In::ResponseBody(pb::HttpBody {
                body: usage.to_vec(),
                end_of_stream: true,
                ..Default::default()
            })))
            .await?;
        self.answers.message().await?;
        drop(self.tx);
        while self.answers.message().await?.is_some() {}
        Ok(())
    }
}

/// The `p` quantile of sorted samples (NaN when there are none).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
