//! Orderly shutdown, in the order that loses nothing in flight:
//!
//! 1. health goes NOT_SERVING (the gateway stops sending new streams here);
//! 2. the ext_proc server stops accepting and its open streams drain, for up to the grace period
//!    (then they are cut);
//! 3. KV-event ingestion stops and is joined (the streams that drained could still read the
//!    index until then);
//! 4. tokenization refuses new work and its running encodes finish;
//! 5. everything else (discovery, scraping, health, the metrics listener) stops and is joined.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::health::Health;
use crate::kv_events::KvEvents;
use crate::tokenizer::Tokenizer;

/// Tasks that end with a result.
pub(super) type Tasks = JoinSet<Result<(), Error>>;

/// Everything `run` started, ready to be stopped.
pub(super) struct Running {
    pub health: Health,
    pub serving: CancellationToken,
    pub servers: Tasks,
    pub kv_events: Option<KvEvents>,
    pub kv_events_stop: CancellationToken,
    pub tokenizer: Option<Tokenizer>,
    pub background: CancellationToken,
    pub tasks: Tasks,
    pub grace: Duration,
}

impl Running {
    /// Stops everything in order; returns the errors tasks ended with.
    pub async fn stop(self) -> Vec<Error> {
        let mut errors = Vec::new();
        self.health.shutting_down().await;
        self.serving.cancel();
        drain(self.servers, self.grace, "ext_proc streams", &mut errors).await;
        self.kv_events_stop.cancel();
        if let Some(kv) = self.kv_events
            && tokio::time::timeout(self.grace, kv.join()).await.is_err()
        {
            tracing::warn!("KV-event ingestion did not stop within the grace period");
        }
        if let Some(t) = self.tokenizer
            && tokio::time::timeout(self.grace, t.tokenization().shutdown())
                .await
                .is_err()
        {
            tracing::warn!("tokenization still running after the grace period");
        }
        self.background.cancel();
        drain(self.tasks, self.grace, "background tasks", &mut errors).await;
        errors
    }
}

/// Joins `tasks` for up to `grace`, then aborts and joins what is left.
async fn drain(mut tasks: Tasks, grace: Duration, what: &str, errors: &mut Vec<Error>) {
    let drained = tokio::time::timeout(grace, async {
        while let Some(done) = tasks.join_next().await {
            if let Err(e) = flatten(done) {
                errors.push(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            ?grace,
            what,
            "still running after the grace period; cutting them"
        );
        tasks.shutdown().await;
    }
}

pub(super) fn flatten(
    done: Result<Result<(), Error>, tokio::task::JoinError>,
) -> Result<(), Error> {
    match done {
        Ok(r) => r,
        Err(e) => Err(Error::Task(e.to_string())),
    }
}

pub(super) async fn ok(task: impl Future<Output = ()>) -> Result<(), Error> {
    task.await;
    Ok(())
}
