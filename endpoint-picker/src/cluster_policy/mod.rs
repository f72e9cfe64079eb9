//! What the cluster's InferenceObjectives and InferenceModelRewrites say about this pool's
//! requests: objectives give a priority (and, through kvpick's annotations, default latency
//! objectives) to the requests that name them; model rewrites rename a request's model, split by
//! weight across target models, before it is scheduled.
//!
//! Pure: [`compile`] turns the objects [`crate::discovery::kubernetes`] watches into a
//! [`PolicySet`], and [`ClusterPolicy`] holds the current one for the request path.
//!
//! Threat model: only objects in the pool's namespace whose `poolRef` names the pool apply, so
//! only whoever may write those (the CRD owner, by RBAC) shapes its requests. A client chooses
//! among the objectives that exist by naming one, as in llm-d; it cannot choose a rewrite target
//! (llm-d's `x-llm-d-model-name-rewrite` header is not read). Every count and length is bounded:
//! objects past the bounds are dropped, oldest kept, and reported.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kvpick_scheduler::Slo;
use parking_lot::RwLock;

pub mod body;
pub mod resources;
pub mod rewrite;

use resources::{ObjectiveSpec, RewriteSpec};
pub use rewrite::{ModelRewrites, Rule};

/// Most InferenceObjectives applied.
pub const MAX_OBJECTIVES: usize = 1024;
/// Most InferenceModelRewrites applied.
pub const MAX_REWRITES: usize = 256;
/// Most rules, matches per rule, and targets per rule, in one rewrite.
pub const MAX_RULES: usize = 64;
/// See [`MAX_RULES`].
pub const MAX_MATCHES: usize = 64;
/// See [`MAX_RULES`].
pub const MAX_TARGETS: usize = 64;
/// Longest model name or objective name, in bytes.
pub const MAX_NAME_BYTES: usize = 512;
/// Largest target weight (the API's bound).
const MAX_WEIGHT: i64 = 1_000_000;
/// Longest latency objective an annotation may give (as the headers').
const MAX_SLO_MS: u64 = 3_600_000;

/// One InferenceObjective, as requests naming it see it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Objective {
    /// `spec.priority` (0 when unset).
    pub priority: i32,
    /// Latency objectives from its `kvpick.io/slo-*-ms` annotations.
    pub slo: Slo,
}

/// One watched object: where it came from and what it says.
#[derive(Clone, Debug)]
pub struct Object<S> {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.creationTimestamp`, RFC 3339 (orders by age as text); empty when absent.
    pub created: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// Its spec.
    pub spec: S,
}

/// The policies in force.
#[derive(Debug, Default)]
pub struct PolicySet {
    /// Objectives by name.
    pub objectives: BTreeMap<String, Objective>,
    /// Model rewrites.
    pub rewrites: ModelRewrites,
}

/// The current [`PolicySet`], replaced whole on every change.
#[derive(Debug, Default)]
pub struct ClusterPolicy(RwLock<Arc<PolicySet>>);

impl ClusterPolicy {
    /// The policies now.
    pub fn get(&self) -> Arc<PolicySet> {
        self.0.read().clone()
    }

    /// Puts `set` in force.
    pub fn set(&self, set: PolicySet) {
        *self.0.write() = Arc::new(set);
    }
}

/// The policy set for pool `pool` from the watched objects (each list newest group first, so
/// an objective named in both groups is taken from `llm-d.ai`), with what was dropped and why.
pub fn compile(
    pool: &str,
    objectives: &[Object<ObjectiveSpec>],
    rewrites: &[Object<RewriteSpec>],
) -> (PolicySet, Vec<String>) {
    let mut problems = Vec::new();
    let mut set = PolicySet::default();
    for o in oldest_first(objectives, |s| s.pool_ref.names(pool)) {
        if set.objectives.len() >= MAX_OBJECTIVES {
            problems.push(format!(
                "more than {MAX_OBJECTIVES} InferenceObjectives for pool {pool}; {} ignored",
                o.name
            ));
            continue;
        }
        if o.name.len() > MAX_NAME_BYTES || set.objectives.contains_key(&o.name) {
            continue;
        }
        let slo = Slo {
            ttft: slo_annotation(o, resources::SLO_TTFT_ANNOTATION, &mut problems),
            tpot: slo_annotation(o, resources::SLO_TPOT_ANNOTATION, &mut problems),
        };
        let priority = o.spec.priority.unwrap_or(0);
        set.objectives
            .insert(o.name.clone(), Objective { priority, slo });
    }
    let applying = oldest_first(rewrites, |s| s.pool_ref.names(pool));
    let mut seen = HashSet::new();
    for o in applying {
        if !seen.insert(o.name.as_str()) {
            continue;
        }
        if seen.len() > MAX_REWRITES {
            problems.push(format!(
                "more than {MAX_REWRITES} InferenceModelRewrites for pool {pool}; {} ignored",
                o.name
            ));
            continue;
        }
        compile_rewrite(o, &mut set.rewrites, &mut problems);
    }
    (set, problems)
}

/// The objects that apply, oldest first (then by name), stable within equal keys so the newer
/// group's copy of a name comes first.
fn oldest_first<S>(objects: &[Object<S>], applies: impl Fn(&S) -> bool) -> Vec<&Object<S>> {
    let mut v: Vec<&Object<S>> = objects.iter().filter(|o| applies(&o.spec)).collect();
    v.sort_by(|a, b| (&a.created, &a.name).cmp(&(&b.created, &b.name)));
    v
}

fn slo_annotation<S>(o: &Object<S>, key: &str, problems: &mut Vec<String>) -> Option<Duration> {
    let value = o.annotations.get(key)?;
    let ms = value
        .trim()
        .parse::<u64>()
        .ok()
        .filter(|ms| (1..=MAX_SLO_MS).contains(ms));
    if ms.is_none() {
        problems.push(format!(
            "InferenceObjective {}: {key}={value:?} is not a whole number of milliseconds in \
             [1, {MAX_SLO_MS}]; ignored",
            o.name
        ));
    }
    ms.map(Duration::from_millis)
}

fn compile_rewrite(o: &Object<RewriteSpec>, into: &mut ModelRewrites, problems: &mut Vec<String>) {
    let source: Arc<str> = Arc::from(o.name.as_str());
    let mut bad = |what: String| {
        problems.push(format!(
            "InferenceModelRewrite {}: {what}; rule ignored",
            o.name
        ))
    };
    for (i, rule) in o.spec.rules.iter().enumerate().take(MAX_RULES) {
        if rule.matches.len() > MAX_MATCHES || rule.targets.len() > MAX_TARGETS {
            bad(format!(
                "rules[{i}] has more than {MAX_MATCHES} matches or {MAX_TARGETS} targets"
            ));
            continue;
        }
        let mut models = Vec::with_capacity(rule.matches.len());
        let mut valid = true;
        for m in &rule.matches {
            match &m.model {
                Some(mm)
                    if mm.kind.as_deref().is_none_or(|k| k == "Exact")
                        && !mm.value.is_empty()
                        && mm.value.len() <= MAX_NAME_BYTES =>
                {
                    models.push(Arc::from(mm.value.as_str()));
                }
                _ => valid = false,
            }
        }
        if !valid {
            bad(format!(
                "rules[{i}].matches: each needs model.value (Exact, 1 to {MAX_NAME_BYTES} bytes)"
            ));
            continue;
        }
        let weighted = rule.targets.iter().filter(|t| t.weight.is_some()).count();
        let mut targets = Vec::with_capacity(rule.targets.len());
        for t in &rule.targets {
            let weight = match t.weight {
                None if weighted == 0 => 1,
                // Mixed: as llm-d, targets without a weight are never picked.
                None => 0,
                Some(w) if (1..=MAX_WEIGHT).contains(&w) => w.unsigned_abs(),
                Some(_) => {
                    valid = false;
                    0
                }
            };
            if t.model_rewrite.is_empty() || t.model_rewrite.len() > MAX_NAME_BYTES {
                valid = false;
            }
            targets.push((Arc::from(t.model_rewrite.as_str()), weight));
        }
        if !valid {
            bad(format!(
                "rules[{i}].targets: each needs modelRewrite (1 to {MAX_NAME_BYTES} bytes) and a \
                 weight in [1, {MAX_WEIGHT}] if any has one"
            ));
            continue;
        }
        match Rule::new(source.clone(), targets) {
            Some(r) => into.add(&models, Arc::new(r)),
            None => bad(format!("rules[{i}] has no target")),
        }
    }
    if o.spec.rules.len() > MAX_RULES {
        bad(format!("more than {MAX_RULES} rules"));
    }
}

#[cfg(test)]
mod tests;
