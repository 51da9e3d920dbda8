//! Integration tests of the storage layer: one contract suite for both backends,
//! plus the T-SQL parser check of every SQL Server statement.

mod contract;
mod incidents;
mod tsql;
