//! The value one replica stores for the others: its in-flight totals per endpoint, as text.
//!
//! ```text
//! <stamp ms> kvpick1 <picks per 1000 s> <ip:port>=<prefill>,<prefill tokens>,<decode>,<decode context>,<kv tokens> ...
//! ```
//!
//! The stamp is the store's own clock (the publish script writes it), so ages are measured on
//! one clock whatever the replicas' skew. Endpoints are named by address, the one name every
//! replica's discovery agrees on; one with nothing reserved is left out. A value is taken whole
//! or not at all: anything that does not parse exactly (a foreign writer, a truncated or
//! hostile value) is refused with its reason, never half-applied; the core then clamps what
//! parsed ([`kvpick_scheduler::inflight::peers`]).

use std::fmt::Write;
use std::net::SocketAddr;
use std::time::Duration;

use kvpick_scheduler::inflight::InFlightTotals;

/// The format tag; values with another are refused (a newer replica's format).
pub const FORMAT: &str = "kvpick1";

/// Bytes one endpoint's entry takes at most (`[v6 address]:port` and five 20-digit numbers).
pub const MAX_ENTRY_BYTES: usize = 48 + 5 * 21;

/// How far ahead of the store's clock a stamp may be (the store stamps its own writes: only a
/// foreign writer, or a failed-over store with another clock, gets further ahead).
const FUTURE_TOLERANCE_MS: u64 = 1_000;

/// Why a stored value was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A decoded value: how old it is on the store's clock, and what it reports.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Time between its stamp and the store's `now` (zero when stamped in the future).
    pub age: Duration,
    /// Picks per second.
    pub pick_rate: f64,
    /// Totals by endpoint address.
    pub endpoints: Vec<(SocketAddr, InFlightTotals)>,
}

/// The payload a replica publishes (the store prefixes the stamp): its pick rate and its totals
/// by address, at most `max_endpoints` of them (the busiest kept when there are more).
pub fn encode(
    pick_rate: f64,
    mut endpoints: Vec<(SocketAddr, InFlightTotals)>,
    max_endpoints: usize,
) -> String {
    if endpoints.len() > max_endpoints {
        endpoints.sort_by_key(|(_, t)| std::cmp::Reverse(t.requests()));
        endpoints.truncate(max_endpoints);
    }
    let milli = if pick_rate.is_finite() {
        (pick_rate.max(0.0) * 1000.0).round() as u64
    } else {
        0
    };
    let mut out = String::with_capacity(32 + endpoints.len() * 64);
    // Writing to a String cannot fail.
    let _ = write!(out, "{FORMAT} {milli}");
    for (address, t) in endpoints {
        let _ = write!(
            out,
            " {address}={},{},{},{},{}",
            t.prefill_requests, t.prefill_tokens, t.decode_requests, t.decode_context, t.kv_tokens
        );
    }
    out
}

/// Decodes a stored value read when the store's clock said `now_ms`; at most `max_endpoints`
/// entries are accepted.
pub fn decode(value: &[u8], now_ms: u64, max_endpoints: usize) -> Result<Decoded, Malformed> {
    if value.len() > 32 + max_endpoints.saturating_mul(MAX_ENTRY_BYTES) {
        return Err(Malformed("too_long"));
    }
    let text = std::str::from_utf8(value).map_err(|_| Malformed("not_utf8"))?;
    let mut words = text.split(' ');
    let stamp = number(words.next()).ok_or(Malformed("stamp"))?;
    if words.next() != Some(FORMAT) {
        return Err(Malformed("format"));
    }
    if stamp > now_ms.saturating_add(FUTURE_TOLERANCE_MS) {
        return Err(Malformed("future"));
    }
    let milli = number(words.next()).ok_or(Malformed("pick_rate"))?;
    let mut endpoints = Vec::new();
    for word in words {
        if endpoints.len() >= max_endpoints {
            return Err(Malformed("too_many_endpoints"));
        }
        let (address, totals) = word.split_once('=').ok_or(Malformed("entry"))?;
        let address: SocketAddr = address.parse().map_err(|_| Malformed("address"))?;
        let mut fields = totals.split(',');
        let mut next = || number(fields.next()).ok_or(Malformed("totals"));
        let requests = |n: u64| u32::try_from(n).map_err(|_| Malformed("totals"));
        let t = InFlightTotals {
            prefill_requests: requests(next()?)?,
            prefill_tokens: next()?,
            decode_requests: requests(next()?)?,
            decode_context: next()?,
            kv_tokens: next()?,
        };
        if fields.next().is_some() {
            return Err(Malformed("totals"));
        }
        endpoints.push((address, t));
    }
    Ok(Decoded {
        age: Duration::from_millis(now_ms.saturating_sub(stamp)),
        pick_rate: milli as f64 / 1000.0,
        endpoints,
    })
}

/// A decimal number of digits only (no sign, no spaces), that fits a u64.
fn number(word: Option<&str>) -> Option<u64> {
    let word = word?;
    if word.is_empty() || word.len() > 20 || !word.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    word.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn totals(p: u32, d: u32) -> InFlightTotals {
        InFlightTotals {
            prefill_requests: p,
            prefill_tokens: u64::from(p) * 1000,
            decode_requests: d,
            decode_context: u64::from(d) * 3000,
            kv_tokens: u64::from(p + d) * 1100,
        }
    }

    #[test]
    fn round_trip_with_the_stores_stamp() {
        let a: SocketAddr = "10.0.0.5:8000".parse().unwrap();
        let b: SocketAddr = "[fd00::7]:8000".parse().unwrap();
        let payload = encode(2.5, vec![(a, totals(3, 1)), (b, totals(0, 2))], 16);
        assert_eq!(
            payload,
            "kvpick1 2500 10.0.0.5:8000=3,3000,1,3000,4400 [fd00::7]:8000=0,0,2,6000,2200"
        );
        let stored = format!("1700000000000 {payload}");
        let d = decode(stored.as_bytes(), 1_700_000_000_250, 16).unwrap();
        assert_eq!(d.age, Duration::from_millis(250));
        assert_eq!(d.pick_rate, 2.5);
        assert_eq!(d.endpoints, vec![(a, totals(3, 1)), (b, totals(0, 2))]);
        // Stamped a little after the store's now (a failed-over store's clock): age zero; far
        // ahead, refused, or it would never go stale.
        let ahead = decode(stored.as_bytes(), 1_700_000_000_000 - 500, 16).unwrap();
        assert_eq!(ahead.age, Duration::ZERO);
        assert_eq!(decode(stored.as_bytes(), 5, 16), Err(Malformed("future")));
        // No endpoints: a replica that holds nothing.
        let idle = decode(b"1 kvpick1 0", 1, 16).unwrap();
        assert!(idle.endpoints.is_empty());
    }

    #[test]
    fn over_the_cap_the_busiest_are_published() {
        let e = |i: u16| SocketAddr::from(([10, 0, 0, 1], i));
        let payload = encode(
            0.0,
            (1..=5).map(|i| (e(i), totals(u32::from(i), 0))).collect(),
            2,
        );
        let d = decode(format!("0 {payload}").as_bytes(), 0, 2).unwrap();
        let kept: Vec<u16> = d.endpoints.iter().map(|(a, _)| a.port()).collect();
        assert_eq!(kept, [5, 4]);
    }

    #[test]
    fn anything_else_is_refused_whole_with_its_reason() {
        let cases: [(&[u8], &str); 12] = [
            (b"", "stamp"),
            (b"x kvpick1 0", "stamp"),
            (b"-1 kvpick1 0", "stamp"),
            (b"1 kvpick2 0", "format"),
            (b"1 kvpick1 +5", "pick_rate"),
            (b"1 kvpick1 0 10.0.0.1:80", "entry"),
            (b"1 kvpick1 0 host:80=1,1,1,1,1", "address"),
            (b"1 kvpick1 0 10.0.0.1:80=1,1,1,1", "totals"),
            (b"1 kvpick1 0 10.0.0.1:80=1,1,1,1,1,1", "totals"),
            (b"1 kvpick1 0 10.0.0.1:80=4294967296,1,1,1,1", "totals"),
            (b"1 kvpick1 0  10.0.0.1:80=1,1,1,1,1", "entry"),
            (b"1 kvpick1 \xff", "not_utf8"),
        ];
        for (value, reason) in cases {
            assert_eq!(decode(value, 10, 4), Err(Malformed(reason)), "{value:?}");
        }
        let many = format!("1 kvpick1 0{}", " 10.0.0.1:80=1,1,1,1,1".repeat(3));
        assert_eq!(
            decode(many.as_bytes(), 1, 2),
            Err(Malformed("too_many_endpoints"))
        );
        let long = vec![b'1'; 32 + 2 * MAX_ENTRY_BYTES + 1];
        assert_eq!(decode(&long, 1, 2), Err(Malformed("too_long")));
    }

    proptest! {
        /// Any bytes decode or are refused; none panics, and what decodes stays within the cap.
        #[test]
        fn arbitrary_values_never_panic(value in prop::collection::vec(any::<u8>(), 0..400), now in any::<u64>()) {
            if let Ok(d) = decode(&value, now, 4) {
                prop_assert!(d.endpoints.len() <= 4);
            }
        }

        /// What one replica encodes, another decodes to the same totals.
        #[test]
        fn encode_then_decode_is_identity(
            entries in prop::collection::vec((any::<[u8; 4]>(), any::<u16>(), any::<u32>(), any::<u64>(), any::<u32>(), any::<u64>(), any::<u64>()), 0..8),
            rate in 0.0f64..1e6,
        ) {
            let endpoints: Vec<(SocketAddr, InFlightTotals)> = entries
                .into_iter()
                .map(|(ip, port, a, b, c, d, e)| (SocketAddr::from((ip, port)), InFlightTotals {
                    prefill_requests: a, prefill_tokens: b, decode_requests: c, decode_context: d, kv_tokens: e,
                }))
                .collect();
            let stored = format!("7 {}", encode(rate, endpoints.clone(), 8));
            let d = decode(stored.as_bytes(), 9, 8).unwrap();
            prop_assert_eq!(d.endpoints, endpoints);
            prop_assert!((d.pick_rate - rate).abs() <= 0.001);
        }
    }
}
