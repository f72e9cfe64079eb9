//! Per-request latency objectives from the request headers: kvpick's `x-slo-ttft-ms` and
//! `x-slo-tpot-ms`, and llm-d's `x-llm-d-slo-ttft-ms` and `x-llm-d-slo-tpot-ms` (kvpick's name
//! wins when both are set). A value that is not a whole number of milliseconds in
//! [1, 3,600,000] is ignored and counted in `kvpick_slo_headers_ignored_total{header}`: the
//! config's default applies, as if the header were absent.
//!
//! Threat model: the headers are the client's, and trusted by default as in llm-d
//! (`--trust-slo-headers false` ignores them, counted as untrusted). They only change how the
//! candidates of the request carrying them are scored: they cannot name an endpoint, raise a
//! priority, pass anyone in a queue or touch another request's objectives. Whatever pod the
//! request lands on, its cost is reserved there exactly as any request's would be, so the most a
//! tight objective does is send the client's own request to the fastest pod instead of the one
//! holding its prefix, which costs the fleet no more than a client sending a prompt no pod has
//! cached.

use kvpick_scheduler::Slo;

/// Time-to-first-token objective headers, in order of precedence.
pub const TTFT_HEADERS: [&str; 2] = ["x-slo-ttft-ms", "x-llm-d-slo-ttft-ms"];
/// Time-per-output-token objective headers, in order of precedence.
pub const TPOT_HEADERS: [&str; 2] = ["x-slo-tpot-ms", "x-llm-d-slo-tpot-ms"];

/// The objectives `header` (a lookup by lower-case name) gives, when `trusted`.
pub fn from_headers<'a>(trusted: bool, header: impl Fn(&str) -> Option<&'a str>) -> Slo {
    let first = |names: [&'static str; 2]| {
        names.iter().find_map(|&n| {
            let value = header(n)?;
            if !trusted {
                metrics::counter!(crate::telemetry::UNTRUSTED_HEADERS, "header" => n).increment(1);
                return None;
            }
            let objective = value.trim().parse().ok().and_then(Slo::objective_ms);
            if objective.is_none() {
                metrics::counter!(crate::telemetry::SLO_HEADERS_IGNORED, "header" => n)
                    .increment(1);
            }
            objective
        })
    };
    Slo {
        ttft: first(TTFT_HEADERS),
        tpot: first(TPOT_HEADERS),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn slo(pairs: &[(&'static str, &'static str)]) -> Slo {
        from_headers(true, |n| {
            pairs.iter().find(|(k, _)| *k == n).map(|(_, v)| *v)
        })
    }

    #[test]
    fn both_header_families_parse_and_kvpicks_wins() {
        let s = slo(&[("x-llm-d-slo-ttft-ms", "500"), ("x-slo-tpot-ms", " 40 ")]);
        assert_eq!(s.ttft, Some(Duration::from_millis(500)));
        assert_eq!(s.tpot, Some(Duration::from_millis(40)));
        let s = slo(&[("x-llm-d-slo-ttft-ms", "500"), ("x-slo-ttft-ms", "200")]);
        assert_eq!(s.ttft, Some(Duration::from_millis(200)));
    }

    #[test]
    fn bad_values_are_ignored() {
        for v in [
            "",
            "-1",
            "0",
            "1.5",
            "abc",
            "99999999999999999999",
            "3600001",
        ] {
            assert_eq!(slo(&[("x-slo-ttft-ms", v)]), Slo::default(), "{v:?}");
        }
        // A bad kvpick header falls through to llm-d's.
        let s = slo(&[("x-slo-ttft-ms", "x"), ("x-llm-d-slo-ttft-ms", "700")]);
        assert_eq!(s.ttft, Some(Duration::from_millis(700)));
    }

    #[test]
    fn untrusted_headers_are_ignored() {
        let s = from_headers(false, |n| (n == "x-slo-ttft-ms").then_some("200"));
        assert_eq!(s, Slo::default());
    }
}
