//! Shared workload builders for kvpick's benchmarks.
#![forbid(unsafe_code)]

pub mod index_workload;
pub mod probe;
pub mod proc_stats;
