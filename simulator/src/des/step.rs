//! Engine steps and what each one sends out: the requests that got their first token or finished
//! (to the pickers' in-flight accounting), prefill runs whose KV now moves ([`super::pd`]), and the
//! step's KV-event batches, on their way to every index view with its delivery latency.

use kvpick_scheduler::events::EventBatch;

use super::{Event, Loop};
use crate::clock::SimTime;

impl Loop<'_> {
    /// Engine `e` starts its next step, if it has work.
    pub(super) fn start_step(&mut self, e: usize, now: SimTime) {
        match self.engines[e].start_step(now, &mut self.rec) {
            Some(us) => {
                self.busy[e] = true;
                self.push(now.plus_micros(us), Event::StepDone(e as u32));
            }
            None => self.busy[e] = false,
        }
    }

    /// Engine `e`'s step ended at `now`.
    pub(super) fn step_done(&mut self, e: usize, now: SimTime) {
        self.engines[e].finish_step(now, &mut self.rec);
        self.transfer_prefilled();
        for (req, finished, at) in std::mem::take(&mut self.rec.lifecycle) {
            if finished {
                self.pickers.release(req.0 as usize, at);
            } else {
                self.pickers.first_token(req.0 as usize, at);
            }
        }
        if self.cfg.check_invariants && self.violation.is_none() {
            self.violation = self.engines[e]
                .check_invariants()
                .err()
                .map(|v| format!("engine {e} at {now:?}: {v}"));
        }
        let outbox = std::mem::take(&mut self.rec.outbox);
        if self.pickers.wants_events() {
            let views = self.cfg.replicas.index_views();
            for batch in outbox {
                for view in 1..views {
                    self.send_events(view, e, batch.clone(), now);
                }
                self.send_events(0, e, batch, now);
            }
        }
        self.start_step(e, now);
    }

    /// Engine `e`'s event batch, on its way to index view `view`.
    fn send_events(&mut self, view: usize, e: usize, batch: EventBatch, now: SimTime) {
        let latency = (self.cfg.replicas).event_latency_us(self.cfg.kv_event_latency_us, view);
        if latency == 0 {
            self.pickers.apply_events(view, e, &batch);
            self.event_batches += 1;
        } else {
            self.inflight[view * self.cfg.engines + e].push_back(batch);
            self.pending_deliveries += 1;
            self.push(
                now.plus_micros(latency),
                Event::Deliver {
                    engine: e as u32,
                    view: view as u32,
                },
            );
        }
    }

    /// The oldest batch engine `e` sent to index view `view` arrives.
    pub(super) fn deliver(&mut self, e: usize, view: usize) {
        let channel = view * self.cfg.engines + e;
        if let Some(batch) = self.inflight[channel].pop_front() {
            self.pickers.apply_events(view, e, &batch);
            self.event_batches += 1;
            self.pending_deliveries -= 1;
        }
    }
}
