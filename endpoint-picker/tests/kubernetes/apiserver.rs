//! A scripted Kubernetes API server on 127.0.0.1 for discovery tests: real HTTP (hyper), real
//! Kubernetes JSON. It serves list and watch for pods, InferencePools, and InferenceObjectives and
//! InferenceModelRewrites in both their groups (each can be made "not installed": 404), in one
//! namespace, with
//! resource versions, label and field selectors (objects moving in or out of a selector are
//! ADDED/DELETED, as the real watch cache does), BOOKMARKs, 410 Gone for compacted history,
//! dropped watch connections and injected 500s; and it counts requests so tests wait on facts.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test support, shared by two tests
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, service::service_fn};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

pub const NAMESPACE: &str = "ns";
pub const PODS: &str = "pods";
pub const POOLS: &str = "inferencepools";
pub const OBJECTIVES: &str = "inferenceobjectives.llm-d.ai";
pub const REWRITES: &str = "inferencemodelrewrites.llm-d.ai";
pub const OLD_OBJECTIVES: &str = "inferenceobjectives.inference.networking.x-k8s.io";
pub const OLD_REWRITES: &str = "inferencemodelrewrites.inference.networking.x-k8s.io";

/// Every kind served: key, apiVersion, Kind, plural.
const KINDS: [(&str, &str, &str, &str); 6] = [
    (PODS, "v1", "Pod", "pods"),
    (
        POOLS,
        "inference.networking.k8s.io/v1",
        "InferencePool",
        "inferencepools",
    ),
    (
        OBJECTIVES,
        "llm-d.ai/v1alpha2",
        "InferenceObjective",
        "inferenceobjectives",
    ),
    (
        REWRITES,
        "llm-d.ai/v1alpha2",
        "InferenceModelRewrite",
        "inferencemodelrewrites",
    ),
    (
        OLD_OBJECTIVES,
        "inference.networking.x-k8s.io/v1alpha2",
        "InferenceObjective",
        "inferenceobjectives",
    ),
    (
        OLD_REWRITES,
        "inference.networking.x-k8s.io/v1alpha2",
        "InferenceModelRewrite",
        "inferencemodelrewrites",
    ),
];

fn collection_path(api_version: &str, plural: &str) -> String {
    if api_version == "v1" {
        format!("/api/v1/namespaces/{NAMESPACE}/{plural}")
    } else {
        format!("/apis/{api_version}/namespaces/{NAMESPACE}/{plural}")
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    kind: &'static str,
    old: Option<Value>,
    new: Option<Value>,
}

#[derive(Default)]
struct State {
    rv: u64,
    objects: BTreeMap<(&'static str, String), Value>,
    history: Vec<Change>,
    compacted: u64,
    failing: bool,
    /// Bumped by every `drop_watches`: a watch opened in an older epoch is cut.
    epoch: u64,
    requests: HashMap<(&'static str, &'static str), usize>,
    /// The `timeoutSeconds` of every watch, as asked.
    watch_timeouts: Vec<Option<String>>,
    /// Kinds answered with 404, as when their CRD is not installed.
    uninstalled: Vec<&'static str>,
}

/// The server; dropping it stops it.
pub struct ApiServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<Option<Change>>,
    drop_watches: broadcast::Sender<()>,
    stop: CancellationToken,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl ApiServer {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = Self {
            addr,
            state: Arc::default(),
            events: broadcast::channel(1024).0,
            drop_watches: broadcast::channel(16).0,
            stop: CancellationToken::new(),
        };
        let (state, events, drops, stop) = (
            server.state.clone(),
            server.events.clone(),
            server.drop_watches.clone(),
            server.stop.clone(),
        );
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => a.unwrap(),
                };
                let (state, events, drops) = (state.clone(), events.clone(), drops.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let r = handle(req, &state, &events, &drops);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        server
    }

    /// A client for this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(format!("http://{}", self.addr).parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A watch of this server's InferenceObjectives and InferenceModelRewrites for pool `pool`
    /// into `policy`, retrying fast.
    pub fn policy_watch(
        &self,
        policy: Arc<kvpick_epp::cluster_policy::ClusterPolicy>,
    ) -> kvpick_epp::discovery::kubernetes::PolicyWatch {
        let retry = kvpick_epp::discovery::kubernetes::Retry {
            min: std::time::Duration::from_millis(20),
            max: std::time::Duration::from_millis(200),
        };
        kvpick_epp::discovery::kubernetes::PolicyWatch::new(
            self.client(),
            NAMESPACE.into(),
            "pool".into(),
            retry,
            policy,
        )
    }

    /// Creates or replaces an object (`kind` is one of [`KINDS`]); returns its version.
    pub fn apply(&self, kind: &'static str, mut object: Value) -> u64 {
        let mut s = self.state.lock();
        s.rv += 1;
        let rv = s.rv;
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        object["metadata"]["namespace"] = json!(NAMESPACE);
        object["metadata"]["uid"] = json!(format!("uid-{name}"));
        let old = s.objects.insert((kind, name), object.clone());
        self.record(
            &mut s,
            Change {
                rv,
                kind,
                old,
                new: Some(object),
            },
        );
        rv
    }

    /// Deletes an object.
    pub fn delete(&self, kind: &'static str, name: &str) {
        let mut s = self.state.lock();
        let Some(mut old) = s.objects.remove(&(kind, name.to_owned())) else {
            panic!("no {kind}/{name}")
        };
        s.rv += 1;
        let rv = s.rv;
        old["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(
            &mut s,
            Change {
                rv,
                kind,
                old: Some(old),
                new: None,
            },
        );
    }

    fn record(&self, s: &mut State, change: Change) {
        s.history.push(change.clone());
        let _ = self.events.send(Some(change));
    }

    /// Sends a BOOKMARK at the current version on every open watch.
    pub fn bookmark(&self) {
        let _ = self.events.send(None);
    }

    /// Cuts every open watch connection mid-stream (no terminating chunk); none of them sees a
    /// change made after this call.
    pub fn drop_watches(&self) {
        self.state.lock().epoch += 1;
        let _ = self.drop_watches.send(());
    }

    /// Cuts every watch, runs `change` unseen, then forgets history up to now: watches resuming
    /// from an older version get 410 Gone and must relist.
    pub fn compact_after(&self, change: impl FnOnce(&Self)) {
        self.drop_watches();
        change(self);
        let mut s = self.state.lock();
        s.compacted = s.rv;
        s.history.clear();
    }

    /// Serves `kind` with 404 (CRD not installed) or again.
    pub fn set_installed(&self, kind: &'static str, installed: bool) {
        let mut s = self.state.lock();
        s.uninstalled.retain(|k| *k != kind);
        if !installed {
            s.uninstalled.push(kind);
        }
    }

    /// Answers every request with 500 (and cuts open watches) until called with false.
    pub fn set_failing(&self, failing: bool) {
        if failing {
            self.drop_watches();
        }
        self.state.lock().failing = failing;
    }

    /// The `timeoutSeconds` each watch asked for, in order.
    pub fn watch_timeouts(&self) -> Vec<Option<String>> {
        self.state.lock().watch_timeouts.clone()
    }

    /// Requests seen of `verb` (`list`, `watch`, `failed`) on `kind`.
    pub fn requests(&self, kind: &'static str, verb: &'static str) -> usize {
        self.state
            .lock()
            .requests
            .get(&(kind, verb))
            .copied()
            .unwrap_or(0)
    }
}

fn full(status: u16, body: Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(
            Full::new(Bytes::from(body.to_string()))
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": reason, "reason": reason, "code": code})
}

fn handle(
    req: Request<Incoming>,
    state: &Arc<Mutex<State>>,
    events: &broadcast::Sender<Option<Change>>,
    drops: &broadcast::Sender<()>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: HashMap<String, String> = req
        .uri()
        .query()
        .map(|q| url_pairs(q).collect())
        .unwrap_or_default();
    let Some(&(kind, api_version, item_kind, _)) = KINDS
        .iter()
        .find(|(_, v, _, plural)| path == collection_path(v, plural))
    else {
        return full(404, status(404, "NotFound"));
    };
    if state.lock().uninstalled.contains(&kind) {
        *state.lock().requests.entry((kind, "missing")).or_default() += 1;
        return full(404, status(404, "NotFound"));
    }
    let filter = Filter::new(&query);
    let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
    let mut s = state.lock();
    if s.failing {
        *s.requests.entry((kind, "failed")).or_default() += 1;
        return full(500, status(500, "InternalError"));
    }
    *s.requests
        .entry((kind, if watch { "watch" } else { "list" }))
        .or_default() += 1;
    if watch {
        s.watch_timeouts.push(query.get("timeoutSeconds").cloned());
    }
    if !watch {
        let items: Vec<Value> = s
            .objects
            .iter()
            .filter(|((k, _), o)| *k == kind && filter.matches(o))
            .map(|(_, o)| o.clone())
            .collect();
        let list_kind = format!("{item_kind}List");
        return full(
            200,
            json!({"kind": list_kind, "apiVersion": api_version,
            "metadata": {"resourceVersion": s.rv.to_string()}, "items": items}),
        );
    }
    let since: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(256);
    let mut backlog = Vec::new();
    if since < s.compacted {
        backlog.push(json!({"type": "ERROR", "object": status(410, "Expired")}));
    } else {
        for c in s.history.iter().filter(|c| c.rv > since && c.kind == kind) {
            backlog.extend(filter.event(c));
        }
    }
    let gone = since < s.compacted;
    let (mut live, mut dropped, rv, epoch) = (events.subscribe(), drops.subscribe(), s.rv, s.epoch);
    drop(s);
    let state = state.clone();
    tokio::spawn(async move {
        for e in backlog {
            if tx.send(Ok(Frame::data(line(&e)))).await.is_err() {
                return;
            }
        }
        if gone {
            return;
        }
        let mut last = rv;
        loop {
            let event = tokio::select! {
                biased;
                _ = dropped.recv() => None,
                e = live.recv() => e.ok(),
            };
            let cut = state.lock().epoch != epoch;
            let Some(event) = event.filter(|_| !cut) else {
                let _ = tx
                    .send(Err(std::io::Error::other("connection dropped")))
                    .await;
                return;
            };
            let lines = match event {
                Some(c) if c.kind == kind && c.rv > last => {
                    last = c.rv;
                    filter.event(&c)
                }
                Some(_) => continue,
                None => vec![json!({"type": "BOOKMARK", "object": {
                    "kind": item_kind,
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": last.to_string()}}})],
            };
            for e in lines {
                if tx.send(Ok(Frame::data(line(&e)))).await.is_err() {
                    return;
                }
            }
        }
    });
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .unwrap()
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn url_pairs(q: &str) -> impl Iterator<Item = (String, String)> + '_ {
    q.split('&').map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (decode(k), decode(v))
    })
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Label (`k=v,…`) and field (`metadata.name=x`) selectors, equality only.
#[derive(Clone)]
struct Filter {
    labels: Vec<(String, String)>,
    name: Option<String>,
}

impl Filter {
    fn new(query: &HashMap<String, String>) -> Self {
        let pairs = |q: Option<&String>| -> Vec<(String, String)> {
            q.map(|s| {
                s.split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once('=').expect("equality selector");
                        (k.to_owned(), v.trim_start_matches('=').to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
        };
        let fields = pairs(query.get("fieldSelector"));
        let name = fields
            .iter()
            .find(|(k, _)| k == "metadata.name")
            .map(|(_, v)| v.clone());
        assert!(
            fields.iter().all(|(k, _)| k == "metadata.name"),
            "{fields:?}"
        );
        Self {
            labels: pairs(query.get("labelSelector")),
            name,
        }
    }

    fn matches(&self, o: &Value) -> bool {
        let meta = &o["metadata"];
        self.name.as_ref().is_none_or(|n| meta["name"] == json!(n))
            && self
                .labels
                .iter()
                .all(|(k, v)| meta["labels"][k] == json!(v))
    }

    /// The watch events one change makes through this filter.
    fn event(&self, c: &Change) -> Vec<Value> {
        let was = c.old.as_ref().is_some_and(|o| self.matches(o));
        let is = c.new.as_ref().is_some_and(|o| self.matches(o));
        let (kind, object) = match (was, is, &c.new) {
            (false, true, Some(n)) => ("ADDED", n.clone()),
            (true, true, Some(n)) => ("MODIFIED", n.clone()),
            (true, false, Some(n)) => ("DELETED", n.clone()),
            (true, false, None) => ("DELETED", c.old.clone().unwrap_or_default()),
            _ => return Vec::new(),
        };
        vec![json!({"type": kind, "object": object})]
    }
}
