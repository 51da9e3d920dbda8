//! End-to-end tests: the three services against a real ActiveMQ and real SQLite files.

mod bad_input;
mod broker_stats;
mod browser;
mod charts;
mod consumer;
mod hostile;
mod incidents;
mod load_test;
mod openapi;
mod pipeline;
mod process;
mod prometheus;
mod relay;
mod traces;
