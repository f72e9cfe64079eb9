//! The seam with the picker: ingestion fed by a real [`Pool`]'s views through
//! [`KvEvents::start_for`], reporting each endpoint's events state into its member's `Live` cell.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

mod kv_events_common;

use std::sync::Arc;

use kv_events_common::*;
use kvpick_epp::Ingestion;
use kvpick_epp::clock::Clock;
use kvpick_epp::discovery::{Discovered, EndpointSpec};
use kvpick_epp::kv_events::KvEvents;
use kvpick_epp::pool::Pool;
use kvpick_scheduler::EventsState;
use kvpick_scheduler::events::EncodeOptions;
use kvpick_scheduler::{IndexConfig, KvIndex};
use tokio_util::sync::CancellationToken;

fn spec(address: &str, kv_events: Option<String>) -> EndpointSpec {
    EndpointSpec {
        kv_events,
        ..EndpointSpec::serving(address.parse().unwrap(), MODEL)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_views_drive_subscriptions_and_receive_states() {
    let index = Arc::new(KvIndex::new(IndexConfig::default()));
    let clock = Clock::new();
    let pool = Pool::new(Arc::clone(&index), clock);
    let mut p = Publisher::bind(EncodeOptions::default()).await;
    let found = Discovered {
        block_size: None,
        endpoints: vec![
            spec("10.0.0.1:8000", p.addr.map(|a| format!("tcp://{a}"))),
            spec("10.0.0.2:8000", None),
        ],
    };
    pool.reconcile(&found).unwrap();
    let ingestion = Ingestion {
        views: pool.subscribe(),
        index: Arc::clone(&index),
        bind: None,
        clock,
        anchors: Default::default(),
    };
    let shutdown = CancellationToken::new();
    let kv = KvEvents::start_for(ingestion, config(), shutdown.clone(), None)
        .await
        .unwrap();
    let view = pool.view();
    let (with, without) = (&view.members[0], &view.members[1]);
    assert_eq!(without.live.events(), EventsState::Absent);

    let deadline = tokio::time::Instant::now() + WAIT;
    while with.live.events() != EventsState::Live {
        assert!(
            tokio::time::Instant::now() < deadline,
            "member never became live"
        );
        p.send(batch(vec![stored(1, 0, 2, None)])).await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(index.endpoint_entries(with.endpoint.id), 2);

    // The publisher goes away: the member's cell says so.
    p.close().await;
    wait_for("stale after disconnect", WAIT, || {
        with.live.events() == EventsState::Stale
    })
    .await;
    shutdown.cancel();
    kv.join().await;
}
