//! kvpick-epp's library: everything `main.rs` wires together.
#![forbid(unsafe_code)]

pub mod error;
pub mod kv_events;

pub use error::Error;
