//! Flag parsing, defaults and the checks of [`super::validate`].

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use super::*;

fn cli(args: &[&str]) -> Result<Cli, clap::Error> {
    parse_ignoring_environment(std::iter::once("kvpick-epp").chain(args.iter().copied()))
}

#[test]
fn defaults() {
    let c = cli(&[]).unwrap();
    assert_eq!(
        (c.grpc_port, c.health_port, c.metrics_port),
        (9002, 9003, 9090)
    );
    // The query API is on its own port, loopback only unless exposed.
    assert_eq!(
        (c.query_port, c.query_address),
        (9004, IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    assert!(!c.tokenize.trust_request_chat_template);
    assert!(!c.trust_priority_header && !c.trust_fairness_header);
    assert_eq!(c.refresh_metrics_interval, Duration::from_millis(50));
    assert_eq!(c.max_body_bytes, 16 << 20);
    assert_eq!(c.body_timeout, Duration::from_secs(60));
    assert_eq!((c.memory_budget, c.max_streams), (3 << 30, 4096));
    assert!(!c.emit_scores && c.command.is_none());
    c.validate().unwrap();
}

#[test]
fn flags_set_the_fields() {
    let c = cli(&[
        "--grpc-port",
        "7000",
        "--health-port=7001",
        "--emit-scores",
        "--metrics-staleness-threshold",
        "250ms",
        "--endpoints-file",
        "/tmp/e.yaml",
    ])
    .unwrap();
    assert_eq!((c.grpc_port, c.health_port), (7000, 7001));
    assert!(c.emit_scores);
    assert_eq!(c.metrics_staleness_threshold, Duration::from_millis(250));
    assert_eq!(c.endpoints_file, Some(PathBuf::from("/tmp/e.yaml")));
}

#[test]
fn kv_events_and_tokenizer_flags_reach_the_settings() {
    use crate::server::Settings;
    use kvpick_tokenize::ModelSource;
    // Defaults: connect mode from the endpoints file only, no tokenizer.
    let s = Settings::from_cli(&cli(&[]).unwrap()).unwrap();
    assert_eq!(
        (s.kv_events_bind.as_deref(), s.kv_events.publisher_port),
        (None, None)
    );
    assert!(!s.tokenize.enabled());
    assert_eq!(s.tokenize.timeout, Duration::from_millis(200));
    let c = cli(&[
        "--tokenizer",
        "lora-a=@base",
        "--kv-events-queue",
        "99",
        "--kv-events-bind=tcp://*:6000",
        "--kv-events-bind-ranks=2",
        "--kv-events-port=6100",
        "--kv-replay-port=6200",
        "--kv-events-workers=3",
        "--kv-tier-weights=1,0.5,0.25",
        "--tokenizers-dir=/models",
        "--tokenize-timeout=1.5s",
        "--tokenize-cache-bytes=64Mi",
    ])
    .unwrap();
    let s = Settings::from_cli(&c).unwrap();
    assert_eq!(s.kv_events_bind.as_deref(), Some("tcp://*:6000"));
    let kv = &s.kv_events;
    assert_eq!((kv.bind_ranks, kv.workers, kv.queue_capacity), (2, 3, 99));
    assert_eq!(
        (kv.publisher_port, kv.replay_port),
        (Some(6100), Some(6200))
    );
    assert_eq!(s.tier_weights, Some([1.0, 0.5, 0.25]));
    let t = &s.tokenize;
    assert_eq!(t.registry.dir, Some(PathBuf::from("/models")));
    assert_eq!(
        t.registry.models,
        vec![("lora-a".to_owned(), ModelSource::Alias("base".into()))]
    );
    assert_eq!(
        (t.timeout, t.cache_bytes),
        (Duration::from_millis(1500), 64 << 20)
    );
    // A comma list (as KVPICK_TOKENIZER gives it): a default directory plus a named model.
    let c = cli(&["--tokenizer=/tok/default,base=/tok/base"]).unwrap();
    let t = Settings::from_cli(&c).unwrap().tokenize;
    assert_eq!(t.registry.models.len(), 2);
    assert_eq!(
        t.registry.models[0].1,
        ModelSource::Dir("/tok/default".into())
    );
    assert_eq!(
        t.registry.models[1],
        ("base".to_owned(), ModelSource::Dir("/tok/base".into()))
    );
    let two_defaults = cli(&["--tokenizer", "/a", "--tokenizer", "/b"]).unwrap();
    assert!(Settings::from_cli(&two_defaults).is_err());
    assert!(Settings::from_cli(&cli(&["--kv-tier-weights", "2,1,1"]).unwrap()).is_err());
}

#[test]
fn bad_values_are_errors() {
    assert!(cli(&["--grpc-port", "x"]).is_err());
    assert!(cli(&["--refresh-metrics-interval", "50"]).is_err());
    assert!(
        cli(&["--key-path", "k.pem"]).is_err(),
        "certificate required"
    );
    let c = cli(&["--pool-name", "p", "--endpoints-file", "e.yaml"]).unwrap();
    assert!(c.validate().unwrap_err().to_string().contains("exclude"));
    let c = cli(&["--memory-budget", "32Mi"]).unwrap();
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("--memory-budget")
    );
    assert!(cli(&["--memory-budget", "lots"]).is_err());
}

#[test]
fn query_subcommand() {
    let c = cli(&[
        "--grpc-port=7000",
        "query",
        "--server",
        "http://h:1",
        "score",
        "--model",
        "m",
        "--tokens",
        "1,2,3",
    ])
    .unwrap();
    let Some(Command::Query {
        server,
        what: Query::Score { tokens, model, .. },
    }) = c.command
    else {
        panic!("{c:?}")
    };
    assert_eq!(
        (server.as_str(), model.as_str(), tokens),
        ("http://h:1", "m", vec![1, 2, 3])
    );
    assert_eq!(c.grpc_port, 7000);
    let c = cli(&["query", "endpoints"]).unwrap();
    let Some(Command::Query {
        server,
        what: Query::Endpoints,
    }) = c.command
    else {
        panic!()
    };
    assert_eq!(server, "http://127.0.0.1:9004", "the query port's default");
}

#[test]
fn durations() {
    assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
    assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(duration("1h"), Ok(Duration::from_secs(3600)));
    assert!(duration("ms").is_err());
    let bare = duration("200").unwrap_err();
    assert!(bare.contains("unit"), "{bare}");
}

#[test]
fn chart_flags_are_aliases_of_kvpicks_own() {
    let c = cli(&[
        "--grpc-health-port",
        "7003",
        "--config-file",
        "/config/default-plugins.yaml",
        "--zap-encoder",
        "json",
        "--pool-name",
        "p",
        "--pool-namespace",
        "ns",
        "--pool-group",
        "inference.networking.k8s.io",
        "--drain-timeout=5s",
        "--metrics-port=7090",
        "--grpc-port=7002",
    ])
    .unwrap();
    assert_eq!(
        (c.health_port, c.metrics_port, c.grpc_port),
        (7003, 7090, 7002)
    );
    assert_eq!(
        c.config.as_deref(),
        Some(std::path::Path::new("/config/default-plugins.yaml"))
    );
    assert!(c.log_json());
    assert_eq!(c.shutdown_grace, Duration::from_secs(5));
    c.validate().unwrap();
    assert!(!cli(&["--zap-encoder=console"]).unwrap().log_json());
}

#[test]
fn verbosity_takes_pflag_forms() {
    for args in [&["-v", "3"][..], &["--v=3"], &["--v", "3"], &["-v=3"]] {
        let c = cli(args).unwrap();
        assert_eq!(c.chart.log_filter(), Some("debug"), "{args:?}");
    }
    assert_eq!(cli(&["--v=1"]).unwrap().chart.log_filter(), Some("info"));
    assert_eq!(cli(&["--v=6"]).unwrap().chart.log_filter(), Some("trace"));
    assert_eq!(cli(&[]).unwrap().chart.log_filter(), None);
}

#[test]
fn booleans_take_pflag_forms_and_the_last_one_wins() {
    let c = cli(&["--secure-serving"]).unwrap();
    assert_eq!(c.secure_serving, Some(true));
    let c = cli(&["--secure-serving=false"]).unwrap();
    assert_eq!(c.secure_serving, Some(false));
    assert_eq!(cli(&[]).unwrap().secure_serving, None);
    // The llm-d chart adds --ha-enable-leader-election for replicas > 1, then the values' flags.
    let c = cli(&[
        "--ha-enable-leader-election",
        "--ha-enable-leader-election=false",
        "--tracing=false",
        "--metrics-endpoint-auth=false",
        "--enable-cert-reload=true",
    ])
    .unwrap();
    assert_eq!(c.chart.ha_enable_leader_election, Some(false));
    c.validate().unwrap();
    // A bare word after a boolean is not its value (pflag would not take it either).
    assert!(cli(&["--tracing", "false"]).is_err());
}

#[test]
fn what_kvpick_cannot_honour_is_refused_with_the_reason() {
    let refused = |args: &[&str], why: &str| {
        let e = cli(args).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains(why), "{args:?}: {e}");
    };
    refused(&["--ha-enable-leader-election"], "no leader election");
    refused(&["--tracing=true"], "no OpenTelemetry");
    refused(&["--metrics-endpoint-auth"], "no token auth");
    refused(
        &["--pool-group", "inference.networking.x-k8s.io"],
        "InferencePool inference.networking.k8s.io/v1 only",
    );
    refused(
        &["--total-queued-requests-metric=\"sglang:num_queue_reqs\""],
        "vLLM's metrics",
    );
    refused(
        &["--model-server-metrics-path=\"/prometheus/metrics\""],
        "/metrics",
    );
    // vLLM's own names are what kvpick reads: accepted.
    cli(&[
        "--total-queued-requests-metric",
        "vllm:num_requests_waiting",
        "--lora-info-metric",
        "",
        "--refresh-prometheus-metrics-interval=5s",
    ])
    .unwrap()
    .validate()
    .unwrap();
    assert!(cli(&["--config", "a.yaml", "--config-text", "x"]).is_err());
}

#[test]
fn serving_modes_and_certificate_directories() {
    use crate::server::Settings;
    use crate::server::tls::TlsSource;
    let s = Settings::from_cli(&cli(&[]).unwrap()).unwrap();
    assert_eq!(s.tls, Some(TlsSource::SelfSigned));
    assert!(s.plaintext_beside_tls, "unset: TLS and plaintext");
    let s = Settings::from_cli(&cli(&["--secure-serving"]).unwrap()).unwrap();
    assert!(s.tls.is_some() && !s.plaintext_beside_tls);
    let s = Settings::from_cli(&cli(&["--secure-serving=false"]).unwrap()).unwrap();
    assert!(s.tls.is_none());
    // llm-d's --cert-path: a directory with tls.crt and tls.key; TLS only.
    let s = Settings::from_cli(&cli(&["--cert-path", "/certs"]).unwrap()).unwrap();
    let Some(TlsSource::Files { cert, key, .. }) = s.tls else {
        panic!("{:?}", s.tls)
    };
    assert_eq!(
        (cert, key),
        (
            PathBuf::from("/certs/tls.crt"),
            PathBuf::from("/certs/tls.key")
        )
    );
    assert!(!s.plaintext_beside_tls);
    let s = Settings::from_cli(&cli(&["--cert-path=c.pem", "--key-path=k.pem"]).unwrap()).unwrap();
    assert!(
        matches!(s.tls, Some(TlsSource::Files { ref cert, .. }) if cert == &PathBuf::from("c.pem"))
    );
}
