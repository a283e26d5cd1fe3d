//! Benchmark commands (`sqs-scheduler bench ...`): run them on a release build; they print their figures.

pub mod http;
pub mod pipeline;
pub mod store;
