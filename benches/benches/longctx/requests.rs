//! The open-loop load of one form: each request decided over its own ext_proc stream, served by
//! the chosen pod (which caches the ids and publishes their blocks), then its response phase.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use kvpick_benches::extproc_client::{self, Client};
use kvpick_fleet::Fleet;
use kvpick_fleet::servers::driver::{Command, End, Progress, Submission};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::epp::Epp;
use crate::report::{Snapshot, snapshot};
use crate::workload::{Question, Workload};
use crate::{Form, MAX_TOKENS, Shape};

/// What one request came to.
#[derive(Debug)]
pub struct Outcome {
    /// When it was sent.
    pub issued: Instant,
    /// Last body byte → decision, as the client saw it.
    pub latency: Duration,
    /// The pod chosen.
    pub pod: usize,
    /// Prompt tokens the pod found cached.
    pub cached: u32,
}

/// One request: the decision, the chosen pod serving the ids, then the response phase.
async fn one(
    mut client: Client,
    fleet: &Fleet,
    pods: &HashMap<String, usize>,
    q: &Question,
    text: bool,
    output_id: u64,
) -> anyhow::Result<Outcome> {
    let issued = Instant::now();
    let (path, body) = if text {
        ("/v1/chat/completions", &q.chat)
    } else {
        ("/v1/completions", &q.tokens)
    };
    let decided = extproc_client::decide(&mut client, path, body, 65_536).await?;
    let pod = *(pods.get(&decided.destination))
        .with_context(|| format!("routed to {}, not a pod", decided.destination))?;
    let (progress, mut rx) = watch::channel(Progress::default());
    fleet.servers()[pod]
        .command(Command::Submit(Submission {
            prompt: q.ids.clone(),
            max_tokens: MAX_TOKENS,
            output_id,
            lora: None,
            transferred: 0,
            progress,
        }))
        .await?;
    let mut cached = None;
    loop {
        {
            let p = rx.borrow_and_update();
            cached = cached.or(p.cached_tokens);
            if let Some(end) = p.end {
                anyhow::ensure!(end == End::Finished, "the pod ended it: {end:?}");
                break;
            }
        }
        rx.changed().await.context("the pod dropped the request")?;
    }
    let usage = format!(
        r#"{{"usage":{{"prompt_tokens":{},"completion_tokens":{MAX_TOKENS}}}}}"#,
        q.ids.len()
    );
    let latency = decided.latency;
    decided.finish(usage.as_bytes()).await?;
    Ok(Outcome {
        issued,
        latency,
        pod,
        cached: cached.unwrap_or(0),
    })
}

/// What every request task shares.
pub struct Ctx {
    /// The simulated pods.
    pub fleet: Fleet,
    /// Pod index by address (the decision's destination).
    pub pods: HashMap<String, usize>,
    /// ext_proc connections, used round robin.
    pub clients: Vec<Client>,
    /// The requests.
    pub work: Workload,
}

/// Runs one form open loop: `warmup` s, then a measured window of `duration` s; waits for every
/// request. Returns the outcomes and the window's two snapshots.
pub async fn run_form(
    shape: &Shape,
    form: Form,
    ctx: &Arc<Ctx>,
    epp: &Epp,
    seq: &mut u64,
) -> anyhow::Result<(Vec<anyhow::Result<Outcome>>, Snapshot, Snapshot)> {
    let start = Instant::now();
    let window_start = start + Duration::from_secs_f64(shape.warmup);
    let end = window_start + Duration::from_secs_f64(shape.duration);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / shape.rate));
    let mut tasks = tokio::task::JoinSet::new();
    let mut before = None;
    let mut i = 0usize;
    loop {
        let now = tick.tick().await;
        if before.is_none() && now >= window_start {
            before = Some(snapshot(epp).await?);
        }
        if now >= end {
            break;
        }
        let text = match form {
            Form::Text => true,
            Form::Tokens => false,
            Form::Mixed => i.is_multiple_of(2),
        };
        let (ctx, n, id) = (ctx.clone(), i, *seq);
        *seq += 1;
        i += 1;
        tasks.spawn(async move {
            let q = &ctx.work.questions[n % ctx.work.questions.len()];
            let client = ctx.clients[n % ctx.clients.len()].clone();
            let call = one(client, &ctx.fleet, &ctx.pods, q, text, id);
            tokio::time::timeout(Duration::from_secs(300), call)
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer in 300 s")))
        });
    }
    let after = snapshot(epp).await?;
    let before = before.context("the window never started")?;
    let mut outcomes = Vec::new();
    while let Some(r) = tasks.join_next().await {
        outcomes.push(r?);
    }
    Ok((outcomes, before, after))
}
