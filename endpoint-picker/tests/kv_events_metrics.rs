//! Ingestion's counters reach a real Prometheus exporter under their `kvpick_kv_events_…` and
//! `kvpick_index_…` names. Its own test binary: the recorder is process-global.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod kv_events_common;

use kv_events_common::*;
use kvpick_epp::kv_events::describe_metrics;
use kvpick_scheduler::events::EncodeOptions;
use metrics_exporter_prometheus::PrometheusBuilder;

/// The value of the sample `name{labels}` in a Prometheus text page (labels as rendered).
fn sample(page: &str, name_and_labels: &str) -> Option<f64> {
    page.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_gauges_are_exported() {
    let prometheus = PrometheusBuilder::new()
        .install_recorder()
        .expect("recorder installs");
    describe_metrics();
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let h = Harness::start(config(), vec![source(0, "10.0.0.1:8000", p.addr, None)]).await;
    p.sync(&h, 0).await;
    p.send(batch(vec![stored(1, 0, 4, None)])).await;
    p.lose(batch(vec![]));
    p.send(batch(vec![stored(2, 0, 2, None)])).await;
    p.send_raw(vec![vec![], vec![1, 2, 3], vec![]]).await;
    let ep = "endpoint=\"10.0.0.1:8000\"";
    wait_for("exported", WAIT, || {
        let page = prometheus.render();
        sample(
            &page,
            &format!("kvpick_kv_events_blocks_total{{{ep},op=\"stored\"}}"),
        ) == Some(6.0)
            && sample(
                &page,
                "kvpick_kv_events_dropped_total{reason=\"malformed\"}",
            ) == Some(1.0)
            && sample(&page, "kvpick_index_entries").is_some_and(|v| v >= 2.0)
    })
    .await;
    let page = prometheus.render();
    assert!(
        sample(&page, &format!("kvpick_kv_events_batches_total{{{ep}}}")).is_some_and(|v| v >= 3.0)
    );
    assert_eq!(
        sample(&page, &format!("kvpick_kv_events_gaps_total{{{ep}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &page,
            &format!("kvpick_kv_events_resets_total{{{ep},reason=\"gap\"}}")
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&page, &format!("kvpick_kv_events_state{{{ep}}}")),
        Some(2.0)
    );
    assert!(sample(&page, &format!("kvpick_kv_events_queue_depth{{{ep}}}")).is_some());
    assert!(sample(&page, "kvpick_index_keys").is_some());
    assert!(page.contains("# HELP kvpick_kv_events_dropped_total"));
    h.stop().await;
}
