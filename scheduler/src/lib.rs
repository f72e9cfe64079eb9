//! kvpick's scheduling core.
//!
//! Pure: it takes values (tokens, decoded KV events, pod snapshots, `now`) and returns decisions.
//! No sockets, no async runtime, no clock. The endpoint picker and the simulator both run it
//! unchanged, which is what keeps the simulator honest.
//!
//! - [`keys`]: chained block keys over token ids, the address both events and requests meet at.
//! - [`events`]: vLLM's KV-event model and its msgpack wire codec.
//! - [`index`]: which endpoint holds which block, and per-candidate prefix lookup.
//! - [`pods`]: endpoint identity and scraped signals.
//! - [`inflight`]: what was sent to each endpoint and not yet finished (reserve on pick).
//! - [`latency`]: predicted TTFT/TPOT per candidate from in-flight load and the engine profile.
//! - [`profile`]: engine profiles (vLLM limits, step-time coefficients), shared with the simulator.
//! - [`pipeline`]: the [`Scheduler`] and its `pick`, from a request and its candidates to a ranked
//!   decision.
//! - [`request`], [`decision`]: what `pick` takes and returns.
//! - [`disagg`]: prefill/decode disaggregation (llm-d's P/D profile handler and deciders).
//! - [`filters`], [`scorers`], [`pickers`]: the plugins of the pipeline.
//! - [`saturation`]: whether the pool has room, for shedding sheddable requests.
//! - [`flow`]: the flow-control queue (priority bands, fair turns between flows) and its pacing.
//! - [`config`]: the picker config (llm-d's `EndpointPickerConfig` shape).
//! - [`time`]: time as a value; [`duration`]: kvpick's one duration syntax.
//! - [`error`]: the crate's one error type.
#![forbid(unsafe_code)]

pub mod config;
pub mod decision;
pub mod disagg;
pub mod duration;
pub mod error;
pub mod events;
pub mod filters;
pub mod flow;
pub mod index;
pub mod inflight;
pub mod keys;
pub mod latency;
pub mod lru;
pub mod pickers;
pub mod pipeline;
pub mod pods;
pub mod prehashed;
pub mod profile;
pub mod request;
pub mod saturation;
pub mod scorers;
pub mod slo;
pub mod splitmix;
pub mod time;

pub use config::EndpointPickerConfig;
pub use decision::{Decision, Ranked};
pub use error::Error;
pub use events::{EventBatch, KvEvent};
pub use flow::{FlowConfig, FlowGate, FlowId, FlowQueue, Pacer};
pub use index::{IndexConfig, KvIndex, PrefixMatches};
pub use inflight::{Cost, EndpointLoad, InFlight, ReservationId};
pub use keys::{BlockKey, BlockSize, Partition};
pub use latency::{LatencyModel, Prediction};
pub use pipeline::Scheduler;
pub use pods::{Endpoint, EndpointId, EndpointSet, PodSignals};
pub use profile::EngineProfile;
pub use request::{Candidate, EventsState, Prompt, Request, Slo};
pub use saturation::{PoolSaturation, SaturationConfig};
pub use slo::{SloAction, SloMiss, SloVerdict};
pub use time::Timestamp;
