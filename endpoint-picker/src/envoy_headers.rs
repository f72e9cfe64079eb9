//! Headers as Envoy's ext_proc messages carry them, built from name/value pairs: the value in
//! `raw_value` (what Envoy sends; `value` stays empty). The picker's header mutations use it, and
//! so do the clients that play Envoy's side of the stream (the tests, the load generators), so
//! that they send what Envoy sends.

use envoy_types::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};

/// One header.
pub fn header_value(key: &str, value: &str) -> HeaderValue {
    HeaderValue {
        key: key.to_owned(),
        value: String::new(),
        raw_value: value.as_bytes().to_vec(),
    }
}

/// A header map, in the order given.
pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs.iter().map(|(k, v)| header_value(k, v)).collect(),
    }
}
