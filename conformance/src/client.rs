//! Requests through the gateway, as a client sends them: whole, in chunks, or read as a stream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::header::HeaderMap;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::{gateway, pods};

type Body = BoxBody<Bytes, Infallible>;

/// Longest a request through the gateway may take.
const TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP/1.1 client.
#[derive(Debug, Clone)]
pub struct Client {
    inner: hyper_util::client::legacy::Client<HttpConnector, Body>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

/// A whole answer.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Answer {
    /// A response header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The pod that served it (its own header).
    pub fn served(&self) -> Option<&str> {
        self.header(pods::POD)
    }

    /// The destination header the serving pod received, split at commas.
    pub fn destination(&self) -> Vec<&str> {
        split(self.header(pods::DESTINATION_SEEN))
    }

    /// The picker's `envoy.lb` destination metadata, split at commas.
    pub fn lb_metadata(&self) -> Vec<&str> {
        split(self.header(gateway::LB_METADATA))
    }

    /// A short description for failure messages.
    pub fn describe(&self) -> String {
        format!(
            "{} {:?} {}",
            self.status,
            self.headers,
            String::from_utf8_lossy(&self.body)
        )
    }
}

/// A header's value as text.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn split(value: Option<&str>) -> Vec<&str> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty() && *v != "-")
        .collect()
}

impl Client {
    /// A client with no pooled-connection surprises between checks.
    pub fn new() -> Self {
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(HttpConnector::new());
        Self { inner }
    }

    /// GETs `url`; its status.
    pub async fn get(&self, url: &str) -> Result<u16, String> {
        let req = hyper::Request::get(url)
            .body(Full::new(Bytes::new()).boxed())
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(TIMEOUT, self.inner.request(req))
            .await
            .map_err(|_| format!("GET {url}: no answer in {TIMEOUT:?}"))?
            .map_err(|e| format!("GET {url}: {e}"))?;
        Ok(resp.status().as_u16())
    }

    /// Sends a request with `body` to `path` on `gateway`; returns the response head and its
    /// body, unread.
    pub async fn open(
        &self,
        gateway: SocketAddr,
        path: &str,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Result<hyper::Response<Incoming>, String> {
        let mut req = hyper::Request::post(format!("http://{gateway}{path}"))
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(body).map_err(|e| e.to_string())?;
        tokio::time::timeout(TIMEOUT, self.inner.request(req))
            .await
            .map_err(|_| format!("POST {path}: no answer in {TIMEOUT:?}"))?
            .map_err(|e| format!("POST {path}: {e}"))
    }

    /// POSTs `body` whole (with a content length).
    pub async fn post(
        &self,
        gateway: SocketAddr,
        path: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let body = Full::new(Bytes::copy_from_slice(body)).boxed();
        read(self.open(gateway, path, body, headers).await?).await
    }

    /// POSTs `chunks` as a chunked body, yielding between chunks so they leave one by one.
    pub async fn post_chunked(
        &self,
        gateway: SocketAddr,
        path: &str,
        chunks: Vec<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let stream = futures::stream::unfold(chunks.into_iter(), |mut chunks| async move {
            let chunk = chunks.next()?;
            tokio::time::sleep(Duration::from_millis(2)).await;
            Some((Ok::<_, Infallible>(Frame::data(chunk)), chunks))
        });
        let body = StreamBody::new(stream).boxed();
        read(self.open(gateway, path, body, headers).await?).await
    }
}

/// Reads a response whole.
pub async fn read(resp: hyper::Response<Incoming>) -> Result<Answer, String> {
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(TIMEOUT, body.collect())
        .await
        .map_err(|_| format!("body not complete in {TIMEOUT:?}"))?
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body,
    })
}
