//! Benchmark commands (`sqs-scheduler bench ...`): run them on a release build; they print their figures.

pub mod store;
