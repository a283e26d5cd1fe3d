//! Grafana and Prometheus files: every metric the dashboards query exists in /metrics; the files parse.

mod common;

use serde_json::Value;
use sqs_scheduler::metrics::metrics;
use std::collections::{BTreeMap, BTreeSet};

/// Metric names used in the dashboard's queries, without histogram suffixes.
fn dashboard_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string("deploy/grafana/dashboards/scheduler.json").unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is valid JSON");
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "expr" {
                        if let Some(s) = v.as_str() {
                            out.push(s.to_owned());
                        }
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&json, &mut exprs);
    assert!(exprs.len() > 10, "the dashboard has queries");
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("scheduler_") {
            let tail = &rest[i..];
            let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
            let name = &tail[..end];
            let base = name.trim_end_matches("_bucket").trim_end_matches("_sum").trim_end_matches("_count");
            names.insert(base.to_owned());
            rest = &tail[end..];
        }
    }
    names
}

#[test]
fn every_metric_the_dashboards_query_is_exported() {
    metrics().init_labels("scheduler");
    // Per-schedule series exist once a schedule does (the configured ones from the start).
    metrics().init_schedule_labels(["example"]);
    let exposition = metrics().render();
    let names = dashboard_metrics();
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(
            exposition.lines().any(|l| l.starts_with(&format!("# TYPE {name} "))),
            "{name} is queried by the dashboard but not exported"
        );
    }
    let listed: BTreeSet<String> = std::fs::read_to_string("deploy/grafana/dashboard-metrics.txt")
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, names, "deploy/grafana/dashboard-metrics.txt lists the dashboard's metrics");
}

#[test]
fn metrics_pass_promtool() {
    metrics().init_labels("scheduler");
    metrics().handler_duration.with_label_values(&["noop"]).observe(0.01);
    let report = common::promtool_report(metrics().render().as_bytes());
    assert!(report.trim().is_empty(), "promtool: {report}");
}

/// A YAML file as JSON (anchors resolved, `<<` merge keys applied), so it is walked like the dashboard.
fn yaml(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    v.apply_merge().unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::to_value(v).unwrap_or_else(|e| panic!("{path}: not JSON-like: {e}"))
}

fn json_file(path: &str) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every file under `dir` (recursively) whose name ends with one of `exts`.
fn files_under(dir: &str, exts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(dir)];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else if exts.iter().any(|x| p.extension().is_some_and(|e| e == *x)) {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("no string at {pointer} in {v}"))
}

/// `host:container[:mode]` volume mounts of a compose service: container path by host path.
fn mounts(compose: &Value, service: &str) -> BTreeMap<String, String> {
    let volumes = compose.pointer(&format!("/services/{service}/volumes")).and_then(Value::as_array);
    volumes
        .unwrap_or_else(|| panic!("docker-compose.yml: service {service} has no volumes"))
        .iter()
        .filter_map(|v| {
            let mut parts = v.as_str().expect("short volume syntax").split(':');
            let (host, container) = (parts.next()?, parts.next()?);
            host.starts_with("./").then(|| (host.trim_start_matches("./").to_owned(), container.to_owned()))
        })
        .collect()
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let yamls = files_under("deploy", &["yml", "yaml"]);
    let jsons = files_under("deploy", &["json"]);
    assert!(yamls.len() >= 3 && !jsons.is_empty(), "{yamls:?} {jsons:?}");
    for f in yamls.iter().map(String::as_str).chain(["docker-compose.yml"]) {
        assert!(yaml(f).as_object().is_some_and(|m| !m.is_empty()), "{f}: not a non-empty mapping");
    }
    for f in &jsons {
        assert!(json_file(f).as_object().is_some_and(|m| !m.is_empty()), "{f}: not a non-empty object");
    }
    // The files Grafana and Prometheus read have the shape they expect.
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    assert_eq!(ds["apiVersion"], 1);
    let dash = yaml("deploy/grafana/provisioning/dashboards/scheduler.yml");
    assert_eq!(dash["apiVersion"], 1);
    assert_eq!(str_at(&dash, "/providers/0/type"), "file");
    let prom = yaml("deploy/prometheus/prometheus.yml");
    assert!(prom["scrape_configs"].as_array().is_some_and(|a| !a.is_empty()), "{prom}");
}

#[test]
fn the_dashboard_uses_the_provisioned_datasource() {
    // uid -> type of every provisioned datasource.
    let mut provisioned = BTreeMap::new();
    for f in files_under("deploy/grafana/provisioning/datasources", &["yml", "yaml"]) {
        for d in yaml(&f)["datasources"].as_array().unwrap_or_else(|| panic!("{f}: no datasources")) {
            provisioned.insert(str_at(d, "/uid").to_owned(), str_at(d, "/type").to_owned());
        }
    }
    assert!(!provisioned.is_empty());
    for f in files_under("deploy/grafana/dashboards", &["json"]) {
        let dashboard = json_file(&f);
        let mut refs = Vec::new();
        fn walk(v: &Value, path: String, out: &mut Vec<(String, Value)>) {
            match v {
                Value::Object(m) => {
                    for (k, v) in m {
                        if k == "datasource" {
                            out.push((path.clone(), v.clone()));
                        }
                        walk(v, format!("{path}/{k}"), out);
                    }
                }
                Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| walk(v, format!("{path}/{i}"), out)),
                _ => {}
            }
        }
        walk(&dashboard, String::new(), &mut refs);
        let mut checked = 0;
        for (path, r) in &refs {
            let (uid, kind) = (str_at(r, "/uid"), str_at(r, "/type"));
            if kind == "grafana" && uid == "-- Grafana --" {
                continue; // Grafana's built-in annotations
            }
            assert_eq!(
                provisioned.get(uid).map(String::as_str),
                Some(kind),
                "{f}{path}: datasource {r} is not a provisioned datasource {provisioned:?}"
            );
            checked += 1;
        }
        // Every panel that queries names its datasource.
        for (i, panel) in dashboard["panels"].as_array().unwrap().iter().enumerate() {
            if panel.get("targets").is_some() {
                assert!(panel["datasource"].is_object(), "{f}: panel {i} queries without a datasource");
            }
        }
        assert!(checked > 10, "{f}: only {checked} datasource references");
    }
}

#[test]
fn provisioning_paths_match_the_docker_compose_mounts() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().unwrap();

    // Grafana: the dashboards provider reads the directory deploy/grafana/dashboards is mounted on, and
    // provisioning is mounted where Grafana looks for it.
    let grafana = mounts(&compose, "grafana");
    let dashboards_dir = grafana.get("deploy/grafana/dashboards").expect("deploy/grafana/dashboards is mounted");
    for f in files_under("deploy/grafana/provisioning/dashboards", &["yml", "yaml"]) {
        for p in yaml(&f)["providers"].as_array().unwrap() {
            let path = str_at(p, "/options/path").trim_end_matches('/');
            assert_eq!(path, dashboards_dir.trim_end_matches('/'), "{f}: provider path vs docker-compose mount");
        }
    }
    let env = &services["grafana"]["environment"];
    let provisioning = env.get("GF_PATHS_PROVISIONING").and_then(Value::as_str).unwrap_or("/etc/grafana/provisioning");
    assert_eq!(grafana.get("deploy/grafana/provisioning").map(String::as_str), Some(provisioning));
    if let Some(home) = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH").and_then(Value::as_str) {
        let rel = home.strip_prefix(&format!("{dashboards_dir}/")).expect("the home dashboard is in the mounted dir");
        assert!(std::path::Path::new("deploy/grafana/dashboards").join(rel).is_file(), "{home}");
    }

    // The datasource points at the compose service that runs Prometheus, on its container port.
    let ds = yaml("deploy/grafana/provisioning/datasources/prometheus.yml");
    let url = url::Url::parse(str_at(&ds, "/datasources/0/url")).unwrap();
    let host = url.host_str().unwrap();
    assert!(services.contains_key(host), "datasource host {host} is not a compose service");
    let port = url.port().unwrap().to_string();
    let ports = services[host]["ports"].as_array().unwrap();
    assert!(ports.iter().any(|p| p.as_str().unwrap().ends_with(&format!(":{port}"))), "{host} does not expose {port}");

    // Prometheus reads the mounted deploy/prometheus/prometheus.yml ...
    let prom_mounts = mounts(&compose, host);
    let config = prom_mounts.get("deploy/prometheus/prometheus.yml").expect("prometheus.yml is mounted");
    let args: Vec<&str> = services[host]["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&format!("--config.file={config}").as_str()), "{args:?}");
    // ... which scrapes compose services that serve /metrics on the port SCHEDULER_HTTP__BIND gives them.
    let prom = yaml("deploy/prometheus/prometheus.yml");
    let job = prom["scrape_configs"].as_array().unwrap().iter().find(|j| j["job_name"] == "sqs-scheduler").unwrap();
    assert_eq!(job["metrics_path"], "/metrics");
    for sd in job["dns_sd_configs"].as_array().unwrap() {
        for name in sd["names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let svc = services.get(name).unwrap_or_else(|| panic!("scrape target {name} is not a compose service"));
            let bind = str_at(svc, "/environment/SCHEDULER_HTTP__BIND");
            assert!(bind.ends_with(&format!(":{}", sd["port"])), "{name}: binds {bind}, scraped on {}", sd["port"]);
        }
    }
}
