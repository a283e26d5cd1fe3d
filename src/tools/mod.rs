//! Operator tools built on the library, outside its core: the command line (`cli`), the load generator (`load`)
//! and the benchmarks (`bench`).

pub mod bench;
pub mod cli;
pub mod load;
