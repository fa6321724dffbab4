//! Benchmarks for holdwire (see the benchmarks issue).
#![forbid(unsafe_code)]
