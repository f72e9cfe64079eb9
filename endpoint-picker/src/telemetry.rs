//! kvpick-epp's own Prometheus metrics: names, help, buckets, and the `/metrics` listener.
//!
//! Every metric is `kvpick_…`; labels are bounded (outcomes, status codes, endpoint addresses of
//! the pool, token kinds). Series labelled `endpoint` are removed once their endpoint leaves the
//! pool ([`crate::endpoint_series`]). Recording goes through the `metrics` facade, so code that records does
//! not care whether an exporter is installed (tests run without one).

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http_body_util::Full;
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::endpoint_series::{EndpointSeries, Series};

/// Requests by `outcome` (`routed`, `headers_only`, a refusal's error label) and HTTP `code`.
pub const REQUESTS: &str = "kvpick_requests_total";
/// Time to parse a request and pick its endpoint.
pub const SCHEDULING: &str = "kvpick_scheduling_duration_seconds";
/// Requests whose model an InferenceModelRewrite renamed, by rewrite and target model (both
/// set by whoever may write the pool's rewrites; bounded by `cluster_policy`'s limits).
pub const MODEL_REWRITES: &str = "kvpick_model_rewrites_total";
/// Requests with a body kvpick could not rewrite while the pool has rewrites, by `reason`
/// (`body_mode`: STREAMED or NONE, routed before the body; `partial_body`: a BUFFERED_PARTIAL
/// body cut at the gateway's buffer limit).
pub const MODEL_REWRITES_SKIPPED: &str = "kvpick_model_rewrites_skipped_total";
/// Fraction of a token prompt's full blocks the chosen endpoint holds.
pub const PREFIX_MATCH: &str = "kvpick_prefix_match_ratio";
/// Requests routed to each `endpoint` (as primary).
pub const PICKS: &str = "kvpick_endpoint_picks_total";
/// `vllm:num_requests_waiting` as last scraped, per `endpoint`.
pub const WAITING: &str = "kvpick_endpoint_waiting_requests";
/// `vllm:num_requests_running` as last scraped, per `endpoint`.
pub const RUNNING: &str = "kvpick_endpoint_running_requests";
/// `vllm:kv_cache_usage_perc` as last scraped, per `endpoint`.
pub const KV_USAGE: &str = "kvpick_endpoint_kv_cache_usage_ratio";
/// 1 when an endpoint's signals are older than the staleness threshold.
pub const STALE: &str = "kvpick_endpoint_stale";
/// Failed scrapes per `endpoint` and `reason`.
pub const SCRAPE_ERRORS: &str = "kvpick_endpoint_scrape_errors_total";
/// Tokens by `kind` (`input`, `output`, `cached`), from responses' `usage`.
pub const TOKENS: &str = "kvpick_tokens_total";
/// Time from request headers to the first response body byte.
pub const TTFT: &str = "kvpick_time_to_first_byte_seconds";
/// Endpoints known to the pool.
pub const ENDPOINTS: &str = "kvpick_endpoints";
/// Distinct block keys in the index.
pub const INDEX_KEYS: &str = "kvpick_index_keys";
/// (endpoint, block) entries in the index.
pub const INDEX_ENTRIES: &str = "kvpick_index_entries";
/// Text and chat prompts by tokenization `source` (`local`, `cache`, `remote`, `unavailable`) and
/// `outcome` (`ok`, or why there are no ids: `no_tokenizer`, `timeout`, `overloaded`, ...).
pub const TOKENIZE: &str = "kvpick_tokenize_total";
/// Client-settable scheduling headers ignored because they are not trusted, by header.
pub const UNTRUSTED_HEADERS: &str = "kvpick_untrusted_headers_ignored_total";
/// Server errors (5xx) answered by an endpoint, each starting its failure cool-down.
pub const ENDPOINT_FAILURES: &str = "kvpick_endpoint_failures_total";
/// Requests the proxy served on another endpoint than the picker's primary (a fallback, a retry).
pub const SERVED_DIFFERS: &str = "kvpick_served_differs_total";
/// `vllm:num_requests_waiting` summed over the pool's fresh endpoints (for autoscalers).
pub const POOL_WAITING: &str = "kvpick_pool_waiting_requests";
/// `vllm:num_requests_running` summed over the pool's fresh endpoints.
pub const POOL_RUNNING: &str = "kvpick_pool_running_requests";
/// Mean KV-cache utilization over the pool's fresh endpoints, 0..1 (GIE's EPP exports it as
/// `inference_pool_average_kv_cache_utilization`).
pub const POOL_KV_USAGE: &str = "kvpick_pool_average_kv_cache_utilization";
/// Mean waiting requests per fresh endpoint (GIE: `inference_pool_average_queue_size`).
pub const POOL_AVG_QUEUE: &str = "kvpick_pool_average_queue_size";
/// Endpoints whose signals are fresh, scraped within the staleness threshold (GIE:
/// `inference_pool_ready_pods`; kvpick counts endpoints, so a data-parallel rank is one).
pub const POOL_READY: &str = "kvpick_pool_ready_endpoints";

/// Fraction of the pool's endpoints without room (over a saturation threshold or stale), as of
/// the last request.
pub const POOL_SATURATION: &str = "kvpick_pool_saturation_ratio";
/// 1 while no endpoint has room (sheddable requests get 429), else 0, as of the last request.
pub const POOL_SATURATED: &str = "kvpick_pool_saturated";
/// Prefix tokens kvpick predicted the primary holds minus the `cached_tokens` the pod reported.
pub const PREFIX_PREDICTION_ERROR: &str = "kvpick_prefix_prediction_error_tokens";

/// Requests picked and not yet finished, per endpoint and phase (prefill until the first
/// response byte, then decode): the picker's in-flight accounting.
pub const INFLIGHT: &str = "kvpick_endpoint_inflight_requests";
/// Uncached prompt tokens reserved on an endpoint and not yet past their first byte.
pub const INFLIGHT_PREFILL_TOKENS: &str = "kvpick_endpoint_inflight_prefill_tokens";
/// |predicted − observed| time to first byte of routed requests.
pub const TTFT_PREDICTION_ERROR: &str = "kvpick_ttft_prediction_error_seconds";
/// Requests no endpoint was predicted to meet the objectives of, by `reason` (the miss, as in
/// `x-kvpick-drop-reason`) and `action` (`shed`: sheddable, refused; `queued`: waited in flow
/// control and was picked again; `routed`: sent to the fastest endpoint).
pub const SLO_UNATTAINABLE: &str = "kvpick_slo_unattainable_total";
/// The engine profile the predicted-latency scorer uses per model, by step-time `coefficient`
/// (`overhead`, `per_prefill_token`, ...), µs: the configured one, then what online calibration
/// fitted.
pub const ENGINE_PROFILE: &str = "kvpick_engine_profile_microseconds";
/// Online calibration's refits by model and `outcome` (`accepted`, `accepted_partial`: installed
/// with coefficients the windows did not identify kept at their values, `failed`, `unidentified`,
/// `implausible`, `worse_than_start`).
pub const PROFILE_FITS: &str = "kvpick_engine_profile_fits_total";
/// Its buckets, s: 1-2-5 from 1 ms, fine enough to tell a calibrated profile from a wrong one.
pub const TTFT_ERROR_BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];
/// Requests through the flow-control queue, by outcome (`queued`, `dispatched`, `expired`,
/// `displaced`, `full`, `too_large`, `cancelled`, `shutdown`; `best_effort`: a critical request
/// waiting for its objectives whose wait ended, routed to the best endpoint anyway).
pub const FLOW_QUEUE: &str = "kvpick_flow_queue_total";
/// Requests waiting in the flow-control queue.
pub const FLOW_QUEUE_REQUESTS: &str = "kvpick_flow_queue_requests";
/// Request-body bytes waiting in the flow-control queue.
pub const FLOW_QUEUE_BYTES: &str = "kvpick_flow_queue_bytes";
/// How long dispatched requests waited in the flow-control queue.
pub const FLOW_QUEUE_WAIT: &str = "kvpick_flow_queue_wait_seconds";

/// Each part of the memory budget's limit, by `part` (`request_bytes`, `kv_event_bytes`, `streams`).
pub const BUDGET_LIMIT: &str = "kvpick_memory_budget_limit";
/// What is charged against each part of the memory budget now, by `part`.
pub const BUDGET_USED: &str = "kvpick_memory_budget_used";
/// Charges refused because a part of the memory budget was spent, by `part`.
pub const BUDGET_REFUSED: &str = "kvpick_memory_budget_refused_total";
/// ext_proc streams by the request body `mode` Envoy announced and how kvpick `handling` it
/// (`body`: routed on the body; `headers`: routed on the headers alone; `refused`).
pub const BODY_MODES: &str = "kvpick_ext_proc_body_modes_total";

/// ext_proc, health, query and metrics connections open now, by `listener`.
pub const CONNECTIONS_OPEN: &str = "kvpick_connections_open";
/// Connections closed at accept or before their first bytes, by `listener` and `reason`
/// (`too_many`, `too_many_from_peer`, `silent`).
pub const CONNECTIONS_REFUSED: &str = "kvpick_connections_refused_total";

/// Latency-objective headers whose value was not a valid objective (ignored), by `header`.
pub const SLO_HEADERS_IGNORED: &str = "kvpick_slo_headers_ignored_total";
/// Counter `{decision}`: what a P/D config's handler did (`prefill_decode`, `decode_only`,
/// `no_prefill_endpoint`), as llm-d's `pd_decision` counts it.
pub const PD_DECISIONS: &str = "kvpick_pd_decisions_total";

/// How long a `/metrics` request's head may take to arrive.
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Largest `/metrics` request head (hyper's minimum buffer).
const MAX_REQUEST_HEAD: usize = 8192;

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "Connections open now, by listener");
    describe_counter!(
        PD_DECISIONS,
        "P/D handler decisions: prefill_decode, decode_only or no_prefill_endpoint"
    );
    describe_counter!(
        SLO_HEADERS_IGNORED,
        "Latency-objective headers ignored for an invalid value (not 1..3600000 ms), by header"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections closed at accept (over a cap) or for sending nothing, by listener and reason"
    );
    describe_gauge!(
        BUDGET_LIMIT,
        "Limit of each part of the memory budget (bytes, or streams for part=streams)"
    );
    describe_gauge!(
        BUDGET_USED,
        "Charged now against each part of the memory budget"
    );
    describe_counter!(
        BUDGET_REFUSED,
        "Charges refused because a part of the memory budget was spent"
    );
    describe_counter!(
        BODY_MODES,
        "ext_proc streams by request body mode and how kvpick handled it"
    );
    describe_gauge!(
        POOL_SATURATION,
        "Fraction of endpoints over a saturation threshold or stale, as of the last request"
    );
    describe_gauge!(
        POOL_SATURATED,
        "1 while no endpoint has room and sheddable requests are refused"
    );
    describe_gauge!(
        ENGINE_PROFILE,
        Unit::Microseconds,
        "Step-time coefficients of the engine profile latency predictions use, per model"
    );
    describe_counter!(
        PROFILE_FITS,
        "Online calibration refits by model and outcome (accepted, accepted_partial, failed, unidentified, implausible, worse_than_start)"
    );
    describe_histogram!(
        PREFIX_PREDICTION_ERROR,
        "Predicted prefix-cache tokens minus the pod's reported cached_tokens, per request"
    );
    describe_counter!(
        UNTRUSTED_HEADERS,
        "Scheduling headers sent by clients and ignored (not trusted), by header"
    );
    describe_counter!(
        REQUESTS,
        "Inference requests by outcome and HTTP status code"
    );
    describe_counter!(
        MODEL_REWRITES,
        "Requests whose model an InferenceModelRewrite renamed, by rewrite and target model"
    );
    describe_counter!(
        MODEL_REWRITES_SKIPPED,
        "Request bodies not rewritten while the pool has model rewrites, by reason"
    );
    describe_histogram!(
        SCHEDULING,
        Unit::Seconds,
        "Time to parse a request and pick its endpoint"
    );
    describe_histogram!(
        PREFIX_MATCH,
        "Fraction of a token prompt's blocks the chosen endpoint holds"
    );
    describe_counter!(PICKS, "Requests routed to each endpoint as primary");
    describe_gauge!(WAITING, "vllm:num_requests_waiting as last scraped");
    describe_gauge!(RUNNING, "vllm:num_requests_running as last scraped");
    describe_gauge!(KV_USAGE, "vllm:kv_cache_usage_perc as last scraped, 0..1");
    describe_gauge!(
        STALE,
        "1 when the endpoint's signals are older than the staleness threshold"
    );
    describe_counter!(
        SCRAPE_ERRORS,
        "Failed metric scrapes by endpoint and reason"
    );
    describe_counter!(TOKENS, "Tokens reported by responses' usage, by kind");
    describe_histogram!(
        TTFT,
        Unit::Seconds,
        "Time from request headers to the first response body byte"
    );
    describe_gauge!(ENDPOINTS, "Endpoints known to the pool");
    describe_gauge!(INDEX_KEYS, "Distinct block keys in the KV index");
    describe_gauge!(INDEX_ENTRIES, "(endpoint, block) entries in the KV index");
    describe_counter!(
        TOKENIZE,
        "Text and chat prompts by tokenization source and outcome"
    );
    describe_counter!(
        ENDPOINT_FAILURES,
        "Server errors (5xx) answered by an endpoint; each starts its failure cool-down"
    );
    describe_counter!(
        SERVED_DIFFERS,
        "Requests the proxy served on another endpoint than the picked primary"
    );
    describe_gauge!(
        POOL_WAITING,
        "Waiting requests summed over the pool's fresh endpoints"
    );
    describe_gauge!(
        POOL_RUNNING,
        "Running requests summed over the pool's fresh endpoints"
    );
    describe_gauge!(
        POOL_KV_USAGE,
        "Mean KV-cache utilization over the pool's fresh endpoints, 0..1"
    );
    describe_gauge!(
        POOL_AVG_QUEUE,
        "Mean waiting requests per endpoint over the pool's fresh endpoints"
    );
    describe_gauge!(POOL_READY, "Endpoints with fresh signals");
    describe_gauge!(
        INFLIGHT,
        "Requests picked and not yet finished, by phase (prefill until the first byte, then decode)"
    );
    describe_gauge!(
        INFLIGHT_PREFILL_TOKENS,
        "Uncached prompt tokens reserved and not yet past their first byte"
    );
    describe_histogram!(
        TTFT_PREDICTION_ERROR,
        Unit::Seconds,
        "|predicted - observed| time to first byte of routed requests"
    );
    describe_counter!(
        FLOW_QUEUE,
        "Requests through the flow-control queue, by outcome"
    );
    describe_counter!(
        SLO_UNATTAINABLE,
        "Requests no endpoint was predicted to meet the objectives of, by reason and action"
    );
    describe_gauge!(
        FLOW_QUEUE_REQUESTS,
        "Requests waiting in the flow-control queue"
    );
    describe_gauge!(
        FLOW_QUEUE_BYTES,
        Unit::Bytes,
        "Request-body bytes waiting in the flow-control queue"
    );
    describe_histogram!(
        FLOW_QUEUE_WAIT,
        Unit::Seconds,
        "How long dispatched requests waited in the flow-control queue"
    );
}

/// Buckets of [`PREFIX_PREDICTION_ERROR`], in tokens: symmetric around 0 (exact), a block of 16
/// tokens either way and up to 8k tokens of drift either way.
const PREDICTION_ERROR_BUCKETS: [f64; 15] = [
    -8192.0, -2048.0, -512.0, -128.0, -32.0, -16.0, -1.0, 0.0, 15.0, 16.0, 32.0, 128.0, 512.0,
    2048.0, 8192.0,
];

static HANDLE: OnceLock<Exporter> = OnceLock::new();

/// What renders the `/metrics` page: the Prometheus exporter's series and the per-endpoint ones
/// ([`crate::endpoint_series`]).
#[derive(Clone, Debug)]
pub struct Exporter {
    handle: PrometheusHandle,
    series: Series,
}

impl Exporter {
    /// The page with every series held.
    pub fn render(&self) -> String {
        self.handle.render() + &self.series.render_all()
    }

    /// The page after deleting the series of endpoints not in `live`.
    pub fn render_live(&self, live: &HashSet<String>) -> String {
        self.handle.render() + &self.series.render(live)
    }
}

/// Installs the process-wide recorder once (per-endpoint series in front of the Prometheus
/// exporter) and returns what renders it.
pub fn install() -> Exporter {
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
            ];
            let ttft = [
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            ];
            let ratio = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99, 1.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(SCHEDULING.into()), &latency)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(TTFT.into()), &ttft))
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(FLOW_QUEUE_WAIT.into()), &ttft)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(PREFIX_MATCH.into()), &ratio))
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(TTFT_PREDICTION_ERROR.into()),
                        &TTFT_ERROR_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(PREFIX_PREDICTION_ERROR.into()),
                        &PREDICTION_ERROR_BUCKETS,
                    )
                });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(_) => PrometheusBuilder::new().build_recorder(),
            };
            let handle = recorder.handle();
            let series = Series::default();
            let recorder = EndpointSeries::new(recorder, series.clone());
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; kvpick's metrics go there"
                );
            }
            describe();
            Exporter { handle, series }
        })
        .clone()
}

/// The addresses of the endpoints in the pool now, whose series the page keeps.
pub type LiveEndpoints = Arc<dyn Fn() -> HashSet<String> + Send + Sync>;

/// Serves `GET /metrics` (any path, in fact) on `listener` until `stop`; series of endpoints not
/// in `live()` are deleted as each page is rendered.
pub async fn serve<IO>(
    incoming: impl Stream<Item = IO>,
    handle: Exporter,
    live: LiveEndpoints,
    stop: CancellationToken,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut conns = tokio::task::JoinSet::new();
    let mut incoming = std::pin::pin!(incoming);
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = incoming.next() => match accepted {
                Some(a) => a,
                None => break,
            },
        };
        let handle = handle.clone();
        let live = live.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let svc = service_fn(move |_req: Request<Incoming>| {
                let body = handle.render_live(&live());
                async move {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4")
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default(),
                    )
                }
            });
            // A request's head must arrive whole, small and soon (slowloris); its body is never
            // read.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_REQUEST_HEAD)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
    while conns.join_next().await.is_some() {}
}
