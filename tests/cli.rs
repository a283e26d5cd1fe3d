//! The binary's documented behaviour, one process per check, each on its own fresh database: SIGINT shutdown,
//! where the configuration file comes from, JSON logs, `run` refusing a bad setting, `/rpc` only where the
//! submitter role runs, and a small `load` run.

mod common;

use common::TestDb;
use serde_json::{json, Value};
use sqs_scheduler::store::TaskState;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The binary with an environment of our own: no SCHEDULER_* (nor RUST_LOG) from the caller, so the results do
/// not depend on who runs the tests.
fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sqs-scheduler"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default()).stdin(Stdio::null());
    c
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh, empty directory.
fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sched-cli-{tag}-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A running `sqs-scheduler`, killed if the test ends early. Its stderr and stdout lines arrive on `lines`.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn sqs-scheduler");
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Proc { child, lines, seen: Vec::new() }
    }

    /// Waits (bounded) for an output line that `pred` accepts; every line read so far is kept in `seen`.
    fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + timeout;
        if let Some(l) = self.seen.iter().find(|l| pred(l)) {
            return l.clone();
        }
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => panic!("no such line within {timeout:?}; output so far:\n{}", self.seen.join("\n")),
            }
        }
    }

    /// The address from the JSON log line "HTTP server listening" (`http.bind` uses port 0).
    fn http_address(&mut self) -> SocketAddr {
        let line = self.wait_line(Duration::from_secs(60), |l| {
            log_json(l).is_some_and(|v| v["fields"]["message"] == "HTTP server listening")
        });
        log_json(&line).unwrap()["fields"]["address"].as_str().unwrap().parse().unwrap()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig}");
    }

    /// Waits (bounded) for the process to exit, then drains its output into `seen`.
    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let until = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            assert!(Instant::now() < until, "process did not exit in time; output:\n{}", self.seen.join("\n"));
            // Reading the output is also what we wait on: it keeps the pipes from filling up.
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(l);
            }
        };
        // The reader threads end when the pipes close.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        status
    }
}

/// A log line in the JSON format (tracing-subscriber's: timestamp, level, fields.message, target).
fn log_json(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line).ok().filter(|v| v["fields"]["message"].is_string())
}

/// `run` on the in-process transport, all roles, HTTP on a free port, JSON logs.
fn run_memory(db: &TestDb, args: &[&str]) -> Command {
    let mut c = bin();
    c.arg("run")
        .args(args)
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .env("SCHEDULER_DATABASE__POOL_SIZE", "4")
        .env("SCHEDULER_TRANSPORT__KIND", "memory")
        // Shutdown lets in-flight long polls finish: keep them short.
        .env("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "1")
        .env("SCHEDULER_HTTP__BIND", "127.0.0.1:0")
        .env("SCHEDULER_LOG__FORMAT", "json")
        .env("SCHEDULER_LOG__LEVEL", "info");
    c
}

/// One HTTP/1.1 exchange (Connection: close): status and body.
fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("not HTTP: {out}"));
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_0_on_sigint() {
    let db = TestDb::new().await;
    let mut p = Proc::spawn(run_memory(&db, &["--grace-secs", "10"]));
    let addr = p.http_address();
    assert_eq!(http(addr, "GET", "/healthz", ""), (200, "ok".into()));
    p.signal("-INT");
    let status = p.wait_exit(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "output:\n{}", p.seen.join("\n"));
    assert!(
        p.seen.iter().filter_map(|l| log_json(l)).any(|v| v["fields"]["message"] == "SIGINT received"),
        "{}",
        p.seen.join("\n")
    );
    assert!(TcpStream::connect(addr).is_err(), "the HTTP server is gone");
    // log.format = "json": everything `run` printed is a JSON log line.
    let bad: Vec<&String> = p.seen.iter().filter(|l| !l.trim().is_empty() && log_json(l).is_none()).collect();
    assert!(bad.is_empty(), "not JSON log lines: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_format_json_prints_json_lines() {
    let db = TestDb::new().await;
    let migrate = |format: &str| {
        bin()
            .arg("migrate")
            .env("SCHEDULER_DATABASE__URL", &db.url)
            .env("SCHEDULER_LOG__FORMAT", format)
            .env("SCHEDULER_LOG__LEVEL", "info")
            .output()
            .unwrap()
    };
    let out = migrate("json");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    let lines: Vec<&str> = all.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "migrate logged nothing");
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
        assert!(v["level"].is_string() && v["fields"]["message"].is_string() && v["timestamp"].is_string(), "{l}");
    }
    let applied = lines
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "migrations applied");
    let applied = applied.unwrap_or_else(|| panic!("no 'migrations applied' line: {all}"));
    assert_eq!(applied["level"], "INFO");
    assert_eq!(applied["fields"]["applied"], 0, "the test database is migrated already: {applied}");

    // The default (logfmt) is not JSON: the setting is what makes the difference.
    let out = migrate("logfmt");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(all.contains("migrations applied"), "{all}");
    assert!(all.lines().filter(|l| !l.trim().is_empty()).all(|l| serde_json::from_str::<Value>(l).is_err()), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_a_bad_setting_with_exit_code_2() {
    // Nothing listens on port 1: if `run` got past its configuration it would fail later, with exit code 1.
    let unreachable = "postgres://postgres@127.0.0.1:1/nowhere";
    let out = bin()
        .args(["run", "--no-migrate"])
        .env("SCHEDULER_DATABASE__URL", unreachable)
        .env("SCHEDULER_RETRY__JITTER", "3")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("retry.jitter"), "{}", text(&out.stderr));

    let out = bin().arg("run").env("SCHEDULER_DATABASE__URL", "mysql://x@y/z").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("database.url"), "{}", text(&out.stderr));

    // The in-process transport cannot split roles across processes.
    let db = TestDb::new().await;
    let out = bin()
        .args(["run", "--no-migrate", "--role", "worker"])
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .env("SCHEDULER_TRANSPORT__KIND", "memory")
        .env("SCHEDULER_HTTP__BIND", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("transport.kind"), "{}", text(&out.stderr));

    // The control: the same command with good settings does not exit (it runs until a signal).
    let mut p = Proc::spawn(run_memory(&db, &["--no-migrate"]));
    p.http_address();
    p.signal("-TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(60)).code(), Some(0));
}

/// `config` in `dir` with `env`: the printed TOML, parsed.
fn config_in(dir: &Path, env: &[(&str, &Path)], args: &[&str]) -> toml::Table {
    let mut c = bin();
    c.current_dir(dir).args(args).arg("config");
    for (k, v) in env {
        c.env(k, v);
    }
    let out: Output = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    toml::from_str(&text(&out.stdout)).unwrap()
}

fn concurrency(t: &toml::Table) -> i64 {
    t["worker"]["concurrency"].as_integer().unwrap()
}

#[test]
fn scheduler_toml_in_the_working_directory_and_scheduler_config_select_the_file() {
    let default = sqs_scheduler::configuration::Settings::default().worker.concurrency as i64;
    let empty = temp_dir("empty");
    assert_eq!(concurrency(&config_in(&empty, &[], &[])), default);

    let cwd = temp_dir("cwd");
    std::fs::write(cwd.join("scheduler.toml"), "[worker]\nconcurrency = 11\n").unwrap();
    assert_eq!(concurrency(&config_in(&cwd, &[], &[])), 11, "./scheduler.toml is loaded");

    let other = temp_dir("other").join("elsewhere.toml");
    std::fs::write(&other, "[worker]\nconcurrency = 13\n").unwrap();
    assert_eq!(concurrency(&config_in(&cwd, &[("SCHEDULER_CONFIG", &other)], &[])), 13, "SCHEDULER_CONFIG wins");
    assert_eq!(concurrency(&config_in(&empty, &[("SCHEDULER_CONFIG", &other)], &[])), 13);

    let third = temp_dir("third").join("third.toml");
    std::fs::write(&third, "[worker]\nconcurrency = 17\n").unwrap();
    let args = ["--config", third.to_str().unwrap()];
    assert_eq!(concurrency(&config_in(&cwd, &[("SCHEDULER_CONFIG", &other)], &args)), 17, "--config wins");

    // A SCHEDULER_CONFIG that names no file is refused, not ignored.
    let out = bin().current_dir(&cwd).arg("config").env("SCHEDULER_CONFIG", empty.join("missing.toml")).output();
    assert_eq!(out.unwrap().status.code(), Some(2));
    for d in [&empty, &cwd, &other.parent().unwrap().to_path_buf(), &third.parent().unwrap().to_path_buf()] {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// `run --role <role>` over the local SQS endpoint (queues created with `prefix`), HTTP on a free port.
fn run_role(db: &TestDb, role: &str, prefix: &str) -> Proc {
    let endpoint = std::env::var("SCHEDULER_SQS__ENDPOINT_URL").unwrap_or_else(|_| "http://127.0.0.1:4566".into());
    let mut c = bin();
    c.args(["run", "--no-migrate", "--grace-secs", "5", "--role", role])
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .env("SCHEDULER_DATABASE__POOL_SIZE", "4")
        .env("SCHEDULER_TRANSPORT__KIND", "sqs")
        .env("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "1")
        .env("SCHEDULER_SQS__ENDPOINT_URL", endpoint)
        .env("SCHEDULER_SQS__REGION", "us-east-1")
        .env("SCHEDULER_SQS__ACCESS_KEY_ID", "test")
        .env("SCHEDULER_SQS__SECRET_ACCESS_KEY", "test")
        .env("SCHEDULER_SQS__QUEUE_PREFIX", prefix)
        .env("SCHEDULER_SQS__CREATE_QUEUES", "true")
        .env("SCHEDULER_HTTP__BIND", "127.0.0.1:0")
        .env("SCHEDULER_LOG__FORMAT", "json")
        .env("SCHEDULER_LOG__LEVEL", "info");
    Proc::spawn(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_is_served_only_where_the_submitter_role_runs() {
    let db = TestDb::new().await;
    let prefix = format!("cli{}", rand::random::<u32>());
    let submit = json!({"jsonrpc": "2.0", "method": "submit:noop", "params": {"n": 1}, "id": 7}).to_string();

    let mut worker = run_role(&db, "worker", &prefix);
    let addr = worker.http_address();
    let (status, _) = http(addr, "POST", "/rpc", &submit);
    assert_eq!(status, 404, "a worker has no /rpc");
    assert_eq!(http(addr, "GET", "/healthz", ""), (200, "ok".into()));
    let (status, metrics) = http(addr, "GET", "/metrics", "");
    assert_eq!(status, 200);
    assert!(metrics.contains(r#"scheduler_http_requests_total{path="other",status="404"} 1"#), "{metrics}");

    let mut submitter = run_role(&db, "submitter", &prefix);
    let addr = submitter.http_address();
    let (status, body) = http(addr, "POST", "/rpc", &submit);
    assert_eq!(status, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((r["id"].as_i64(), r["result"]["created"].as_bool()), (Some(7), Some(true)), "{r}");
    let id = r["result"]["id"].as_i64().unwrap();
    assert_eq!(db.store().get(id).await.unwrap().unwrap().action, "noop");
    assert_eq!(http(addr, "GET", "/healthz", "").0, 200);
    assert_eq!(http(addr, "GET", "/metrics", "").0, 200);

    for p in [&worker, &submitter] {
        p.signal("-TERM");
    }
    for p in [&mut worker, &mut submitter] {
        assert_eq!(p.wait_exit(Duration::from_secs(60)).code(), Some(0), "{}", p.seen.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_via_local_completes_and_prints_its_summary() {
    let db = TestDb::new().await;
    let out = bin()
        .args(["load", "--objects", "20", "--via", "local", "--timeout-secs", "120"])
        .env("SCHEDULER_DATABASE__URL", &db.url)
        .env("SCHEDULER_DATABASE__POOL_SIZE", "4")
        .env("SCHEDULER_ACQUIRER__IDLE_WAKEUP_MS", "100")
        // Shutdown lets in-flight long polls finish: keep them short.
        .env("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "1")
        .env("SCHEDULER_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("inserted 20 t_object rows"), "{stdout}");
    let summary = stdout.split("== load summary ==").nth(1).unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert!(summary.lines().any(|l| l.trim() == "submitted:   20"), "{summary}");
    assert!(summary.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["SUCCESS", "20"]), "{summary}");
    assert!(summary.lines().any(|l| l.starts_with("finished:    20 in ")), "{summary}");
    assert!(summary.contains("latency:"), "{summary}");
    let counts: Vec<_> = db.store().counts_by_state().await.unwrap().into_iter().filter(|c| c.1 > 0).collect();
    assert_eq!(counts, vec![(TaskState::Success, 20)], "every task is SUCCESS in the database");
    let tasks = db.store().list(&Default::default()).await.unwrap();
    assert!(tasks.iter().all(|t| t.action == "export" && t.state == TaskState::Success), "{tasks:?}");
}

/// Every role in one `run` process over RabbitMQ (a private vhost, queues declared by the process), submissions
/// from `load --via rabbitmq` in another process. Then the broker goes away for this process (its vhost deleted:
/// connections closed, reconnects refused): /readyz answers 503 and scheduler_amqp_connected is 0; once the vhost
/// is back, the process reconnects, re-declares its queues and works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_and_load_over_rabbitmq_and_readyz_follows_the_broker() {
    let db = TestDb::new().await;
    let vhost = common::PrivateVhost::new();
    let prefix = format!("cli{}", rand::random::<u32>());
    let rabbit = |c: &mut Command| {
        c.env("SCHEDULER_DATABASE__URL", &db.url)
            .env("SCHEDULER_DATABASE__POOL_SIZE", "4")
            .env("SCHEDULER_TRANSPORT__KIND", "rabbitmq")
            .env("SCHEDULER_TRANSPORT__WAIT_TIME_SECS", "1")
            .env("SCHEDULER_RABBITMQ__URL", vhost.url())
            .env("SCHEDULER_RABBITMQ__QUEUE_PREFIX", &prefix)
            .env("SCHEDULER_RABBITMQ__CREATE_QUEUES", "true")
            .env("SCHEDULER_RABBITMQ__RECONNECT_MAX_MS", "500");
    };
    let mut c = bin();
    c.args(["run", "--no-migrate", "--grace-secs", "5"])
        .env("SCHEDULER_HTTP__BIND", "127.0.0.1:0")
        .env("SCHEDULER_LOG__FORMAT", "json")
        .env("SCHEDULER_LOG__LEVEL", "info");
    rabbit(&mut c);
    let mut run = Proc::spawn(c);
    let addr = run.http_address();
    let ready = || http(addr, "GET", "/readyz", "");
    let (status, body) = ready();
    assert_eq!(status, 200, "{body}");

    let mut load = bin();
    load.args(["load", "--objects", "20", "--via", "rabbitmq", "--timeout-secs", "120"])
        .env("SCHEDULER_LOG__LEVEL", "warn");
    rabbit(&mut load);
    let out = load.output().unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("finished:    20 in "), "{stdout}");
    let counts: Vec<_> = db.store().counts_by_state().await.unwrap().into_iter().filter(|c| c.1 > 0).collect();
    assert_eq!(counts, vec![(TaskState::Success, 20)]);

    // The broker is gone for this process.
    common::rabbitmqctl(&["delete_vhost", &vhost.name]);
    // The broker closes the connection; reconnects are refused while the vhost is missing.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (_, metrics) = http(addr, "GET", "/metrics", "");
        if metrics.contains("scheduler_amqp_connected 0") {
            break;
        }
        assert!(std::time::Instant::now() < until, "still connected without a broker: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = ready();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(r#""transport":"failed""#), "{body}");

    // Back: it reconnects with backoff, declares its queues again and is ready.
    common::rabbitmqctl(&["add_vhost", &vhost.name]);
    common::rabbitmqctl(&["set_permissions", "-p", &vhost.name, "guest", ".*", ".*", ".*"]);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = ready();
        if status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < until, "/readyz still {status} after the broker came back: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, metrics) = http(addr, "GET", "/metrics", "");
    assert!(metrics.contains("scheduler_amqp_connected 1"), "{metrics}");
    assert!(!metrics.contains("scheduler_amqp_reconnects_total 0"), "{metrics}");

    run.signal("-TERM");
    assert_eq!(run.wait_exit(Duration::from_secs(60)).code(), Some(0), "{}", run.seen.join("\n"));
    common::rabbitmqctl(&["delete_vhost", &vhost.name]);
}
