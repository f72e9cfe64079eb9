//! Compiled model rewrites: which rule a request's model meets, and the weighted pick of its
//! target model.
//!
//! Precedence follows the InferenceModelRewrite API: an exact model match beats a rule without
//! matches (which matches every model); between objects the oldest wins, then the first rule in
//! list order. The pick is a weighted round robin, not a coin: over every `total weight`
//! consecutive requests a rule sends each target exactly its weight's share, interleaved by
//! stepping through the cycle with a stride coprime to its length.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Larger than any total weight (at most [`super::MAX_TARGETS`] × 1,000,000) and prime, so
/// coprime with every total.
const STRIDE: u64 = 2_654_435_761;

/// One rule's targets and its position in their cycle.
#[derive(Debug)]
pub struct Rule {
    /// `namespace/name` of the InferenceModelRewrite it came from (logs, metrics).
    pub source: Arc<str>,
    targets: Vec<(Arc<str>, u64)>,
    total: u64,
    next: AtomicU64,
}

impl Rule {
    /// A rule over `targets` (model, weight); `None` when no target has a positive weight.
    pub fn new(source: Arc<str>, targets: Vec<(Arc<str>, u64)>) -> Option<Self> {
        let total = targets.iter().map(|(_, w)| w).sum();
        (total > 0).then(|| Self {
            source,
            targets,
            total,
            next: AtomicU64::new(0),
        })
    }

    /// The next request's target model.
    pub fn pick(&self) -> &Arc<str> {
        let n = self.next.fetch_add(1, Ordering::Relaxed) % self.total;
        let mut slot = (n * (STRIDE % self.total)) % self.total;
        for (model, weight) in &self.targets {
            if slot < *weight {
                return model;
            }
            slot -= weight;
        }
        // Unreachable: the weights add up to `total` and `slot < total`.
        &self.targets[0].0
    }

    /// The targets and weights, for logs and tests.
    pub fn targets(&self) -> &[(Arc<str>, u64)] {
        &self.targets
    }
}

/// Every rule that applies to the pool, by the model it matches.
#[derive(Debug, Default)]
pub struct ModelRewrites {
    exact: HashMap<Arc<str>, Arc<Rule>>,
    generic: Option<Arc<Rule>>,
}

impl ModelRewrites {
    /// Adds `rule` for `models` (every model when empty) where no earlier rule took them.
    pub fn add(&mut self, models: &[Arc<str>], rule: Arc<Rule>) {
        if models.is_empty() {
            self.generic.get_or_insert(rule);
            return;
        }
        for m in models {
            self.exact.entry(m.clone()).or_insert_with(|| rule.clone());
        }
    }

    /// The rule for a request for `model`, if any.
    pub fn rule(&self, model: &str) -> Option<&Rule> {
        self.exact
            .get(model)
            .or(self.generic.as_ref())
            .map(|r| &**r)
    }

    /// Whether any rule exists (requests skip the body scan otherwise).
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.generic.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(targets: &[(&str, u64)]) -> Arc<Rule> {
        let t = targets.iter().map(|(m, w)| (Arc::from(*m), *w)).collect();
        Arc::new(Rule::new("ns/r".into(), t).unwrap())
    }

    #[test]
    fn each_cycle_gives_every_target_exactly_its_weight_interleaved() {
        let r = rule(&[("a", 90), ("b", 9), ("c", 1)]);
        let picks: Vec<Arc<str>> = (0..100).map(|_| r.pick().clone()).collect();
        let count = |m: &str| picks.iter().filter(|p| &***p == m).count();
        assert_eq!((count("a"), count("b"), count("c")), (90, 9, 1));
        // Interleaved, not in blocks: b shows up within the first 20 picks.
        assert!(picks[..20].iter().any(|p| &**p == "b"), "{picks:?}");
        let again: Vec<Arc<str>> = (0..100).map(|_| r.pick().clone()).collect();
        assert_eq!(picks, again, "the next cycle repeats");
    }

    #[test]
    fn exact_matches_beat_generic_rules_and_the_first_rule_wins() {
        let mut rw = ModelRewrites::default();
        assert!(rw.is_empty());
        rw.add(&[], rule(&[("generic", 1)]));
        rw.add(&["m".into()], rule(&[("first", 1)]));
        rw.add(&["m".into(), "n".into()], rule(&[("second", 1)]));
        rw.add(&[], rule(&[("later-generic", 1)]));
        assert_eq!(&**rw.rule("m").unwrap().pick(), "first");
        assert_eq!(&**rw.rule("n").unwrap().pick(), "second");
        assert_eq!(&**rw.rule("other").unwrap().pick(), "generic");
        assert!(Rule::new("x".into(), vec![("a".into(), 0)]).is_none());
    }
}
