use super::*;
use k8s_openapi::api::core::v1::{PodCondition, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn pod(name: &str, ip: &str, ready: bool) -> PodInfo {
    PodInfo {
        name: name.into(),
        ip: ip.parse().ok(),
        ready,
        labels: labels(&[("app", "vllm"), ("llm-d.ai/role", "decode")]),
        annotations: BTreeMap::new(),
    }
}

fn scope(ports: &[u16]) -> Scope {
    Scope::new(Selector::parse("app=vllm").unwrap(), ports.to_vec()).unwrap()
}

fn defaults() -> EndpointDefaults {
    EndpointDefaults {
        model: Some("m".into()),
        ..EndpointDefaults::default()
    }
}

fn addresses(o: &Outcome) -> Vec<String> {
    o.discovered
        .endpoints
        .iter()
        .map(|e| e.address.to_string())
        .collect()
}

#[test]
fn one_endpoint_per_ready_pod_and_target_port_with_ranked_event_ports() {
    let mut b = pod("b", "10.0.0.2", true);
    b.annotations
        .insert(KV_REPLAY_PORT_ANNOTATION.into(), "6000".into());
    let pods = [
        b,
        pod("a", "10.0.0.1", true),
        pod("c", "10.0.0.3", false),
        pod("d", "", true),
    ];
    let o = endpoints(&scope(&[8000, 8001]), &defaults(), &pods);
    assert!(o.problems.is_empty(), "{:?}", o.problems);
    assert_eq!(
        addresses(&o),
        [
            "10.0.0.1:8000",
            "10.0.0.1:8001",
            "10.0.0.2:8000",
            "10.0.0.2:8001"
        ]
    );
    let e = &o.discovered.endpoints;
    assert_eq!(e[1].kv_events.as_deref(), Some("tcp://10.0.0.1:5558"));
    assert_eq!(e[1].kv_replay, None);
    assert_eq!(e[1].metrics, "http://10.0.0.1:8001/metrics");
    assert_eq!(e[3].kv_replay.as_deref(), Some("tcp://10.0.0.2:6001"));
    assert_eq!(e[0].labels["llm-d.ai/role"], "decode");
    assert_eq!(&*e[0].model, "m");
    assert_eq!(o.discovered.block_size, None);
}

#[test]
fn annotations_override_and_bad_ones_are_reported() {
    let mut a = pod("a", "fd00::1", true);
    a.annotations
        .insert(MODEL_ANNOTATION.into(), "org/other".into());
    a.annotations
        .insert(KV_EVENTS_PORT_ANNOTATION.into(), "0".into());
    let mut b = pod("b", "10.0.0.2", true);
    b.annotations
        .insert(KV_EVENTS_PORT_ANNOTATION.into(), "many".into());
    let o = endpoints(&scope(&[8000]), &defaults(), &[a, b]);
    let e = &o.discovered.endpoints;
    assert_eq!(e[0].address.to_string(), "[fd00::1]:8000");
    assert_eq!(e[0].metrics, "http://[fd00::1]:8000/metrics");
    assert_eq!(&*e[0].model, "org/other");
    assert_eq!(e[0].kv_events, None, "0 turns KV events off");
    assert_eq!(e[1].kv_events.as_deref(), Some("tcp://10.0.0.2:5557"));
    assert_eq!(o.problems.len(), 1);
    assert!(o.problems[0].contains("pod b") && o.problems[0].contains("many"));
}

#[test]
fn pods_without_a_model_or_with_a_taken_address_are_skipped() {
    let d = EndpointDefaults::default();
    let mut a = pod("a", "10.0.0.1", true);
    a.annotations.insert(MODEL_ANNOTATION.into(), "m".into());
    let b = pod("b", "10.0.0.2", true);
    let o = endpoints(&scope(&[8000]), &d, &[a.clone(), b]);
    assert_eq!(addresses(&o), ["10.0.0.1:8000"]);
    assert!(o.problems[0].contains("pod b: no model"));

    let mut twin = a.clone();
    twin.name = "z".into();
    let o = endpoints(&scope(&[8000]), &d, &[twin, a]);
    assert_eq!(addresses(&o), ["10.0.0.1:8000"]);
    assert!(o.problems[0].contains("pod z") && o.problems[0].contains("hostNetwork"));
}

#[test]
fn only_pods_matching_the_selector_count() {
    let mut other = pod("o", "10.0.0.9", true);
    other.labels.insert("app".into(), "other".into());
    let o = endpoints(
        &scope(&[8000]),
        &defaults(),
        &[other, pod("a", "10.0.0.1", true)],
    );
    assert_eq!(addresses(&o), ["10.0.0.1:8000"]);
}

#[test]
fn selectors_parse_print_and_refuse_nonsense() {
    let s = Selector::parse(" app=vllm, llm-d.ai/role==decode ,").unwrap();
    assert_eq!(s.to_string(), "app=vllm,llm-d.ai/role=decode");
    assert!(s.matches(&labels(&[
        ("app", "vllm"),
        ("llm-d.ai/role", "decode"),
        ("x", "y")
    ])));
    assert!(!s.matches(&labels(&[("app", "vllm")])));
    for bad in ["", "app", "app!=x", "a=1,a=2", "a=b c"] {
        assert!(Selector::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn scopes_are_checked_like_the_api_server_would() {
    let s = || Selector::parse("a=b").unwrap();
    assert!(Scope::new(s(), vec![]).is_err());
    assert!(Scope::new(s(), (1..=9).collect()).is_err());
    assert!(Scope::new(s(), vec![80, 80]).is_err());
    assert!(Scope::new(s(), vec![0]).is_err());
    assert!(Scope::new(s(), (1..=8).collect()).is_ok());
}

#[test]
fn pods_reduce_to_what_discovery_needs() {
    let condition = |status: &str| PodCondition {
        type_: "Ready".into(),
        status: status.into(),
        ..PodCondition::default()
    };
    let mut p = Pod {
        metadata: ObjectMeta {
            name: Some("p".into()),
            labels: Some(labels(&[("app", "vllm")])),
            annotations: Some(labels(&[(MODEL_ANNOTATION, "m"), ("unrelated.io/x", "y")])),
            ..ObjectMeta::default()
        },
        spec: None,
        status: Some(PodStatus {
            pod_ip: Some("10.1.2.3".into()),
            conditions: Some(vec![condition("True")]),
            ..PodStatus::default()
        }),
    };
    let info = PodInfo::from_pod(&p).unwrap();
    assert!(info.ready);
    assert_eq!(info.ip, "10.1.2.3".parse().ok());
    assert_eq!(info.annotations.len(), 1);

    p.metadata.deletion_timestamp = Some(Time(Default::default()));
    assert!(!PodInfo::from_pod(&p).unwrap().ready, "terminating");
    p.metadata.deletion_timestamp = None;
    if let Some(s) = p.status.as_mut() {
        s.conditions = Some(vec![condition("False")]);
    }
    assert!(!PodInfo::from_pod(&p).unwrap().ready);
    p.status = None;
    let info = PodInfo::from_pod(&p).unwrap();
    assert!(!info.ready && info.ip.is_none());
}
