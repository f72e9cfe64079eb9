//! vLLM's ZMQ transport around the payloads, as pure functions over frames: what a SUB socket
//! receives from a pod's PUB socket, what a DEALER receives back from the pod's replay ROUTER,
//! what it sends to ask (and what the ROUTER reads), and the topic convention. The only code that
//! knows which frame holds what: callers get the parts back, the payload as the very frame they
//! passed in (so a reference-counted frame is shared, not copied).
//!
//! Facts (vLLM `ZmqEventPublisher`): PUB sends `[topic, seq, payload]`, `seq` a u64 big-endian
//! counting from 0; the replay ROUTER takes `["", start_seq]` (8 bytes big-endian) and answers
//! every buffered batch with `seq >= start_seq`, then an end marker with seq -1 (8 bytes) and an
//! empty payload. Older vLLM answers `["", seq, payload]` and ends with `["", -1, ""]`; newer
//! vLLM puts the topic after the delimiter, `["", topic, seq, payload]`, and ends with
//! `["", "", -1, ""]`. Both are read.

use std::net::{IpAddr, SocketAddr};

use crate::Error;

/// The sequence number of the replay end marker: -1 as a signed 64-bit big-endian int.
pub const REPLAY_END_SEQ: u64 = u64::MAX;

/// One batch as it travels: its topic, its sequence number and the undecoded payload, the frame
/// of type `F` it arrived in.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Message<'a, F> {
    /// The PUB topic (vLLM's default is empty; by convention `kv@<endpoint>@<model>`). Empty
    /// for replay replies that do not carry it.
    pub topic: &'a [u8],
    /// The publisher's sequence number; a jump means lost batches.
    pub seq: u64,
    /// The msgpack batch, for [`super::decode_batch`].
    pub payload: &'a F,
}

/// One reply from the replay ROUTER.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum ReplayReply<'a, F> {
    /// A buffered batch.
    Batch(Message<'a, F>),
    /// The end marker: every buffered batch from the requested sequence on has been sent.
    End,
}

fn malformed(what: impl Into<String>) -> Error {
    Error::MalformedMessage(what.into())
}

fn seq(frame: &[u8]) -> Result<u64, Error> {
    let bytes: [u8; 8] = frame.try_into().map_err(|_| {
        malformed(format!(
            "sequence frame is {} bytes, expected 8 (u64 big-endian)",
            frame.len()
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Reads a PUB message: exactly `[topic, seq, payload]`.
pub fn parse_message<F: AsRef<[u8]>>(frames: &[F]) -> Result<Message<'_, F>, Error> {
    match frames {
        [topic, s, payload] => Ok(Message {
            topic: topic.as_ref(),
            seq: seq(s.as_ref())?,
            payload,
        }),
        _ => Err(malformed(format!(
            "{} frames, expected 3: [topic, seq, payload]",
            frames.len()
        ))),
    }
}

/// Reads what a DEALER receives from the replay ROUTER: `["", seq, payload]` or
/// `["", topic, seq, payload]`; also `[seq, payload]`, as a REQ-like socket that strips the
/// empty delimiter delivers it. `seq` [`REPLAY_END_SEQ`] with an empty payload is the end.
pub fn parse_replay_reply<F: AsRef<[u8]>>(frames: &[F]) -> Result<ReplayReply<'_, F>, Error> {
    let (delimiter, topic, s, payload) = match frames {
        [s, payload] => (None, &[][..], s, payload),
        [d, s, payload] => (Some(d), &[][..], s, payload),
        [d, topic, s, payload] => (Some(d), topic.as_ref(), s, payload),
        _ => {
            return Err(malformed(format!(
                "{} frames, expected [\"\", (topic,) seq, payload]",
                frames.len()
            )));
        }
    };
    if let Some(d) = delimiter.map(AsRef::as_ref).filter(|d| !d.is_empty()) {
        return Err(malformed(format!(
            "first frame is {} bytes, expected the empty delimiter",
            d.len()
        )));
    }
    let seq = seq(s.as_ref())?;
    match (seq, payload.as_ref().len()) {
        (REPLAY_END_SEQ, 0) => Ok(ReplayReply::End),
        (REPLAY_END_SEQ, len) => Err(malformed(format!(
            "end marker (seq -1) with a {len}-byte payload, expected none"
        ))),
        _ => Ok(ReplayReply::Batch(Message {
            topic,
            seq,
            payload,
        })),
    }
}

/// The frames a DEALER sends to ask the replay ROUTER for every batch from `start_seq` on.
pub fn replay_request(start_seq: u64) -> [Vec<u8>; 2] {
    [Vec::new(), seq_frame(start_seq).to_vec()]
}

/// Reads a replay request as the ROUTER gets it after the sender's identity frame:
/// `["", start_seq]`, or `[start_seq]` from a sender that leaves out the delimiter. Returns
/// `start_seq`.
pub fn parse_replay_request<F: AsRef<[u8]>>(frames: &[F]) -> Result<u64, Error> {
    match frames {
        [d, s] if d.as_ref().is_empty() => seq(s.as_ref()),
        [s] => seq(s.as_ref()),
        _ => Err(malformed(format!(
            "{} frames, expected [\"\", start_seq]",
            frames.len()
        ))),
    }
}

/// A sequence number as its frame (publishers and replay servers write it this way).
pub const fn seq_frame(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// A topic of the convention `kv@<endpoint>@<model>` (llm-d's, also used by kvpick's fleet),
/// where `endpoint` is `host`, `host:port`, `[ipv6]`, `[ipv6]:port` or a bare IPv6 address.
///
/// The endpoint ends at the first `@` after `kv@`: hosts and IPs cannot hold one, while served
/// model names are free text and may. An empty model is kept (the endpoint's configured model
/// then applies).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Topic<'a> {
    /// `host[:port]` as written.
    pub endpoint: &'a str,
    /// The served model name.
    pub model: &'a str,
}

impl<'a> Topic<'a> {
    /// The topic prefix every pod's topic starts with; also the SUB subscription prefix.
    pub const PREFIX: &'static str = "kv@";

    /// Parses a topic frame.
    pub fn parse(topic: &'a [u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(topic).map_err(|_| malformed("topic is not UTF-8"))?;
        let rest = text
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| malformed(format!("topic {text:?} does not start with \"kv@\"")))?;
        let (endpoint, model) = rest
            .split_once('@')
            .ok_or_else(|| malformed(format!("topic {text:?} lacks \"@<model>\"")))?;
        let parsed = Self { endpoint, model };
        parsed.split_endpoint()?;
        Ok(parsed)
    }

    /// Formats `kv@<endpoint>@<model>`.
    pub fn format(endpoint: &str, model: &str) -> String {
        format!("{}{endpoint}@{model}", Self::PREFIX)
    }

    /// The host (brackets of an IPv6 literal removed).
    pub fn host(&self) -> &'a str {
        self.split_endpoint()
            .map_or(self.endpoint, |(host, _)| host)
    }

    /// The port, when the endpoint has one.
    pub fn port(&self) -> Option<u16> {
        self.split_endpoint().ok().and_then(|(_, port)| port)
    }

    /// The host as an IP address, when it is one (pods are usually named by IP).
    pub fn ip(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }

    /// `ip:port`, when the endpoint is both.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::new(self.ip()?, self.port()?))
    }

    fn split_endpoint(&self) -> Result<(&'a str, Option<u16>), Error> {
        let ep = self.endpoint;
        let bad = |why: &str| malformed(format!("topic endpoint {ep:?}: {why}"));
        let port = |p: &str| p.parse::<u16>().map_err(|_| bad("port is not a u16"));
        let (host, port) = if let Some(inner) = ep.strip_prefix('[') {
            let (host, after) = inner.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(p) => (host, Some(port(p)?)),
                    None => return Err(bad("junk after ']'")),
                },
            }
        } else {
            match ep.split_once(':') {
                Some((host, p)) if !p.contains(':') => (host, Some(port(p)?)),
                // No colon, or a bare IPv6 address: no room for a port.
                _ => (ep, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "/[]".contains(c))
        {
            return Err(bad(
                "host holds whitespace, a control character, '/' or a bracket",
            ));
        }
        Ok((host, port))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_frames() {
        let frames = [&b"kv@10.0.0.5:8000@m"[..], &seq_frame(7), b"\x92\x00\x90"];
        let msg = parse_message(&frames).expect("parses");
        assert_eq!(
            (msg.topic, msg.seq, *msg.payload),
            (frames[0], 7, frames[2])
        );

        let err = |frames: &[&[u8]]| match parse_message(frames) {
            Err(Error::MalformedMessage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(&[b"t", b"\0\0\0\0\0\0\0\x01"]).contains("2 frames, expected 3"));
        assert!(err(&[b"t", b"\0\x01", b""]).contains("2 bytes, expected 8"));
    }

    #[test]
    fn replay_replies() {
        let seq = seq_frame(41);
        let end = seq_frame(REPLAY_END_SEQ);
        let payload: &[u8] = b"\x90";
        let batch = |topic: &'static [u8]| {
            ReplayReply::Batch(Message {
                topic,
                seq: 41,
                payload: &payload,
            })
        };
        // vLLM's ROUTER: ["", seq, payload]; with the topic; delimiter already stripped.
        assert_eq!(
            parse_replay_reply(&[&b""[..], &seq, b"\x90"]),
            Ok(batch(b""))
        );
        assert_eq!(
            parse_replay_reply(&[&b""[..], b"kv@a@m", &seq, b"\x90"]),
            Ok(batch(b"kv@a@m"))
        );
        assert_eq!(parse_replay_reply(&[&seq[..], b"\x90"]), Ok(batch(b"")));
        // The end marker: seq -1 as a signed big-endian int, empty payload.
        assert_eq!(end, (-1i64).to_be_bytes());
        assert_eq!(
            parse_replay_reply(&[&b""[..], &end, b""]),
            Ok(ReplayReply::End)
        );
        assert_eq!(
            parse_replay_reply(&[&b""[..], b"", &end, b""]),
            Ok(ReplayReply::End)
        );

        let err = |frames: &[&[u8]]| match parse_replay_reply(frames) {
            Err(Error::MalformedMessage(m)) => m,
            other => panic!("{other:?}"),
        };
        assert!(err(&[b"x", &seq, b"\x90"]).contains("expected the empty delimiter"));
        assert!(err(&[b"", &end, b"\x90"]).contains("end marker"));
        assert!(err(&[b"", b"1234", b"\x90"]).contains("4 bytes, expected 8"));
        assert!(err(&[b""]).contains("1 frames"));
    }

    #[test]
    fn replay_request_frames() {
        let request = replay_request(0x0102);
        let [delimiter, start] = &request;
        assert!(delimiter.is_empty());
        assert_eq!(start, &[0, 0, 0, 0, 0, 0, 1, 2]);
        assert_eq!(parse_replay_request(&request), Ok(0x0102));
        assert_eq!(
            parse_replay_request(&[&seq_frame(7)]),
            Ok(7),
            "no delimiter"
        );
        let seq = seq_frame(7);
        let bad: [&[&[u8]]; 3] = [&[b"x", &seq], &[b"", b"1234"], &[]];
        for frames in bad {
            assert!(
                matches!(
                    parse_replay_request(frames),
                    Err(Error::MalformedMessage(_))
                ),
                "{frames:?}"
            );
        }
    }

    #[test]
    fn topics() {
        let t = Topic::parse(b"kv@10.0.0.5:8000@meta-llama/Llama-3.1-8B").expect("parses");
        assert_eq!(
            (t.endpoint, t.model),
            ("10.0.0.5:8000", "meta-llama/Llama-3.1-8B")
        );
        assert_eq!((t.host(), t.port()), ("10.0.0.5", Some(8000)));
        assert_eq!(t.socket_addr(), "10.0.0.5:8000".parse().ok());

        let t = Topic::parse(b"kv@[::1]:8000@org/model@v2").expect("parses");
        assert_eq!(
            (t.host(), t.port(), t.model),
            ("::1", Some(8000), "org/model@v2")
        );
        assert_eq!(t.socket_addr(), "[::1]:8000".parse().ok());

        let t = Topic::parse(b"kv@fd00::5@m").expect("bare IPv6");
        assert_eq!(
            (t.host(), t.port(), t.ip()),
            ("fd00::5", None, "fd00::5".parse().ok())
        );
        let t = Topic::parse(b"kv@vllm-pod-3@").expect("pod name, empty model");
        assert_eq!(
            (t.host(), t.port(), t.ip(), t.model),
            ("vllm-pod-3", None, None, "")
        );
        let t = Topic::parse(b"kv@[fe80::1]@m").expect("bracketed, no port");
        assert_eq!((t.host(), t.port()), ("fe80::1", None));

        assert_eq!(Topic::format("[::1]:8000", "m@x"), "kv@[::1]:8000@m@x");
        for bad in [
            &b"kv-events"[..],
            b"kv@10.0.0.5",
            b"kv@@m",
            b"kv@10.0.0.5:99999@m",
            b"kv@[::1@m",
            b"kv@[::1]x@m",
            b"kv@a b@m",
            b"kv@\xff@m",
        ] {
            assert!(
                matches!(Topic::parse(bad), Err(Error::MalformedMessage(_))),
                "{:?} should not parse",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
