//! What the pickers and the timeline see of the engines between steps: each replica's periodic
//! scrape of engine signals (or an instant one when scrapes are always fresh), the replicas'
//! shared in-flight rounds, and the timeline's samples. The periodic events reschedule themselves
//! only while the run still has work, so that they do not keep an idle loop going.

use super::{Event, Loop};
use crate::clock::SimTime;
use crate::engine::Engine;
use crate::metrics::Sample;

impl Loop<'_> {
    /// Replica `r`'s signals as of now when scrapes are instant (`metrics_interval_us` 0).
    pub(super) fn refresh_signals(&mut self, r: usize, now: SimTime) {
        if self.cfg.metrics_interval_us == 0 {
            self.scrape(r, now);
        }
    }

    /// Replica `r`'s scrape: every engine's signals as of `now`, folded into its in-flight
    /// accounting.
    fn scrape(&mut self, r: usize, now: SimTime) {
        let replica = self.pickers.get_mut(r);
        for (i, (s, e)) in replica.signals.iter_mut().zip(&self.engines).enumerate() {
            *s = e.signals(now);
            replica.router.observe_signals(i, s);
        }
    }

    /// Replica `r`'s periodic scrape; the next one follows while the run has work
    /// (`next_arrival` is the trace index of the next arrival).
    pub(super) fn scrape_round(&mut self, r: u32, now: SimTime, next_arrival: usize) {
        self.scrape(r as usize, now);
        if self.active(next_arrival) {
            self.push(
                now.plus_micros(self.cfg.metrics_interval_us),
                Event::Scrape(r),
            );
        }
    }

    /// Replica `r` publishes its in-flight load and counts the others'; again while the run
    /// has work.
    pub(super) fn share_round(&mut self, r: u32, now: SimTime, next_arrival: usize) {
        self.pickers.share(r as usize, now);
        if let (Some(share), true) = (self.cfg.replicas.share, self.active(next_arrival)) {
            self.push(now.plus_micros(share.interval_us), Event::Share(r));
        }
    }

    /// One timeline sample (queues, batches, KV usage, the window's admitted and cached tokens);
    /// the next one follows while the run has work.
    pub(super) fn sample(&mut self, now: SimTime, next_arrival: usize) {
        let (input, cached) = (self.rec.window_input, self.rec.window_cached);
        self.rec.window_input = 0;
        self.rec.window_cached = 0;
        self.timeline.push(Sample {
            t: now,
            waiting: self.engines.iter().map(|e| e.waiting() as u32).collect(),
            running: self.engines.iter().map(|e| e.running() as u32).collect(),
            kv_usage: self.engines.iter().map(Engine::kv_usage).collect(),
            admitted_tokens: input,
            cached_tokens: cached,
        });
        if self.active(next_arrival) {
            self.push(now.plus_micros(self.cfg.sample_interval_us), Event::Sample);
        }
    }
}
