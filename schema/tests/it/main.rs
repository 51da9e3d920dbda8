//! Integration tests of the storage layer: one contract suite for both backends,
//! plus the T-SQL parser check of every SQL Server migration.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking; its helpers unwrap like its tests")]

mod contract;
mod incidents;
mod tsql;
