//! Prefill/decode disaggregation in the loop. A request the router disaggregates runs first as a
//! prefill-only request (one output token, [`prefill_run`]'s id) on its prefill engine; when that
//! finishes, its KV travels to the decode engine ([`crate::transfer`]), which then takes the
//! request with its whole prompt counted as transferred and decodes it. Its record keeps the
//! prefill engine's cache hit; its TTFT is the decode engine's first token, transfer included.

use super::{Event, Loop};
use crate::clock::SimTime;
use crate::engine::{EngineRequest, RequestId};
use crate::error::SimError;
use crate::metrics::prefill_run;
use crate::transfer::KvTransfer;

/// How a pool is split into prefill and decode engines, and what moving KV between them costs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PdSetup {
    /// The first this many engines are prefill engines (`llm-d.ai/role: prefill`), the rest
    /// decode engines; 0 labels none (an aggregated pool).
    pub prefill_engines: usize,
    /// How long a prompt's KV takes from its prefill engine to its decode engine.
    pub transfer: KvTransfer,
}

impl PdSetup {
    /// Checks the transfer model, and that a split pool of `engines` keeps a decode engine.
    pub fn validate(&self, engines: usize) -> Result<(), SimError> {
        self.transfer.validate()?;
        if self.prefill_engines > 0 && self.prefill_engines >= engines {
            return Err(SimError::InvalidConfig(format!(
                "--prefill-engines {} must leave at least one of the {engines} engines to decode",
                self.prefill_engines
            )));
        }
        Ok(())
    }
}

/// Disaggregated requests between their prefill and their decode.
#[derive(Debug, Default)]
pub(super) struct PdState {
    /// Each request's decode engine while its prefill runs or its KV moves ([`NO_DECODE`]
    /// otherwise), by trace index.
    decode_of: Vec<u32>,
    /// Transfers under way.
    transfers: usize,
}

/// Marks a request with no pending decode.
const NO_DECODE: u32 = u32::MAX;

impl PdState {
    /// Whether a transfer is still to land.
    pub(super) fn busy(&self) -> bool {
        self.transfers > 0
    }
}

impl Loop<'_> {
    /// Sends request `i`'s prefill-only run (prompt in `self.tokens`) to engine `prefill`, to be
    /// decoded on `decode` once its KV has moved.
    pub(super) fn start_prefill(&mut self, i: usize, prefill: usize, decode: usize, now: SimTime) {
        let req = &self.trace.requests[i];
        let run = EngineRequest {
            id: prefill_run(i),
            prompt: std::mem::take(&mut self.tokens),
            output_tokens: 1,
            output_id: req.output_id,
            lora: req.lora.clone(),
            transferred: 0,
        };
        self.rec.records[i].prefill_engine = Some(prefill as u32);
        if self.engines[prefill].add_request(run).is_err() {
            self.rec.records[i].unfit = true;
            self.pickers.release(i, now);
            return;
        }
        let pd = &mut self.pd;
        if pd.decode_of.len() <= i {
            pd.decode_of.resize(i + 1, NO_DECODE);
        }
        pd.decode_of[i] = decode as u32;
        if !self.busy[prefill] {
            self.start_step(prefill, now);
        }
    }

    /// Schedules the KV transfer of every prefill run the last step finished.
    pub(super) fn transfer_prefilled(&mut self) {
        for (i, at) in std::mem::take(&mut self.rec.prefilled) {
            let tokens = self.trace.requests[i].input_tokens();
            let us = (self.cfg.pd.transfer).time_us(tokens, self.cfg.profile.block_size);
            self.pd.transfers += 1;
            self.push(at.plus_micros(us), Event::Transferred(i as u32));
        }
    }

    /// Request `i`'s KV reached its decode engine: the engine takes it.
    pub(super) fn transferred(&mut self, i: usize, now: SimTime) {
        self.pd.transfers -= 1;
        let slot = self.pd.decode_of.get_mut(i);
        let decode = slot.map_or(NO_DECODE, |d| std::mem::replace(d, NO_DECODE));
        if decode == NO_DECODE {
            self.violation
                .get_or_insert_with(|| format!("request {i}: KV moved with no decode engine"));
            return;
        }
        let decode = decode as usize;
        let req = &self.trace.requests[i];
        req.prompt.materialize(&mut self.tokens);
        let prompt = std::mem::take(&mut self.tokens);
        let run = EngineRequest {
            id: RequestId(i as u32),
            transferred: prompt.len() as u32,
            prompt,
            output_tokens: req.output_tokens,
            output_id: req.output_id,
            lora: req.lora.clone(),
        };
        if self.engines[decode].add_request(run).is_err() {
            self.rec.records[i].unfit = true;
            self.pickers.release(i, now);
            return;
        }
        if !self.busy[decode] {
            self.start_step(decode, now);
        }
    }
}
