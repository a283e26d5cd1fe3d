//! Configuration: the example file stays in sync with the defaults; bad values give a clear error and exit 2.

use sqs_scheduler::configuration::Settings;
use std::process::Command;

#[test]
fn the_example_file_loads_and_equals_the_defaults() {
    let s = Settings::from_file(std::path::Path::new("scheduler.example.toml")).expect("example loads");
    assert_eq!(s, Settings::default(), "scheduler.example.toml must list every default");
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"));
    c.env_remove("SCHEDULER_CONFIG");
    for (k, _) in std::env::vars() {
        if k.starts_with("SCHEDULER_") {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn an_invalid_value_names_the_key_and_exits_2() {
    let out = bin().arg("config").env("SCHEDULER_RETRY__JITTER", "3").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("retry.jitter"), "{err}");

    let out = bin().arg("config").env("SCHEDULER_WORKER__CONCURRENCY", "many").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("worker.concurrency") || err.contains("concurrency"), "{err}");

    let out = bin().arg("config").env("SCHEDULER_WORKER__BOGUS", "1").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "unknown keys are refused");

    let out = bin().args(["--config", "/nonexistent.toml", "config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_prints_the_effective_settings_with_secrets_redacted() {
    let out = bin()
        .arg("config")
        .env("SCHEDULER_DATABASE__URL", "postgres://app:hunter2@db:5432/scheduler")
        .env("SCHEDULER_SQS__SECRET_ACCESS_KEY", "topsecret")
        .env("SCHEDULER_HTTP__API_TOKENS", "tok1,tok2")
        .env("SCHEDULER_WORKER__CONCURRENCY", "7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("concurrency = 7"), "{text}");
    for secret in ["hunter2", "topsecret", "tok1", "tok2"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(text.contains("[redacted]"));
}

#[test]
fn toml_file_overrides_defaults_and_env_overrides_the_file() {
    let dir = std::env::temp_dir().join(format!("sched-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.toml");
    std::fs::write(&path, "[worker]\nconcurrency = 5\npollers = 3\n").unwrap();
    let out = bin().arg("--config").arg(&path).arg("config").env("SCHEDULER_WORKER__POLLERS", "4").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("concurrency = 5") && text.contains("pollers = 4"), "{text}");
}

#[test]
fn help_reads_well() {
    let out = bin().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["run", "migrate", "config", "load", "bench"] {
        assert!(text.contains(cmd), "{text}");
    }
}
