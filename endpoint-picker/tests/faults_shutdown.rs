//! Graceful shutdown of the real `kvpick-epp` binary on SIGTERM: readiness goes false first (a
//! health watch sees NOT_SERVING), the listener stops taking new streams, in-flight streams run
//! to their end, and the process exits once they are done, or at `--drain-timeout` at the latest.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support code outside #[test] fns

mod common;
mod faults_util;

use std::time::Duration;

use common::*;
use envoy_types::pb::envoy::service::ext_proc::v3::external_processor_client::ExternalProcessorClient;
use envoy_types::pb::envoy::service::ext_proc::v3::processing_response::Response as Out;
use faults_util::*;
use tokio::time::Instant;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

async fn start(dir: &std::path::Path, drain: &str) -> Epp {
    // Nothing listens at the endpoint: picks still work (never-scraped endpoints stay eligible
    // when none is fresh), and no pod is needed to hold a stream open.
    let file = dir.join("endpoints.yaml");
    write_endpoints(
        &file,
        &[serde_saphyr::from_str("address: 127.0.0.1:9").unwrap()],
    );
    Epp::start(dir, "kvpick-epp", &file, &["--drain-timeout", drain]).await
}

async fn readiness_watch(epp: &Epp) -> tonic::Streaming<HealthCheckResponse> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", epp.health))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let mut watch = client
        .watch(HealthCheckRequest {
            service: "readiness".into(),
        })
        .await
        .unwrap()
        .into_inner();
    // Ready first (the endpoints file is read at startup).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = watch.message().await.unwrap().unwrap();
        if s.status == ServingStatus::Serving as i32 {
            return watch;
        }
        assert!(Instant::now() < deadline, "never ready");
    }
}

/// A stream with its request decided, its response not yet begun: in flight.
async fn in_flight(epp: &Epp) -> Stream {
    let client = ExternalProcessorClient::connect(format!("http://{}", epp.grpc))
        .await
        .unwrap();
    let mut s = Stream::open(client).await;
    s.send(request_headers(duplex(), "POST", &[], false, None))
        .await;
    s.send(request_body(br#"{"model":"m","prompt":[1,2,3]}"#, true))
        .await;
    let headers = s.recv().await;
    assert!(matches!(headers.response, Some(Out::RequestHeaders(_))));
    let _ = s.recv().await; // the body echo
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_off_first_and_drains_in_flight_streams() {
    let dir = tempfile::tempdir().unwrap();
    let mut epp = start(dir.path(), "5s").await;
    let mut watch = readiness_watch(&epp).await;
    let mut s = in_flight(&epp).await;

    let term = Instant::now();
    epp.proc.term();
    let next = tokio::time::timeout(Duration::from_secs(2), watch.message())
        .await
        .expect("no readiness change within 2 s");
    assert_eq!(
        next.unwrap().map(|m| m.status),
        Some(ServingStatus::NotServing as i32)
    );
    // A watch is a stream too, and would hold the health server open until the drain timeout.
    drop(watch);
    // New streams are refused (the listener is closed or the connection is going away).
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let refused = match ExternalProcessorClient::connect(format!("http://{}", epp.grpc)).await {
            Err(_) => true,
            Ok(mut c) => {
                let (_tx, rx) = tokio::sync::mpsc::channel::<
                    envoy_types::pb::envoy::service::ext_proc::v3::ProcessingRequest,
                >(1);
                c.process(tokio_stream::wrappers::ReceiverStream::new(rx))
                    .await
                    .is_err()
            }
        };
        if refused {
            break;
        }
        assert!(Instant::now() < deadline, "still accepting new streams");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The in-flight stream still works: its response streams back chunk by chunk.
    s.send(response_headers(&[(":status", "200")], None)).await;
    assert!(matches!(
        s.recv().await.response,
        Some(Out::ResponseHeaders(_))
    ));
    for (i, chunk) in [&b"data: a\n\n"[..], b"data: [DONE]\n\n"]
        .iter()
        .enumerate()
    {
        s.send(response_body(chunk, i == 1)).await;
        assert_eq!(streamed(&s.recv().await), (chunk.to_vec(), i == 1));
    }
    assert!(
        epp.proc.child.try_wait().unwrap().is_none(),
        "exited mid-stream"
    );
    // The stream ends: the process exits, well before the drain timeout.
    drop(s);
    let status = wait_exit(&mut epp, Duration::from_secs(4)).await;
    assert!(status.success(), "{status:?}\n{}", epp.proc.log());
    assert!(
        term.elapsed() < Duration::from_secs(4),
        "{:?}",
        term.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_ends_is_cut_at_the_drain_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut epp = start(dir.path(), "1s").await;
    let _s = in_flight(&epp).await;
    let term = Instant::now();
    epp.proc.term();
    let status = wait_exit(&mut epp, Duration::from_secs(5)).await;
    let took = term.elapsed();
    assert!(status.success(), "{status:?}\n{}", epp.proc.log());
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "exited after {took:?} with a 1 s drain timeout"
    );
}
