//! A full-duplex request body on its way back to Envoy: chunks of at most [`MAX_CHUNK`] bytes,
//! made one at a time as the stream takes them, then the trailers answer when trailers follow.

use bytes::Bytes;
use envoy_types::pb::envoy::service::ext_proc::v3 as pb;

use super::super::reply::{self, MAX_CHUNK};

#[derive(Debug)]
pub(super) struct Resend {
    body: Bytes,
    at: usize,
    /// Envoy sent trailers: the last chunk does not end the stream, the trailers answer does.
    trailers: bool,
    chunks_done: bool,
    done: bool,
}

impl Resend {
    pub fn new(body: Bytes, trailers: bool) -> Self {
        Self {
            body,
            at: 0,
            trailers,
            chunks_done: false,
            done: false,
        }
    }

    /// The next answer, or `None` when everything is out.
    pub fn next(&mut self) -> Option<pb::ProcessingResponse> {
        if self.done {
            return None;
        }
        if self.chunks_done {
            self.done = true;
            return self.trailers.then(|| reply::trailers(true));
        }
        let end = (self.at + MAX_CHUNK).min(self.body.len());
        let last = end == self.body.len();
        let chunk = self.body[self.at..end].to_vec();
        self.at = end;
        if last {
            self.chunks_done = true;
            // Nothing else needs the body now.
            self.body = Bytes::new();
            self.at = 0;
        }
        Some(reply::request_body_chunk(chunk, last && !self.trailers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::processing_response::Response as Out;

    fn chunks(body: usize, trailers: bool) -> Vec<(usize, bool)> {
        let mut r = Resend::new(Bytes::from(vec![7u8; body]), trailers);
        std::iter::from_fn(|| r.next())
            .map(|m| match m.response {
                Some(Out::RequestBody(b)) => {
                    let c = b
                        .response
                        .and_then(|c| c.body_mutation)
                        .and_then(|m| m.mutation);
                    match c {
                        Some(pb::body_mutation::Mutation::StreamedResponse(s)) => {
                            (s.body.len(), s.end_of_stream)
                        }
                        other => panic!("{other:?}"),
                    }
                }
                Some(Out::RequestTrailers(_)) => (usize::MAX, true),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn bounded_chunks_in_order_then_trailers() {
        assert_eq!(chunks(0, false), vec![(0, true)]);
        assert_eq!(
            chunks(MAX_CHUNK + 1, false),
            vec![(MAX_CHUNK, false), (1, true)]
        );
        assert_eq!(
            chunks(10, true),
            vec![(10, false), (usize::MAX, true)],
            "the trailers answer ends it"
        );
    }
}
