//! Builders for the ext_proc messages the picker sends back, and readers for what Envoy sends.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::core::v3::{HeaderValueOption, Metadata};
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::{ListValue, Struct, Value, value::Kind};
use pb::processing_response::Response;

use kvpick_scheduler::disagg::{PREFILLER_HOST_PORT, PREFILLER_URL, SIDECAR_HEADERS};

use crate::envoy_headers::header_value;
use crate::error::Error;
use crate::router::Routing;

/// The request header (and `envoy.lb` metadata key) carrying the decision.
pub const DESTINATION: &str = "x-gateway-destination-endpoint";
/// The `envoy.lb` metadata key Envoy reports the endpoint that served the request under.
pub const SERVED: &str = "x-gateway-destination-endpoint-served";
/// The metadata namespace of the decision.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// The metadata namespace of the proxy's subset hint.
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// The subset hint's key: a list of `ip:port`.
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// The metadata namespace `--emit-scores` writes to.
pub const SCORES_NAMESPACE: &str = "kvpick.scores";
/// Largest body chunk sent back in full-duplex mode.
pub const MAX_CHUNK: usize = 62_000;

pub(crate) fn set_header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(header_value(key, value)),
        append_action: envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// The header mutation that routes: drop whatever the client sent (the destination and llm-d's
/// routing-sidecar headers, which would steer the decode pod's prefill), set the decision, the
/// prefill pod when disaggregated (llm-d's `x-prefiller-host-port`, and `x-prefiller-url` for
/// older sidecars), and the body's length when the body is re-sent in full-duplex mode.
pub fn routing_mutation(routing: &Routing, content_length: Option<usize>) -> pb::HeaderMutation {
    let mut set_headers = vec![set_header(DESTINATION, &routing.destination)];
    if let Some(prefill) = routing.prefill {
        set_headers.push(set_header(PREFILLER_HOST_PORT, &prefill.to_string()));
        set_headers.push(set_header(PREFILLER_URL, &format!("http://{prefill}")));
    }
    if let Some(len) = content_length {
        set_headers.push(set_header("content-length", &len.to_string()));
    }
    let mut remove_headers = vec![DESTINATION.to_owned()];
    remove_headers.extend(SIDECAR_HEADERS.iter().map(|h| (*h).to_owned()));
    pb::HeaderMutation {
        set_headers,
        remove_headers,
    }
}

fn string(s: impl Into<String>) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn number(n: f64) -> Value {
    Value {
        kind: Some(Kind::NumberValue(n)),
    }
}

fn object(fields: HashMap<String, Value>) -> Value {
    Value {
        kind: Some(Kind::StructValue(Struct { fields })),
    }
}

/// `envoy.lb` dynamic metadata with the decision, plus each candidate's scores when emitted.
pub fn routing_metadata(routing: &Routing, scorer_names: &[std::sync::Arc<str>]) -> Struct {
    let lb = HashMap::from([(DESTINATION.to_owned(), string(&routing.destination))]);
    let mut fields = HashMap::from([(LB_NAMESPACE.to_owned(), object(lb))]);
    if !routing.scored.is_empty() {
        let per_endpoint = routing
            .scored
            .iter()
            .map(|s| {
                let mut f: HashMap<String, Value> = scorer_names
                    .iter()
                    .zip(&s.scores)
                    .map(|(n, &v)| (n.to_string(), number(v)))
                    .collect();
                f.insert("total".into(), number(s.score));
                (s.address.to_string(), object(f))
            })
            .collect();
        fields.insert(SCORES_NAMESPACE.to_owned(), object(per_endpoint));
    }
    Struct { fields }
}

fn common(mutation: Option<pb::HeaderMutation>) -> pb::CommonResponse {
    pb::CommonResponse {
        header_mutation: mutation,
        ..Default::default()
    }
}

/// A request-headers response, optionally mutating and carrying dynamic metadata.
pub fn request_headers(
    mutation: Option<pb::HeaderMutation>,
    metadata: Option<Struct>,
) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::RequestHeaders(pb::HeadersResponse {
            response: Some(common(mutation)),
        })),
        dynamic_metadata: metadata,
        ..Default::default()
    }
}

/// A request-body response for BUFFERED mode: the body goes on unchanged, the headers mutate.
pub fn request_body_buffered(
    mutation: Option<pb::HeaderMutation>,
    metadata: Option<Struct>,
) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::RequestBody(pb::BodyResponse {
            response: Some(common(mutation)),
        })),
        dynamic_metadata: metadata,
        ..Default::default()
    }
}

fn streamed(body: Vec<u8>, end_of_stream: bool) -> pb::BodyResponse {
    pb::BodyResponse {
        response: Some(pb::CommonResponse {
            body_mutation: Some(pb::BodyMutation {
                mutation: Some(pb::body_mutation::Mutation::StreamedResponse(
                    pb::StreamedBodyResponse {
                        body,
                        end_of_stream,
                        ..Default::default()
                    },
                )),
            }),
            ..Default::default()
        }),
    }
}

/// A request body chunk sent on in full-duplex mode.
pub fn request_body_chunk(body: Vec<u8>, end_of_stream: bool) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::RequestBody(streamed(body, end_of_stream))),
        ..Default::default()
    }
}

/// A response body chunk echoed in full-duplex mode.
pub fn response_body_chunk(body: Vec<u8>, end_of_stream: bool) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::ResponseBody(streamed(body, end_of_stream))),
        ..Default::default()
    }
}

/// Continue unchanged: the answer to response headers, and to body chunks in BUFFERED mode.
pub fn continue_response(kind: fn(pb::HeadersResponse) -> Response) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(kind(pb::HeadersResponse {
            response: Some(common(None)),
        })),
        ..Default::default()
    }
}

/// The answer to response headers, setting the headers of `mutation` when there is one.
pub fn response_headers(mutation: Option<pb::HeaderMutation>) -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::ResponseHeaders(pb::HeadersResponse {
            response: Some(common(mutation)),
        })),
        ..Default::default()
    }
}

/// Continue a buffered response body unchanged.
pub fn response_body_continue() -> pb::ProcessingResponse {
    pb::ProcessingResponse {
        response: Some(Response::ResponseBody(pb::BodyResponse {
            response: Some(common(None)),
        })),
        ..Default::default()
    }
}

/// Trailers pass unchanged.
pub fn trailers(request: bool) -> pb::ProcessingResponse {
    let t = pb::TrailersResponse::default();
    pb::ProcessingResponse {
        response: Some(if request {
            Response::RequestTrailers(t)
        } else {
            Response::ResponseTrailers(t)
        }),
        ..Default::default()
    }
}

/// A local reply for `error`: its HTTP status and an OpenAI-style JSON error body.
pub fn immediate(error: &Error) -> pb::ProcessingResponse {
    let status = error.http_status();
    let body = serde_json::json!({
        "error": {"message": error.to_string(), "type": error.openai_type(), "code": status}
    })
    .to_string();
    pb::ProcessingResponse {
        response: Some(Response::ImmediateResponse(pb::ImmediateResponse {
            status: Some(HttpStatus {
                code: i32::from(status),
            }),
            headers: Some(pb::HeaderMutation {
                set_headers: vec![
                    set_header("content-type", "application/json"),
                    set_header(crate::shedding::DROP_REASON_HEADER, error.drop_reason()),
                ],
                remove_headers: Vec::new(),
            }),
            body: body.into_bytes(),
            details: format!("kvpick_{}", error.label()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A header's value from Envoy (it sends `raw_value`; older versions `value`).
pub fn header<'a>(
    headers: Option<&'a envoy_types::pb::envoy::config::core::v3::HeaderMap>,
    name: &str,
) -> Option<&'a str> {
    headers?
        .headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| {
            if h.raw_value.is_empty() {
                Some(h.value.as_str())
            } else {
                std::str::from_utf8(&h.raw_value).ok()
            }
        })
}

fn lookup<'a>(metadata: Option<&'a Metadata>, namespace: &str, key: &str) -> Option<&'a Kind> {
    metadata?
        .filter_metadata
        .get(namespace)?
        .fields
        .get(key)?
        .kind
        .as_ref()
}

/// The proxy's subset hint: `None` when absent, else the listed addresses that parse.
pub fn subset_hint(metadata: Option<&Metadata>) -> Option<Vec<SocketAddr>> {
    let kind = lookup(metadata, SUBSET_NAMESPACE, SUBSET_KEY)?;
    let values: &[Value] = match kind {
        Kind::ListValue(ListValue { values }) => values,
        Kind::StringValue(s) => {
            return Some(s.split(',').filter_map(|a| a.trim().parse().ok()).collect());
        }
        _ => return Some(Vec::new()),
    };
    Some(
        values
            .iter()
            .filter_map(|v| match &v.kind {
                Some(Kind::StringValue(s)) => s.trim().parse().ok(),
                _ => None,
            })
            .collect(),
    )
}

/// The endpoint Envoy reports as having served the request.
pub fn served(metadata: Option<&Metadata>) -> Option<SocketAddr> {
    match lookup(metadata, LB_NAMESPACE, SERVED)? {
        Kind::StringValue(s) => s.trim().parse().ok(),
        _ => None,
    }
}
