//! Configuration: the example file stays in sync with the defaults; bad values give a clear error and exit 2.

use sqs_scheduler::configuration::Settings;
use std::process::Command;

/// `scheduler.example.toml` read on its own (no defaults under it), compared key by key with `Settings::default()`:
/// every key is present with the default value and there is no other key. A setting whose default is unset
/// (`None`) must not be set in the file, but must be shown there commented out (`# key = ...`). Generic over
/// whatever `Settings` contains, so a new section or key fails this test until the example file lists it.
#[test]
fn the_example_file_lists_every_default_and_nothing_else() {
    let text = std::fs::read_to_string("scheduler.example.toml").expect("scheduler.example.toml exists");
    let file: toml::Table = toml::from_str(&text).expect("scheduler.example.toml is valid TOML");
    let file = serde_json::to_value(file).unwrap();
    let defaults = serde_json::to_value(Settings::default()).unwrap();
    let mut problems = Vec::new();
    compare("", &defaults, &file, &text, &mut problems);
    assert!(problems.is_empty(), "scheduler.example.toml differs from Settings::default():\n{}", problems.join("\n"));
    // And it loads: the same file through the real loader gives exactly the defaults.
    let s = Settings::from_file(std::path::Path::new("scheduler.example.toml")).expect("example loads");
    assert_eq!(s, Settings::default());
}

fn compare(path: &str, want: &serde_json::Value, got: &serde_json::Value, text: &str, problems: &mut Vec<String>) {
    use serde_json::Value;
    let (Value::Object(want), Value::Object(got)) = (want, got) else {
        problems.push(format!("{path}: expected a table, the file has {got}"));
        return;
    };
    for (key, w) in want {
        let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match (w, got.get(key)) {
            // Unset by default: TOML has no null, so the file shows it commented out in its section.
            (Value::Null, None)
                if !section_lines(text, path).any(|l| {
                    l.trim_start().strip_prefix('#').is_some_and(|r| r.trim_start().starts_with(&format!("{key} =")))
                }) =>
            {
                problems.push(format!("{full}: unset by default, but not shown commented out (# {key} = ...)"));
            }
            (Value::Null, None) => {}
            (Value::Null, Some(g)) => problems.push(format!("{full}: unset by default, but the file sets {g}")),
            (_, None) => problems.push(format!("{full}: missing (default {w})")),
            (Value::Object(_), Some(g)) => compare(&full, w, g, text, problems),
            (w, Some(g)) if !same(w, g) => problems.push(format!("{full}: the file says {g}, the default is {w}")),
            _ => {}
        }
    }
    for key in got.keys().filter(|k| !want.contains_key(*k)) {
        let full = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        problems.push(format!("{full}: in the file but not a setting"));
    }
}

/// The lines of the file's `[section]` (before the first header for the top level).
fn section_lines<'a>(text: &'a str, section: &str) -> impl Iterator<Item = &'a str> {
    let header = format!("[{section}]");
    let mut inside = section.is_empty();
    text.lines().filter(move |l| {
        if l.trim_start().starts_with('[') {
            inside = l.trim() == header;
            return false;
        }
        inside
    })
}

/// Equal values; numbers compare by value (TOML `1.0` and an integer default 1 are the same setting).
fn same(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x == y || x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
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

/// `sqs-scheduler run` that can reach nothing shared: a database that does not answer (never the `scheduler`
/// database the defaults name) and an SQS endpoint that does not answer (never real AWS), so a regression that lets
/// `run` start cannot touch the dev services. Use with `output_within`.
fn run_reaching_nothing() -> Command {
    let mut c = bin();
    c.env("SCHEDULER_DATABASE__URL", "postgres://postgres@127.0.0.1:1/none")
        .env("SCHEDULER_DATABASE__CONNECT_TIMEOUT_MS", "500")
        .env("SCHEDULER_SQS__ENDPOINT_URL", "http://127.0.0.1:1")
        .env("SCHEDULER_HTTP__BIND", "");
    c
}

/// The command's output, or a panic (the child killed) if it has not exited within `limit`: a `run` that should
/// have refused to start must not hang the suite.
fn output_within(cmd: &mut Command, limit: std::time::Duration) -> std::process::Output {
    let child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{cmd:?} did not exit within {limit:?}");
        }
    }
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

    for (key, value, name) in [
        ("SCHEDULER_DATABASE__URL", "postgres://u@h/db?sslmode=allow", "database.url"),
        ("SCHEDULER_DATABASE__URL", "postgres://u@h/db?sslmode=bogus", "database.url"),
        ("SCHEDULER_DATABASE__STATEMENT_TIMEOUT_MS", "-1", "statement_timeout_ms"),
        ("SCHEDULER_DATABASE__STATEMENT_TIMEOUT_MS", "100000000", "database.statement_timeout_ms"),
        ("SCHEDULER_DATABASE__CONNECT_TIMEOUT_MS", "0", "database.connect_timeout_ms"),
        ("SCHEDULER_DATABASE__TCP_KEEPALIVE_SECS", "100000", "database.tcp_keepalive_secs"),
        ("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "0", "transport.wait_time_secs"),
        ("SCHEDULER_TRANSPORT__VISIBILITY_TIMEOUT_SECS", "2", "transport.visibility_timeout_secs"),
        ("SCHEDULER_WORKER__CONCURRENCY", "0", "worker.concurrency"),
        ("SCHEDULER_WORKER__POLLERS", "0", "worker.pollers"),
        ("SCHEDULER_WORKER__HEARTBEAT_INTERVAL_SECS", "0", "worker.heartbeat_interval_secs"),
        // The default heartbeat is every 30 s: a 45 s stale timeout would rescue a task after one late heartbeat.
        ("SCHEDULER_REAPER__STALE_TIMEOUT_SECS", "45", "reaper.stale_timeout_secs"),
        ("SCHEDULER_REAPER__QUEUE_TIMEOUT_SECS", "60", "reaper.queue_timeout_secs"),
        ("SCHEDULER_RABBITMQ__URL", "http://127.0.0.1:5672/", "rabbitmq.url"),
        ("SCHEDULER_RABBITMQ__QUEUE_PREFIX", "a b", "rabbitmq.queue_prefix"),
        ("SCHEDULER_RABBITMQ__PUBLISH_CHANNELS", "0", "rabbitmq.publish_channels"),
        ("SCHEDULER_RABBITMQ__CONFIRM_TIMEOUT_MS", "1", "rabbitmq.confirm_timeout_ms"),
        ("SCHEDULER_RABBITMQ__RECONNECT_MAX_MS", "1", "rabbitmq.reconnect_max_ms"),
        ("SCHEDULER_TRANSPORT__KIND", "kafka", "transport.kind"),
    ] {
        let out = bin().arg("config").env(key, value).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{key}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(name), "{key}={value}: {err}");
    }

    let out = bin().args(["--config", "/nonexistent.toml", "config"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn config_prints_the_effective_settings_with_secrets_redacted() {
    let out = bin()
        .arg("config")
        .env("SCHEDULER_DATABASE__URL", "postgres://app:hunter2@db:5432/scheduler")
        .env("SCHEDULER_SQS__SECRET_ACCESS_KEY", "topsecret")
        .env("SCHEDULER_RABBITMQ__URL", "amqps://sched:rabbitpass@mq.example:5671/prod")
        .env("SCHEDULER_HTTP__API_TOKENS", "tok1,tok2")
        .env("SCHEDULER_WORKER__CONCURRENCY", "7")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("concurrency = 7"), "{text}");
    assert!(text.contains("mq.example:5671/prod"), "{text}");
    for secret in ["hunter2", "topsecret", "rabbitpass", "tok1", "tok2"] {
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

/// A config file with `[[schedules]]` entries, in a directory of its own.
fn schedules_file(tag: &str, body: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sched-cron-{}-{tag}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn a_bad_schedule_entry_is_refused_at_start_naming_it_with_exit_2() {
    let good = "[[schedules]]\nname = \"ok\"\ncron = \"*/5 * * * * *\"\naction = \"noop\"\n";
    for (tag, entry, names) in [
        (
            "cron",
            "name = \"broken\"\ncron = \"every day at noon\"\naction = \"noop\"\n",
            ["schedules[1]", "\"broken\"", "cron"],
        ),
        (
            "zone",
            "name = \"zoned\"\ncron = \"0 9 * * *\"\naction = \"noop\"\ntimezone = \"Mars/Base\"\n",
            ["schedules[1]", "\"zoned\"", "timezone"],
        ),
        (
            "never",
            "name = \"feb30\"\ncron = \"0 0 30 2 *\"\naction = \"noop\"\n",
            ["schedules[1]", "\"feb30\"", "no upcoming tick"],
        ),
        (
            "name",
            "name = \"has space\"\ncron = \"* * * * *\"\naction = \"noop\"\n",
            ["schedules[1]", "has space", "name"],
        ),
        (
            "dup",
            "name = \"ok\"\ncron = \"* * * * *\"\naction = \"noop\"\n",
            ["schedules[1]", "\"ok\"", "declared twice"],
        ),
        (
            "prio",
            "name = \"p\"\ncron = \"* * * * *\"\naction = \"noop\"\npriority = 500\n",
            ["schedules[1]", "\"p\"", "priority"],
        ),
    ] {
        let path = schedules_file(tag, &format!("{good}\n[[schedules]]\n{entry}"));
        for cmd in [&["config"][..], &["run", "--no-migrate"][..]] {
            let out = output_within(
                run_reaching_nothing().arg("--config").arg(&path).args(cmd),
                std::time::Duration::from_secs(60),
            );
            assert_eq!(out.status.code(), Some(2), "{tag} {cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
            let err = String::from_utf8_lossy(&out.stderr);
            for n in names {
                assert!(err.contains(n), "{tag} {cmd:?}: {n} not in {err}");
            }
        }
    }
}

#[test]
fn a_schedule_for_an_unknown_action_stops_run_unless_declared() {
    let entry = "[[schedules]]\nname = \"py\"\ncron = \"* * * * *\"\naction = \"py_resize\"\n";
    let path = schedules_file("unknown", entry);
    // `config` only reads the file; `run` knows the handlers and refuses it before touching anything.
    let out = bin().arg("--config").arg(&path).arg("config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = output_within(
        run_reaching_nothing().arg("--config").arg(&path).args(["run", "--no-migrate"]),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("schedules[0]") && err.contains("\"py\"") && err.contains("py_resize"), "{err}");
    // The same file with the action declared passes the check: `run` goes on to migrate, and fails there (exit 1,
    // a runtime failure) on a database that does not answer.
    let path = schedules_file("declared", &format!("[actions]\nknown = [\"py_resize\"]\n\n{entry}"));
    let out =
        output_within(run_reaching_nothing().arg("--config").arg(&path).arg("run"), std::time::Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("schedules[0]"), "{err}");
}

#[test]
fn config_prints_schedules_as_valid_toml() {
    let path = schedules_file(
        "print",
        "[[schedules]]\nname = \"n\"\ncron = \"0 9 * * MON\"\naction = \"export\"\npayload = { objectID = 7, tags = [\"a\"], \"odd key\" = { x = 1.5 } }\ntimezone = \"Europe/Paris\"\n",
    );
    let out = bin().arg("--config").arg(&path).arg("config").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let printed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let s = &printed["schedules"].as_array().unwrap()[0];
    assert_eq!(s["payload"]["odd key"]["x"].as_float(), Some(1.5), "{text}");
    assert_eq!(s["timezone"].as_str(), Some("Europe/Paris"));
}
