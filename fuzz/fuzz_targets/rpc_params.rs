//! The JSON-RPC layer of `POST /rpc` before any store call: the raw ids, the envelope, the params of a submit and
//! the limits of a batch. Errors, never a panic; an id always comes back byte-exact.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sqs_scheduler::http::rpc_id::fuzz_one(data);
});
