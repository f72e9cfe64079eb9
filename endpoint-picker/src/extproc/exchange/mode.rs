//! How Envoy sends a body (`protocol_config`'s body modes), as far as the picker's answers go.

use envoy_types::pb::envoy::extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode;

/// A request or response body mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// `FULL_DUPLEX_STREAMED`: chunks; the picker answers with `streamed_response` chunks.
    Duplex,
    /// `BUFFERED` or `BUFFERED_PARTIAL` (`partial`: a body past the gateway's buffer limit is cut
    /// and the rest streamed): one body message, its answer carrying the decision.
    Buffered { partial: bool },
    /// `STREAMED` (chunks, each answered unchanged) or `NONE` (no body messages): the headers
    /// answer goes before the body.
    HeadersFirst,
    /// A mode this build does not know.
    Unknown(i32),
}

impl Mode {
    /// The mode Envoy announced as `raw`, and its name for metrics.
    pub(super) fn from_wire(raw: i32) -> (Mode, &'static str) {
        match BodySendMode::try_from(raw) {
            Ok(BodySendMode::FullDuplexStreamed) => (Mode::Duplex, "full_duplex_streamed"),
            Ok(BodySendMode::Buffered) => (Mode::Buffered { partial: false }, "buffered"),
            Ok(BodySendMode::BufferedPartial) => {
                (Mode::Buffered { partial: true }, "buffered_partial")
            }
            Ok(BodySendMode::Streamed) => (Mode::HeadersFirst, "streamed"),
            Ok(BodySendMode::None) => (Mode::HeadersFirst, "none"),
            // GRPC (per-message gRPC bodies) or newer: not an inference request kvpick can route.
            Ok(BodySendMode::Grpc) => (Mode::Unknown(raw), "grpc"),
            Err(_) => (Mode::Unknown(raw), "unknown"),
        }
    }
}
