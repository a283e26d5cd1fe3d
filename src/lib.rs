//! sqs-scheduler: a distributed task scheduler. Postgres holds every task's state; queues (Amazon SQS,
//! RabbitMQ, or an in-process transport) carry submissions, work and results as JSON-RPC 2.0. See docs/ARCHITECTURE.md.

pub mod actors;
pub mod chaos;
pub mod configuration;
pub mod db;
pub mod domain;
pub mod group_commit;
pub mod guard;
pub mod handlers;
pub mod http;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod protocol;
pub mod schedules;
pub mod schema;
pub mod secret;
pub mod startup;
pub mod store;
pub mod submit;
pub mod supervision;
pub mod telemetry;
pub mod tools;
pub mod transport;
pub mod workflow;
