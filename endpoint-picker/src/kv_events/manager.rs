//! The endpoint lifecycle: follows the endpoint set, opening a subscription (and a mailbox on
//! its worker) when an endpoint appears and closing it when it disappears or changes, at which
//! point its worker drops its blocks from the index.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use kvpick_scheduler::EndpointId;
use kvpick_scheduler::EventsState;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::bind::{Route, Routes, SharedRoutes};
use super::hold::Hold;
use super::mailbox::{Mailbox, RunQueue};
use super::metrics::EndpointMetrics;
use super::subscriber::Subscriber;
use super::workers::{Control, Registration, Worker};
use super::{KvSource, KvSourceView, Shared};

/// Control messages queued per worker (open/close bursts of a large endpoint-set change).
const CONTROL_QUEUE: usize = 1024;

struct WorkerHandle {
    control: mpsc::Sender<Control>,
    run: Arc<RunQueue>,
}

/// An endpoint that has events (connect or bind mode).
struct Active {
    mailbox: Arc<Mailbox>,
    metrics: Arc<EndpointMetrics>,
    publisher: Option<SocketAddr>,
    cancel: CancellationToken,
    subscriber: Option<JoinHandle<()>>,
}

struct Registered {
    source: KvSource,
    active: Option<Active>,
}

pub(crate) struct Manager {
    shared: Arc<Shared>,
    routes: SharedRoutes,
    workers: Vec<WorkerHandle>,
    registered: HashMap<EndpointId, Registered>,
    cancel: CancellationToken,
}

impl Manager {
    /// Spawns the workers into `tasks`.
    pub fn new(
        shared: Arc<Shared>,
        routes: SharedRoutes,
        tasks: &mut JoinSet<()>,
        cancel: &CancellationToken,
    ) -> Self {
        let workers = (0..shared.config.workers)
            .map(|_| {
                let (control, rx) = mpsc::channel(CONTROL_QUEUE);
                let run = Arc::new(RunQueue::default());
                let worker = Worker::new(Arc::clone(&shared), Arc::clone(&run), rx);
                tasks.spawn(worker.run(cancel.clone()));
                WorkerHandle { control, run }
            })
            .collect();
        Self {
            shared,
            routes,
            workers,
            registered: HashMap::new(),
            cancel: cancel.clone(),
        }
    }

    /// Follows `sources` until `cancel` fires (keeping the last set if its sender goes); with a
    /// `hold`, opens nothing until it is released.
    pub async fn run<V>(
        mut self,
        mut sources: watch::Receiver<V>,
        cancel: CancellationToken,
        hold: Option<Hold>,
    ) where
        V: KvSourceView + Send + Sync + 'static,
    {
        let opened = match hold {
            Some(hold) => match hold.wait(&cancel).await {
                Some(opened) => Some(opened),
                None => return, // nothing was opened
            },
            None => None,
        };
        let mut tick = tokio::time::interval(self.shared.config.stats_interval);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut watching = true;
        let first = sources.borrow_and_update().kv_sources();
        self.reconcile(first).await;
        if let Some(opened) = opened {
            self.barrier().await;
            let _ = opened.send(());
        }
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                changed = sources.changed(), if watching => match changed {
                    Ok(()) => {
                        let now = sources.borrow_and_update().kv_sources();
                        self.reconcile(now).await;
                    }
                    Err(_) => watching = false,
                },
                _ = tick.tick() => self.shared.metrics.index(&self.shared.index.stats()),
            }
        }
        for registered in self.registered.into_values() {
            if let Some(active) = registered.active {
                active.cancel.cancel();
                if let Some(task) = active.subscriber {
                    let _ = task.await;
                }
            }
        }
    }

    /// Returns once every worker has handled the control messages sent to it before.
    async fn barrier(&self) {
        let mut acks = Vec::with_capacity(self.workers.len());
        for worker in &self.workers {
            let (ack, acked) = oneshot::channel();
            if worker.control.send(Control::Barrier(ack)).await.is_ok() {
                acks.push(acked);
            }
        }
        for acked in acks {
            let _ = acked.await;
        }
    }

    async fn reconcile(&mut self, sources: Vec<KvSource>) {
        let want: HashMap<EndpointId, KvSource> =
            sources.into_iter().map(|s| (s.endpoint, s)).collect();
        let changed: Vec<EndpointId> = self
            .registered
            .iter()
            .filter(|(id, r)| want.get(id) != Some(&r.source))
            .map(|(id, _)| *id)
            .collect();
        for id in changed {
            self.close(id).await;
        }
        for (id, source) in want {
            if !self.registered.contains_key(&id) {
                self.open(source).await;
            }
        }
        let routes = self.registered.values().filter_map(|r| {
            let active = r.active.as_ref()?;
            Some(Route {
                address: r.source.address,
                rank: r.source.rank,
                mailbox: Arc::clone(&active.mailbox),
                metrics: Arc::clone(&active.metrics),
                connect_mode: active.publisher.is_some(),
            })
        });
        *self.routes.write() = Arc::new(Routes::new(routes));
    }

    async fn open(&mut self, source: KvSource) {
        let id = source.endpoint;
        let config = &self.shared.config;
        let publisher = source.publisher(config);
        let bind_mode = publisher.is_none() && config.bind.is_some();
        let mut registered = Registered {
            source,
            active: None,
        };
        if publisher.is_some() || bind_mode {
            let worker = &self.workers[id.index() % self.workers.len()];
            let source = &registered.source;
            let metrics = self.shared.metrics.register(id, source.address.to_string());
            let mailbox = Mailbox::charged(
                id,
                config.queue_capacity,
                config.queue_bytes,
                Some(Arc::clone(&self.shared.budget)),
                Arc::clone(&worker.run),
            );
            let cancel = self.cancel.child_token();
            let state = if bind_mode {
                EventsState::Absent
            } else {
                EventsState::Stale
            };
            self.shared.states.set(id, state);
            let reg = Registration {
                endpoint: id,
                model: Arc::clone(&source.model),
                rank: source.rank,
                mailbox: Arc::clone(&mailbox),
                replay: source.replay(config),
                bind_mode,
                metrics: Arc::clone(&metrics),
                cancel: cancel.clone(),
            };
            if worker
                .control
                .send(Control::Open(Box::new(reg)))
                .await
                .is_err()
            {
                return; // shutting down
            }
            let subscriber = publisher.map(|publisher| {
                let subscriber = Subscriber {
                    publisher,
                    mailbox: Arc::clone(&mailbox),
                    metrics: Arc::clone(&metrics),
                    shared: Arc::clone(&self.shared),
                };
                tokio::spawn(subscriber.run(cancel.clone()))
            });
            registered.active = Some(Active {
                mailbox,
                metrics,
                publisher,
                cancel,
                subscriber,
            });
        }
        self.registered.insert(id, registered);
    }

    async fn close(&mut self, id: EndpointId) {
        let Some(registered) = self.registered.remove(&id) else {
            return;
        };
        if let Some(active) = registered.active {
            active.cancel.cancel();
            active.mailbox.close();
            if let Some(task) = active.subscriber {
                let _ = task.await;
            }
            let worker = &self.workers[id.index() % self.workers.len()];
            let _ = worker.control.send(Control::Close(id)).await;
            self.shared.metrics.unregister(id);
        }
        self.shared.states.set(id, EventsState::Absent);
    }
}
