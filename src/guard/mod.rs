//! Guards against hostile input and careless settings (issue 21): the ranges every numeric setting must keep so the
//! arithmetic behind it (Rust `Duration`s, PostgreSQL intervals) cannot fail, actions whose settings row the acquire
//! statement cannot use, and failed logins. Each check names the field it refuses.

pub mod faults;
pub mod settings;
