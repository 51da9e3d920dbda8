//! `loadtest`: drives the producer's JSON API and reports rates, HTTP latency
//! and end-to-end latency with completion accounting. The binary is a thin
//! CLI over [`run::run`]; the benchmark calls it as a library.

pub mod run;
pub mod stats;
