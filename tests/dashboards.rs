//! Grafana and Prometheus files: every metric the dashboards query exists in /metrics; the files parse.

mod common;

use sqs_scheduler::metrics::metrics;
use std::collections::BTreeSet;

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
fn metrics_pass_promtool_when_it_is_installed() {
    metrics().init_labels("scheduler");
    metrics().handler_duration.with_label_values(&["noop"]).observe(0.01);
    let Some(report) = common::promtool_check(metrics().render().as_bytes()) else {
        eprintln!("promtool not installed (Debian package prometheus): skipped");
        return;
    };
    assert!(report.trim().is_empty(), "promtool: {report}");
}

#[test]
fn provisioning_files_parse() {
    for f in [
        "deploy/grafana/provisioning/datasources/prometheus.yml",
        "deploy/prometheus/prometheus.yml",
        "docker-compose.yml",
    ] {
        let text = std::fs::read_to_string(f).unwrap();
        assert!(!text.trim().is_empty(), "{f}");
    }
}
