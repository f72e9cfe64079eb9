//! Shared workload builders for kvpick's benchmarks.
#![forbid(unsafe_code)]

pub mod extproc_client;
pub mod index_workload;
pub mod probe;
pub mod proc_stats;
pub mod prose;
