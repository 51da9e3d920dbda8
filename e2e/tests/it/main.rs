//! End-to-end tests: the three services against a real ActiveMQ and real SQLite files.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking; its helpers unwrap like its tests")]

mod bad_input;
mod broker_stats;
mod browser;
mod charts;
mod consumer;
mod hang_ups;
mod hostile;
mod http_limits;
mod incidents;
mod load_test;
mod openapi;
mod pipeline;
mod process;
mod prometheus;
mod relay;
mod sql_server;
mod traces;
