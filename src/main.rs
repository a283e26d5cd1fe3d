//! The `sqs-scheduler` command: see `sqs-scheduler --help`.

use std::process::ExitCode;

fn main() -> ExitCode {
    sqs_scheduler::tools::cli::main()
}
