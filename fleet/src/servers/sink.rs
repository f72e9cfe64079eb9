//! Where one engine step's reports go: each request's progress to its waiting response, counters
//! and gauges to the engine's [`EngineStats`], KV-event batches to the publisher's bounded queue
//! (dropped and counted when it is full, so the engine never waits on a subscriber).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use kvpick_scheduler::KvEvent;
use kvpick_scheduler::events::EventBatch;
use tokio::sync::{mpsc, watch};

use super::driver::{End, Progress};
use super::kv_publisher::PubCommand;
use super::stats::EngineStats;
use kvpick_sim::SimTime;
use kvpick_sim::engine::{EngineSink, RequestId};

/// A request the engine holds, as the driver tracks it.
pub(super) struct Live {
    pub(super) progress: watch::Sender<Progress>,
    pub(super) prompt_len: u32,
    pub(super) lora: Option<Arc<str>>,
    pub(super) arrival: SimTime,
    /// When first scheduled (vLLM's prefill time runs from here to the first token).
    pub(super) scheduled: SimTime,
    pub(super) generated: u32,
    pub(super) running: bool,
    /// Prompt tokens whose KV arrived from a prefill pod.
    pub(super) transferred: u32,
}

/// Unix time now, for event batches and the LoRA gauge.
pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Routes one step's reports to responses, counters and the publisher.
pub(super) struct Sink<'a> {
    pub(super) live: &'a mut HashMap<RequestId, Live>,
    pub(super) stats: &'a mut EngineStats,
    pub(super) events: &'a mpsc::Sender<PubCommand>,
    pub(super) dp_rank: Option<u32>,
    /// A `/reset_prefix_cache` not yet published: vLLM queues `AllBlocksCleared` with the cache's
    /// other events and publishes it at the head of its next step's batch.
    pub(super) cleared: &'a mut bool,
}

type LoraCounts = BTreeMap<String, u32>;

fn drop_lora(from: &mut LoraCounts, name: &str) {
    if let Some(n) = from.get_mut(name) {
        *n -= 1;
        if *n == 0 {
            from.remove(name);
        }
    }
}

fn move_lora(from: &mut LoraCounts, to: &mut LoraCounts, name: &str) {
    drop_lora(from, name);
    *to.entry(name.to_owned()).or_default() += 1;
}

impl EngineSink for Sink<'_> {
    fn admitted(&mut self, req: RequestId, cached_tokens: u32, now: SimTime) {
        let Some(l) = self.live.get_mut(&req) else {
            return;
        };
        self.stats.prefix_queries += l.prompt_len as u64;
        self.stats.prefix_hits += cached_tokens as u64;
        // As the engine admits: what it holds, then what arrived (all but the last token), the
        // rest computed here.
        let external = l
            .transferred
            .min(l.prompt_len.saturating_sub(1))
            .saturating_sub(cached_tokens);
        let by_source = &mut self.stats.prompt_tokens_by_source;
        by_source.local_cache_hit += u64::from(cached_tokens);
        by_source.external_kv_transfer += u64::from(external);
        by_source.local_compute += u64::from(l.prompt_len.saturating_sub(cached_tokens + external));
        self.stats.queue.observe(now.secs_since(l.arrival));
        l.scheduled = now;
        l.running = true;
        if let Some(name) = &l.lora {
            move_lora(
                &mut self.stats.lora_waiting,
                &mut self.stats.lora_running,
                name,
            );
            self.stats.lora_updated = unix_now();
        }
        l.progress
            .send_modify(|p| p.cached_tokens = Some(cached_tokens));
    }

    fn first_token(&mut self, req: RequestId, now: SimTime) {
        let Some(l) = self.live.get_mut(&req) else {
            return;
        };
        self.stats.ttft.observe(now.secs_since(l.arrival));
        self.stats.prefill.observe(now.secs_since(l.scheduled));
        self.stats.prompt_tokens += l.prompt_len as u64;
        self.stats.generation_tokens += 1;
        l.generated = 1;
        l.progress.send_modify(|p| p.generated = 1);
    }

    fn token(&mut self, req: RequestId, gap_us: u64) {
        let Some(l) = self.live.get_mut(&req) else {
            return;
        };
        self.stats.itl.observe(gap_us as f64 / 1e6);
        self.stats.generation_tokens += 1;
        l.generated += 1;
        let n = l.generated;
        l.progress.send_modify(|p| p.generated = n);
    }

    fn finished(&mut self, req: RequestId, now: SimTime) {
        let Some(l) = self.live.remove(&req) else {
            return;
        };
        self.stats.e2e.observe(now.secs_since(l.arrival));
        self.stats.finished_length += 1;
        self.stats
            .request_prompt_tokens
            .observe(l.prompt_len as f64);
        self.stats
            .request_generation_tokens
            .observe(l.generated as f64);
        if let Some(name) = &l.lora {
            let map = if l.running {
                &mut self.stats.lora_running
            } else {
                &mut self.stats.lora_waiting
            };
            drop_lora(map, name);
            self.stats.lora_updated = unix_now();
        }
        l.progress.send_modify(|p| p.end = Some(End::Finished));
    }

    fn preempted(&mut self, req: RequestId) {
        self.stats.preemptions += 1;
        let Some(l) = self.live.get_mut(&req) else {
            return;
        };
        l.running = false;
        if let Some(name) = &l.lora {
            move_lora(
                &mut self.stats.lora_running,
                &mut self.stats.lora_waiting,
                name,
            );
        }
    }

    fn kv_events(&mut self, mut batch: EventBatch) {
        if std::mem::take(self.cleared) {
            batch.events.insert(0, KvEvent::AllBlocksCleared);
        }
        batch.ts = unix_now();
        batch.data_parallel_rank = self.dp_rank;
        if self.events.try_send(PubCommand::Batch(batch)).is_err() {
            self.stats.kv_batches_dropped += 1;
        }
    }
}
