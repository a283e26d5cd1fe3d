//! sqs-scheduler: a distributed task scheduler. Postgres holds every task's state; queues (Amazon SQS, or an
//! in-process transport) carry submissions, work and results as JSON-RPC 2.0. See docs/ARCHITECTURE.md.

pub mod bench;
pub mod cli;
pub mod configuration;
pub mod db;
pub mod schema;
pub mod store;
pub mod telemetry;
