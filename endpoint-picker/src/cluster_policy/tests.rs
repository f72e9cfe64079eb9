//! Compiling watched objects into the policy set: which objects apply, precedence, bounds.

use super::resources::{Match, ModelMatch, PoolRef, RewriteRule, Target};
use super::*;

fn pool_ref(name: &str) -> PoolRef {
    PoolRef {
        name: name.into(),
        ..PoolRef::default()
    }
}

fn objective(
    name: &str,
    created: &str,
    pool: &str,
    priority: Option<i32>,
) -> Object<ObjectiveSpec> {
    Object {
        name: name.into(),
        created: created.into(),
        annotations: BTreeMap::new(),
        spec: ObjectiveSpec {
            pool_ref: pool_ref(pool),
            priority,
        },
    }
}

fn rule(models: &[&str], targets: &[(&str, Option<i64>)]) -> RewriteRule {
    RewriteRule {
        matches: models
            .iter()
            .map(|m| Match {
                model: Some(ModelMatch {
                    kind: None,
                    value: (*m).into(),
                }),
            })
            .collect(),
        targets: targets
            .iter()
            .map(|(m, w)| Target {
                weight: *w,
                model_rewrite: (*m).into(),
            })
            .collect(),
    }
}

fn rewrite(name: &str, created: &str, pool: &str, rules: Vec<RewriteRule>) -> Object<RewriteSpec> {
    Object {
        name: name.into(),
        created: created.into(),
        annotations: BTreeMap::new(),
        spec: RewriteSpec {
            pool_ref: pool_ref(pool),
            rules,
        },
    }
}

fn target(set: &PolicySet, model: &str) -> Option<String> {
    set.rewrites.rule(model).map(|r| r.pick().to_string())
}

#[test]
fn only_objects_naming_this_pool_apply() {
    let mut other_group = objective("g", "2026-01-01T00:00:00Z", "pool", Some(9));
    other_group.spec.pool_ref.group = Some("inference.networking.x-k8s.io".into());
    let (set, problems) = compile(
        "pool",
        &[
            objective("a", "2026-01-01T00:00:00Z", "pool", Some(5)),
            objective("b", "2026-01-01T00:00:00Z", "other-pool", Some(100)),
            objective("c", "2026-01-01T00:00:00Z", "pool", None),
            other_group,
        ],
        &[rewrite(
            "r",
            "2026-01-01T00:00:00Z",
            "other-pool",
            vec![rule(&[], &[("x", None)])],
        )],
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(set.objectives.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert_eq!(set.objectives["a"].priority, 5);
    assert_eq!(set.objectives["c"].priority, 0, "unset is 0");
    assert!(set.rewrites.is_empty(), "another pool's rewrite");
}

#[test]
fn the_newer_group_wins_a_name_and_annotations_give_slo_defaults() {
    let mut newer = objective("chat", "2026-02-01T00:00:00Z", "pool", Some(10));
    newer
        .annotations
        .insert(resources::SLO_TTFT_ANNOTATION.into(), "250".into());
    newer
        .annotations
        .insert(resources::SLO_TPOT_ANNOTATION.into(), "soon".into());
    let older_group = objective("chat", "2026-02-01T00:00:00Z", "pool", Some(1));
    let (set, problems) = compile("pool", &[newer, older_group], &[]);
    let chat = set.objectives["chat"];
    assert_eq!(chat.priority, 10);
    assert_eq!(chat.slo.ttft, Some(Duration::from_millis(250)));
    assert_eq!(chat.slo.tpot, None);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("kvpick.io/slo-tpot-ms"));
}

#[test]
fn rewrite_precedence_exact_then_oldest_then_first_rule() {
    let (set, problems) = compile(
        "pool",
        &[],
        &[
            rewrite(
                "newer",
                "2026-03-02T00:00:00Z",
                "pool",
                vec![
                    rule(&["m"], &[("newer-m", None)]),
                    rule(&[], &[("newer-any", None)]),
                ],
            ),
            rewrite(
                "older",
                "2026-03-01T00:00:00Z",
                "pool",
                vec![
                    rule(&[], &[("older-any", None)]),
                    rule(&["m", "n"], &[("older-mn", None)]),
                    rule(&["n"], &[("older-n-again", None)]),
                ],
            ),
        ],
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(target(&set, "m").as_deref(), Some("older-mn"));
    assert_eq!(target(&set, "n").as_deref(), Some("older-mn"));
    assert_eq!(target(&set, "z").as_deref(), Some("older-any"));
}

#[test]
fn weights_split_exactly_and_bad_rules_are_dropped_with_a_reason() {
    let (set, problems) = compile(
        "pool",
        &[],
        &[rewrite(
            "r",
            "2026-03-01T00:00:00Z",
            "pool",
            vec![
                rule(&["bad"], &[("x", Some(0))]),
                rule(&["bad"], &[("", None)]),
                rule(
                    &["m"],
                    &[("v1", Some(3)), ("v2", Some(1)), ("unweighted", None)],
                ),
            ],
        )],
    );
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(target(&set, "bad").is_none());
    let picks: Vec<String> = (0..8).map(|_| target(&set, "m").unwrap()).collect();
    let count = |m: &str| picks.iter().filter(|p| *p == m).count();
    assert_eq!((count("v1"), count("v2"), count("unweighted")), (6, 2, 0));
}

#[test]
fn counts_and_lengths_are_bounded() {
    let many: Vec<_> = (0..MAX_OBJECTIVES + 5)
        .map(|i| objective(&format!("o{i:05}"), "2026-01-01T00:00:00Z", "pool", Some(1)))
        .collect();
    let long = "x".repeat(MAX_NAME_BYTES + 1);
    let rewrites: Vec<_> = (0..MAX_REWRITES + 3)
        .map(|i| {
            rewrite(
                &format!("r{i:05}"),
                "2026-01-01T00:00:00Z",
                "pool",
                vec![rule(&[&format!("m{i}")], &[("t", None)])],
            )
        })
        .chain([rewrite(
            "zz-long",
            "2025-01-01T00:00:00Z",
            "pool",
            vec![
                rule(&[&long], &[("t", None)]),
                rule(&["ok"], &[(&long, None)]),
            ],
        )])
        .collect();
    let (set, problems) = compile("pool", &many, &rewrites);
    assert_eq!(set.objectives.len(), MAX_OBJECTIVES);
    assert!(
        set.objectives.contains_key("o00000"),
        "oldest (then first) kept"
    );
    assert!(target(&set, "m0").is_some());
    assert!(target(&set, &format!("m{}", MAX_REWRITES + 2)).is_none());
    assert!(target(&set, "ok").is_none() && target(&set, &long).is_none());
    assert!(problems.len() >= 5 + 3 + 2, "{}", problems.len());
}
