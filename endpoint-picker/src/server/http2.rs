//! The gRPC listeners' HTTP/2 server: hyper's, with every limit set from [`crate::budget`] so
//! that what a peer can make kvpick hold per connection and per stream is bounded and charged.
//!
//! Per connection (set aside as [`budget::CONNECTION_BYTES`] for each of `--max-connections`):
//! the connection's receive window, and up to [`budget::STREAMS_PER_CONNECTION`] streams' header
//! lists and HTTP/2 state. Per stream (set aside as [`budget::STREAM_BYTES`] for each of
//! `--max-streams`): the send buffer, the first [`super::meter::DECODE_FREE`] bytes of the gRPC
//! decoder's buffer (beyond that, [`super::meter`] charges it), and the exchange. Rapid reset
//! (streams opened and reset at once) is capped by hyper's pending-accept reset limit, and a peer
//! that stops answering pings is dropped.
//!
//! kvpick reads every stream as fast as messages arrive (a request body is read whole before the
//! picker answers, one ext_proc message at a time), so small windows cost no throughput on a
//! cluster network: they only bound what a peer that sends without kvpick reading can park here.

use std::convert::Infallible;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tower_service::Service;

use super::meter::Metered;
use crate::budget::{self, Part};

/// Pings an idle connection this often, and drops it when a ping goes unanswered this long.
const KEEPALIVE: (Duration, Duration) = (Duration::from_secs(30), Duration::from_secs(10));
/// Streams a peer may open and reset before they are accepted (rapid reset), per connection.
const PENDING_RESETS: usize = 16;
/// Streams kvpick may reset for a peer's protocol errors before the connection goes.
const LOCAL_RESETS: usize = 64;

/// One listener's HTTP/2 limits.
#[derive(Clone, Copy, Debug)]
pub struct Http2Limits {
    stream_window: u32,
    connection_window: u32,
    streams: u32,
    header_list: u32,
    send_buffer: usize,
}

/// The ext_proc port's, as the budget sets them aside.
pub const EXT_PROC: Http2Limits = Http2Limits {
    stream_window: budget::STREAM_WINDOW,
    connection_window: budget::CONNECTION_WINDOW,
    streams: budget::STREAMS_PER_CONNECTION,
    header_list: budget::HEADER_LIST_BYTES,
    send_buffer: budget::SEND_BUFFER_BYTES,
};

/// The health and query ports': a few small calls at a time (with [`SIDE_CONNECTIONS`]
/// connections, 2 MiB per port).
pub const SIDE: Http2Limits = Http2Limits {
    stream_window: 64 << 10,
    connection_window: 64 << 10,
    streams: 8,
    header_list: budget::HEADER_LIST_BYTES,
    send_buffer: budget::SEND_BUFFER_BYTES,
};

/// Connections the health, query and metrics ports each allow (kubelet probes, `kvpick-epp
/// query`, Prometheus), from any one peer too.
pub const SIDE_CONNECTIONS: usize = 16;

/// Serves `routes` on every connection `incoming` yields until `stop`; then stops accepting,
/// asks every connection to finish (GOAWAY) and waits for them. Request bodies' gRPC messages
/// are charged to `meter` as they arrive ([`Metered`]).
pub async fn serve<I, IO>(
    incoming: I,
    routes: Routes,
    limits: Http2Limits,
    meter: Arc<Part>,
    stop: CancellationToken,
) where
    I: Stream<Item = IO>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .initial_stream_window_size(limits.stream_window)
        .initial_connection_window_size(limits.connection_window)
        .max_concurrent_streams(limits.streams)
        .max_header_list_size(limits.header_list)
        .max_send_buf_size(limits.send_buffer)
        .max_pending_accept_reset_streams(PENDING_RESETS)
        .max_local_error_reset_streams(LOCAL_RESETS)
        .keep_alive_interval(KEEPALIVE.0)
        .keep_alive_timeout(KEEPALIVE.1);
    let routes = routes.prepare();
    let mut connections = JoinSet::new();
    {
        let mut incoming = pin!(incoming);
        loop {
            let io = tokio::select! {
                _ = stop.cancelled() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                io = incoming.next() => match io {
                    Some(io) => io,
                    None => break,
                },
            };
            let (routes, meter) = (routes.clone(), meter.clone());
            let service = service_fn(move |request: hyper::Request<Incoming>| {
                let mut routes = routes.clone();
                let request = request.map(|body| Metered::new(body, &meter));
                async move {
                    Ok::<_, Infallible>(routes.call(request).await.unwrap_or_else(|e| match e {}))
                }
            });
            let connection = builder.serve_connection(TokioIo::new(io), service);
            let stop = stop.clone();
            connections.spawn(async move {
                let mut connection = pin!(connection);
                let ended = tokio::select! {
                    ended = connection.as_mut() => ended,
                    _ = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        connection.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
                }
            });
        }
    }
    // The listener is closed (dropped with `incoming`); the connections drain.
    while connections.join_next().await.is_some() {}
}
