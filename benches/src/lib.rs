//! Shared workload builders for kvpick's benchmarks.
#![forbid(unsafe_code)]

pub mod index_workload;
