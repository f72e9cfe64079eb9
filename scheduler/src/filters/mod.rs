//! Filters: which candidates may serve a request at all, before anything is scored.
//!
//! The pipeline runs, in order:
//! 1. the proxy's subset hint ([`Request::subset`]): always, it is the protocol's rule;
//! 2. the profile's filters, in the order the profile lists them ([`FilterSpec`]);
//! 3. staleness ([`Staleness`]): always, last, and it never empties the set.
//!
//! A filter that leaves no candidate stops the pipeline with [`Error::NoEndpoint`] carrying the
//! filter's [`reason`](FilterSpec::reason), a stable string fit for a metric label.
//!
//! | `type` | Filter |
//! |---|---|
//! | `model-filter` | [`ModelFilter`]: the endpoint serves the request's model or adapter |
//! | `label-selector-filter` | [`LabelSelector`]: the endpoint's labels match |
//! | `prefill-filter`, `decode-filter`, `by-label` | [`ByLabel`]: llm-d's label-value filters, roles for P/D |

mod by_label;
mod label_selector;

use std::collections::BTreeMap;
use std::time::Duration;

pub use by_label::{BY_LABEL_FILTER, ByLabel, DECODE_FILTER, PREFILL_FILTER, ROLE_LABEL};
pub use label_selector::{LabelSelector, SelectorError};

use crate::error::Error;
use crate::request::{Candidate, Request};
use crate::time::Timestamp;

/// [`Error::NoEndpoint`] reason when the caller passed no candidate at all.
pub const NO_CANDIDATES: &str = "no_candidates";
/// [`Error::NoEndpoint`] reason when the subset hint excluded every candidate (or was empty).
pub const SUBSET_HINT: &str = "subset_hint";
/// [`Error::NoEndpoint`] reason when no candidate serves the model or adapter.
pub const MODEL_FILTER: &str = "model_filter";
/// [`Error::NoEndpoint`] reason when no candidate's labels match a selector.
pub const LABEL_SELECTOR_FILTER: &str = "label_selector_filter";

/// `model-filter`: keeps the endpoints that can serve the request's `model`.
///
/// An endpoint serves a model when it is its base model (an endpoint whose model is unknown, the
/// empty string, serves anything), or when the model is a LoRA adapter the endpoint can serve.
/// vLLM's metrics list only adapters with requests in flight (`vllm:lora_requests_info`), not
/// every adapter an endpoint could load, so an adapter counts as servable when either:
/// - it is running or waiting on that endpoint right now ([`crate::pods::LoraState::has`]), or
/// - the filter's `adapters` parameter lists it under the endpoint's base model (mirroring the
///   pods' `--lora-modules`).
///
/// An adapter loaded at run time (`/v1/load_lora_adapter`) and not listed is refused until it
/// shows up in the metrics: list such adapters, or leave this filter out of the profile.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFilter {
    /// Adapters servable per base model (`adapters: {base-model: [adapter, ...]}`).
    pub adapters: BTreeMap<String, Vec<String>>,
}

impl ModelFilter {
    /// Whether `candidate` can serve `model`.
    pub fn keeps(&self, model: &str, candidate: &Candidate<'_>) -> bool {
        let base = &*candidate.endpoint.model;
        base.is_empty()
            || base == model
            || candidate.signals.lora.has(model)
            || self
                .adapters
                .get(base)
                .is_some_and(|list| list.iter().any(|a| a == model))
    }
}

/// A filter as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterSpec {
    /// `model-filter`.
    Model(ModelFilter),
    /// `label-selector-filter`.
    LabelSelector(LabelSelector),
    /// `by-label`, `prefill-filter`, `decode-filter`.
    ByLabel(ByLabel),
}

impl FilterSpec {
    /// Whether `candidate` may serve `request`.
    pub fn keeps(&self, request: &Request<'_>, candidate: &Candidate<'_>) -> bool {
        match self {
            FilterSpec::Model(f) => f.keeps(request.model, candidate),
            FilterSpec::LabelSelector(s) => s.matches(&candidate.endpoint.labels),
            FilterSpec::ByLabel(f) => f.keeps(&candidate.endpoint.labels),
        }
    }

    /// The [`Error::NoEndpoint`] reason when this filter leaves nothing.
    pub fn reason(&self) -> &'static str {
        match self {
            FilterSpec::Model(_) => MODEL_FILTER,
            FilterSpec::LabelSelector(_) => LABEL_SELECTOR_FILTER,
            FilterSpec::ByLabel(f) => f.reason,
        }
    }
}

/// How old signals may be before an endpoint counts as possibly dead.
///
/// Endpoints whose last scrape is older than `max_signal_age` are dropped while at least one
/// candidate is fresh: a dead pod stops being scraped, and must not be picked while live ones
/// remain. When every candidate is stale (the scraper itself is behind, or the metrics endpoint
/// is down while serving works), their signals age together: those within `max_signal_age` of
/// the freshest are kept (better a likely-alive guess than a 503), but a pod that stopped
/// answering before the others still falls behind them and stays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staleness {
    /// Oldest acceptable signals (`staleness.maxSignalAge`, default 2 s).
    pub max_signal_age: Duration,
}

impl Default for Staleness {
    fn default() -> Self {
        Self {
            max_signal_age: Duration::from_secs(2),
        }
    }
}

impl Staleness {
    /// Drops stale candidates; when all are stale, those far behind the freshest. Never
    /// empties `candidates`.
    pub fn apply(&self, candidates: &mut Vec<Candidate<'_>>, now: Timestamp) {
        let Some(freshest) = candidates.iter().map(|c| c.signals.age(now)).min() else {
            return;
        };
        let limit = if freshest <= self.max_signal_age {
            self.max_signal_age
        } else {
            freshest + self.max_signal_age
        };
        candidates.retain(|c| c.signals.age(now) <= limit);
    }
}

/// Runs the subset hint, then `filters` in order; the error names the filter that emptied it.
pub(crate) fn apply<'a>(
    request: &Request<'_>,
    filters: &[FilterSpec],
    candidates: &mut Vec<Candidate<'a>>,
) -> Result<(), Error> {
    if candidates.is_empty() {
        return Err(Error::NoEndpoint(NO_CANDIDATES));
    }
    if let Some(subset) = request.subset {
        candidates.retain(|c| subset.contains(c.endpoint.id));
        if candidates.is_empty() {
            return Err(Error::NoEndpoint(SUBSET_HINT));
        }
    }
    for filter in filters {
        candidates.retain(|c| filter.keeps(request, c));
        if candidates.is_empty() {
            return Err(Error::NoEndpoint(filter.reason()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::{Endpoint, EndpointSet, LoraState, PodSignals};
    use crate::request::{EventsState, Prompt};
    use crate::scorers::testing::endpoint;

    fn cands<'a>(eps: &'a [Endpoint], signals: &'a [PodSignals]) -> Vec<Candidate<'a>> {
        eps.iter()
            .zip(signals)
            .map(|(endpoint, signals)| Candidate {
                endpoint,
                signals,
                events: EventsState::Live,
            })
            .collect()
    }

    fn ids(c: &[Candidate<'_>]) -> Vec<u32> {
        c.iter().map(|c| c.endpoint.id.get()).collect()
    }

    fn idle(n: usize) -> Vec<PodSignals> {
        vec![PodSignals::idle(Timestamp::ZERO); n]
    }

    #[test]
    fn subset_hint_keeps_only_its_members_and_empty_is_an_error() {
        let eps: Vec<_> = (0..4).map(endpoint).collect();
        let sig = idle(4);
        let subset: EndpointSet = [eps[1].id, eps[3].id].into_iter().collect();
        let mut req = Request::new("m", Prompt::Empty);
        req.subset = Some(&subset);
        let mut c = cands(&eps, &sig);
        apply(&req, &[], &mut c).unwrap();
        assert_eq!(ids(&c), [1, 3]);
        let empty = EndpointSet::new();
        req.subset = Some(&empty);
        let mut c = cands(&eps, &sig);
        assert_eq!(
            apply(&req, &[], &mut c),
            Err(Error::NoEndpoint(SUBSET_HINT))
        );
        let mut none = Vec::new();
        assert_eq!(
            apply(&req, &[], &mut none),
            Err(Error::NoEndpoint(NO_CANDIDATES))
        );
    }

    #[test]
    fn model_filter_keeps_base_model_unknown_model_and_servable_adapters() {
        let mut eps: Vec<_> = (0..5).map(endpoint).collect();
        eps[1].model = "other".into();
        eps[2].model = "".into();
        eps[3].model = "other".into();
        eps[4].model = "other".into();
        let mut sig = idle(5);
        sig[3].lora = LoraState {
            max_loras: 1,
            running: vec![],
            waiting: vec!["ad".into()],
        };
        let filter = FilterSpec::Model(ModelFilter::default());
        let keep = |eps: &[Endpoint], f: &FilterSpec, model: &str| {
            let mut c = cands(eps, &sig);
            apply(
                &Request::new(model, Prompt::Empty),
                std::slice::from_ref(f),
                &mut c,
            )
            .map(|()| ids(&c))
        };
        assert_eq!(keep(&eps, &filter, "m"), Ok(vec![0, 2]));
        assert_eq!(keep(&eps, &filter, "ad"), Ok(vec![2, 3]));
        let listed = FilterSpec::Model(ModelFilter {
            adapters: [("other".to_string(), vec!["ad".to_string()])].into(),
        });
        assert_eq!(keep(&eps, &listed, "ad"), Ok(vec![1, 2, 3, 4]));
        eps[2].model = "m".into();
        assert_eq!(
            keep(&eps, &filter, "nope"),
            Err(Error::NoEndpoint(MODEL_FILTER))
        );
    }

    #[test]
    fn label_selector_filter_and_the_reason_it_emptied() {
        let mut eps: Vec<_> = (0..3).map(endpoint).collect();
        eps[0]
            .labels
            .insert("llm-d.ai/role".into(), "decode".into());
        eps[1]
            .labels
            .insert("llm-d.ai/role".into(), "prefill".into());
        let sig = idle(3);
        let req = Request::new("m", Prompt::Empty);
        let decode =
            FilterSpec::LabelSelector(LabelSelector::parse("llm-d.ai/role=decode").unwrap());
        let mut c = cands(&eps, &sig);
        apply(&req, std::slice::from_ref(&decode), &mut c).unwrap();
        assert_eq!(ids(&c), [0]);
        let gpu = FilterSpec::LabelSelector(LabelSelector::parse("gpu in (h100)").unwrap());
        let mut c = cands(&eps, &sig);
        assert_eq!(
            apply(&req, &[decode, gpu], &mut c),
            Err(Error::NoEndpoint(LABEL_SELECTOR_FILTER))
        );
    }

    #[test]
    fn stale_endpoints_go_while_a_fresh_one_remains_and_those_behind_go_when_all_are_stale() {
        let eps: Vec<_> = (0..3).map(endpoint).collect();
        let at = |ms| PodSignals::idle(Timestamp::from_millis(ms));
        let sig = [at(10_000), at(1_000), at(9_000)];
        let staleness = Staleness {
            max_signal_age: Duration::from_secs(2),
        };
        let mut c = cands(&eps, &sig);
        staleness.apply(&mut c, Timestamp::from_millis(11_000));
        assert_eq!(ids(&c), [0, 2]);
        // All stale, the scraper behind: those within 2 s of the freshest stay, rather than a
        // 503; the one that stopped answering 8 s before the others stays out.
        let mut c = cands(&eps, &sig);
        staleness.apply(&mut c, Timestamp::from_millis(60_000));
        assert_eq!(ids(&c), [0, 2]);
        let together = [at(10_000), at(9_500), at(8_100)];
        let mut c = cands(&eps, &together);
        staleness.apply(&mut c, Timestamp::from_millis(60_000));
        assert_eq!(ids(&c), [0, 1, 2], "all stale together: all stay");
        // A snapshot from the future (clock skew between scraper and caller) is fresh.
        let mut c = cands(&eps, &sig);
        staleness.apply(&mut c, Timestamp::from_millis(500));
        assert_eq!(ids(&c), [0, 1, 2]);
    }
}
