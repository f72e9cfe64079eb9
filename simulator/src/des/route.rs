//! A request from its arrival to an engine: the gateway hands it to a picker replica, whose
//! admission routes, refuses, sheds or queues it (flow control); the replica's picker then chooses
//! the engine (or, under SLOs, sheds it or lets it wait) and the engine takes the request, or its
//! prefill-only run when the picker disaggregates it ([`super::pd`]).

use super::{Event, Loop};
use crate::admission::{self, Verdict};
use crate::clock::SimTime;
use crate::engine::{EngineRequest, RequestId};
use crate::error::SimError;
use crate::policy::{Ask, Picked};

impl Loop<'_> {
    /// Request `i` arrives at the gateway.
    pub(super) fn arrive(&mut self, i: usize, now: SimTime) -> Result<(), SimError> {
        let r = self.pickers.assign(i);
        self.refresh_signals(r, now);
        let priority = self.trace.requests[i].objective.priority;
        let replica = self.pickers.get_mut(r);
        let verdict = match &mut replica.admission {
            None => Verdict::Route,
            Some(a) => a.arrive(i, priority, &replica.signals, now),
        };
        match verdict {
            Verdict::Route => self.route(i, r, now),
            Verdict::Rejected => {
                self.rec.records[i].rejected = true;
                Ok(())
            }
            Verdict::Shed => {
                self.rec.records[i].shed = Some(admission::POOL_SATURATED);
                Ok(())
            }
            Verdict::Queued => {
                self.dispatch_at(r, now);
                Ok(())
            }
        }
    }

    /// Makes sure replica `r` has a dispatch round at `at` or earlier.
    fn dispatch_at(&mut self, r: usize, at: SimTime) {
        if !std::mem::replace(&mut self.pickers.get_mut(r).dispatching, true) {
            self.push(at, Event::Dispatch(r as u32));
        }
    }

    /// Replica `r`'s flow-control round: refuse what expired, route what the pool has room for.
    pub(super) fn dispatch(&mut self, r: usize, now: SimTime) -> Result<(), SimError> {
        self.refresh_signals(r, now);
        let replica = self.pickers.get_mut(r);
        let Some(a) = &mut replica.admission else {
            return Ok(());
        };
        let released = a.release(&replica.signals, now);
        for i in released.expired {
            self.rec.records[i].rejected = true;
        }
        for i in released.route {
            self.route(i, r, now)?;
        }
        let replica = self.pickers.get_mut(r);
        replica.dispatching = false;
        if replica.admission.as_ref().is_some_and(|a| !a.is_empty()) {
            self.dispatch_at(r, now.plus_micros(admission::DISPATCH_TICK_US));
        }
        Ok(())
    }

    /// Replica `r` picks request `i`'s engine and hands it over; or, when no engine is predicted
    /// to meet its objectives, sheds it or lets it wait for one, as the picker does.
    fn route(&mut self, i: usize, r: usize, now: SimTime) -> Result<(), SimError> {
        let trace = self.trace;
        let req = &trace.requests[i];
        req.prompt.materialize(&mut self.tokens);
        let mut may_wait = (self.pickers.get_mut(r).admission.as_ref())
            .is_some_and(|a| a.may_wait_for_objective(i, now));
        let routed = loop {
            let ask = Ask {
                request: i,
                tokens: &self.tokens,
                lora: req.lora.as_deref(),
                session: req.session.as_deref(),
                output: req.output_tokens,
                objective: req.objective,
            };
            let replica = self.pickers.get_mut(r);
            match replica.router.pick(&ask, may_wait, &replica.signals, now)? {
                Picked::Routed(routed) => break routed,
                Picked::Shed(miss) => {
                    self.rec.records[i].shed = Some(miss.reason());
                    if let Some(a) = &mut replica.admission {
                        a.done(i);
                    }
                    return Ok(());
                }
                Picked::Queue(_) => {
                    let priority = req.objective.priority;
                    if (replica.admission.as_mut())
                        .is_some_and(|a| a.wait_for_objective(i, priority, now))
                    {
                        self.dispatch_at(r, now.plus_micros(admission::DISPATCH_TICK_US));
                        return Ok(());
                    }
                    // No place to wait: best-effort now.
                    may_wait = false;
                }
            }
        };
        if let Some(a) = &mut self.pickers.get_mut(r).admission {
            a.done(i);
        }
        let e = routed.engine;
        self.rec.records[i].engine = e as u32;
        self.rec.records[i].routed = Some(now);
        self.rec.records[i].predicted_ttft_us = routed.predicted_ttft_us;
        self.rec.records[i].slo_best_effort = routed.slo_unattainable;
        if let Some(p) = routed.prefill {
            self.start_prefill(i, p, e, now);
            return Ok(());
        }
        let engine_req = EngineRequest {
            id: RequestId(i as u32),
            prompt: std::mem::take(&mut self.tokens),
            output_tokens: req.output_tokens,
            output_id: req.output_id,
            lora: req.lora.clone(),
            transferred: 0,
        };
        if self.engines[e].add_request(engine_req).is_err() {
            self.rec.records[i].unfit = true;
            self.pickers.release(i, now);
            return Ok(());
        }
        if !self.busy[e] {
            self.start_step(e, now);
        }
        Ok(())
    }
}
