//! Configuration: compiled defaults < TOML file < environment (`SCHEDULER_` prefix, `__` for nesting, e.g.
//! `SCHEDULER_DATABASE__URL`). Every field is documented here and in `scheduler.example.toml`.

// Each service's settings live with the service (defaults and meaning there); the root composes them.
pub use crate::actors::acquirer::AcquirerSettings;
pub use crate::actors::cron::CronSettings;
pub use crate::actors::persister::PersisterSettings;
pub use crate::actors::reaper::ReaperSettings;
pub use crate::actors::result_sink::ResultSinkSettings;
pub use crate::actors::stats::StatsSettings;
pub use crate::actors::worker_pool::WorkerSettings;
pub use crate::chaos::ChaosSettings;
pub use crate::db::DatabaseSettings;
pub use crate::handlers::ActionsSettings;
pub use crate::schedules::ScheduleSpec;
pub use crate::store::RetrySettings;
pub use crate::supervision::SupervisionSettings;
pub use crate::telemetry::{LogFormat, LogSettings};
pub use crate::transport::rabbitmq::RabbitMqSettings;
pub use crate::transport::sqs::SqsSettings;
pub use crate::transport::{TransportKind, TransportSettings};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole configuration of one process.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub database: DatabaseSettings,
    pub log: LogSettings,
    pub transport: TransportSettings,
    pub sqs: SqsSettings,
    pub rabbitmq: RabbitMqSettings,
    pub persister: PersisterSettings,
    pub acquirer: AcquirerSettings,
    pub worker: WorkerSettings,
    pub result_sink: ResultSinkSettings,
    pub retry: RetrySettings,
    pub reaper: ReaperSettings,
    pub stats: StatsSettings,
    pub chaos: ChaosSettings,
    pub http: HttpSettings,
    pub supervision: SupervisionSettings,
    pub actions: ActionsSettings,
    pub cron: CronSettings,
    /// Cron schedules declared in configuration (`[[schedules]]`), upserted into the database at start.
    pub schedules: Vec<ScheduleSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address of the HTTP server (API, /metrics, /healthz, /readyz). Empty string: no server.
    pub bind: String,
    /// Bearer tokens accepted by /rpc (a list, or one comma-separated string in the environment). With none, only
    /// loopback clients are served. Redacted by `config`.
    #[serde(deserialize_with = "string_or_list")]
    pub api_tokens: Vec<crate::secret::Secret>,
    /// Largest request body (bytes); larger gets 413.
    pub body_limit_bytes: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self { bind: "127.0.0.1:8080".into(), api_tokens: Vec::new(), body_limit_bytes: 1024 * 1024 }
    }
}

/// A configuration that cannot be used: names the key and the problem.
#[derive(Debug, thiserror::Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(pub String);

impl Settings {
    /// Loads defaults < `path` (if given, or `SCHEDULER_CONFIG`, or `scheduler.toml` if it exists) < environment.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let path: Option<PathBuf> = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("SCHEDULER_CONFIG").map(PathBuf::from))
            .or_else(|| Some(PathBuf::from("scheduler.toml")).filter(|p| p.exists()));
        let mut fig = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(p) = &path {
            if !p.exists() {
                return Err(ConfigError(format!("config file {} does not exist", p.display())));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(Env::prefixed("SCHEDULER_").split("__").ignore(&["CONFIG"]));
        Self::from_figment(fig)
    }

    /// Defaults < `path`, without the environment (for checking a file on its own).
    pub fn from_file(path: &Path) -> Result<Settings, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(Settings::default())).merge(Toml::file(path)))
    }

    pub fn from_figment(fig: Figment) -> Result<Settings, ConfigError> {
        let s: Settings = fig.extract().map_err(|e| {
            let key = e.path.join(".");
            let msg = e.kind.to_string();
            if key.is_empty() {
                ConfigError(msg)
            } else {
                ConfigError(format!("{key}: {msg}"))
            }
        })?;
        let mut s = s;
        s.database.merge_password().map_err(ConfigError)?;
        s.validate()?;
        Ok(s)
    }

    /// The queue prefix of the configured transport (`rabbitmq.queue_prefix` on RabbitMQ, else `sqs.queue_prefix`):
    /// names the queues in logs and metrics.
    pub fn queue_prefix(&self) -> &str {
        match self.transport.kind {
            TransportKind::RabbitMq => &self.rabbitmq.queue_prefix,
            TransportKind::Sqs | TransportKind::Memory => &self.sqs.queue_prefix,
        }
    }

    /// Unacked messages each RabbitMQ consumer may hold: what its stage can take. A worker's is its concurrency, so
    /// it never holds more messages than it can start; a commit stage's is what its pollers hand on before waiting
    /// (pollers x in-flight batches x 10).
    pub fn rabbitmq_prefetch(&self) -> crate::transport::rabbitmq::Prefetch {
        let stage = |pollers: usize| {
            (pollers.max(1) * self.transport.in_flight_batches * crate::transport::MAX_BATCH).min(u16::MAX as usize)
                as u16
        };
        crate::transport::rabbitmq::Prefetch {
            inbound: stage(self.persister.pollers),
            // Messages, not tasks: a worker holds no more tasks than it can start (packed: rounded up).
            outbound: self.worker.concurrency.div_ceil(self.transport.tasks_per_message.max(1)).min(u16::MAX as usize)
                as u16,
            results: stage(self.result_sink.pollers),
        }
    }

    /// Checks what types cannot: ranges and relations between fields.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn err(key: &str, msg: impl std::fmt::Display) -> Result<(), ConfigError> {
            Err(ConfigError(format!("{key}: {msg}")))
        }
        if url::Url::parse(&self.database.url).map(|u| !matches!(u.scheme(), "postgres" | "postgresql")).unwrap_or(true)
        {
            return err("database.url", "must be a postgres:// URL");
        }
        if let Err(e) = crate::db::parse_url(&self.database.url) {
            return err("database.url", e);
        }
        if self.database.statement_timeout_ms > 24 * 3600 * 1000 {
            return err("database.statement_timeout_ms", "must be at most 86400000 (a day); 0 means no limit");
        }
        if self.database.connect_timeout_ms == 0 {
            return err("database.connect_timeout_ms", "must be at least 1");
        }
        if self.database.tcp_keepalive_secs > 7200 {
            return err("database.tcp_keepalive_secs", "must be at most 7200; 0 turns keepalive off");
        }
        if self.database.pool_size == 0 {
            return err("database.pool_size", "must be at least 1");
        }
        // The pollers receive again at once after an empty answer: without a long poll they would spin.
        if !(1..=20).contains(&self.transport.wait_time_secs) {
            return err("transport.wait_time_secs", "must be between 1 and 20 (long polling; the SQS limit is 20)");
        }
        // Workers extend held messages' visibility every third of it, and need a second or more for each round.
        if !(3..=43_200).contains(&self.transport.visibility_timeout_secs) {
            return err(
                "transport.visibility_timeout_secs",
                "must be between 3 and 43200 (workers extend it every third of it)",
            );
        }
        if !(1024..=1024 * 1024).contains(&self.transport.max_message_bytes) {
            return err("transport.max_message_bytes", "must be between 1024 and 1048576");
        }
        if self.sqs.queue_prefix.is_empty()
            || !self.sqs.queue_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return err("sqs.queue_prefix", "must be non-empty and use only letters, digits, '-' and '_'");
        }
        self.rabbitmq.validate().map_err(ConfigError)?;
        for (key, n) in [
            ("persister.pool_size", self.persister.pool_size),
            ("result_sink.pool_size", self.result_sink.pool_size),
            ("worker.db_pool_size", self.worker.db_pool_size),
        ] {
            if n == 0 {
                return err(key, "must be at least 1");
            }
        }
        if self.persister.max_batch == 0 {
            return err("persister.max_batch", "must be at least 1");
        }
        if !(1..=10_000).contains(&self.acquirer.batch_size) {
            return err("acquirer.batch_size", "must be between 1 and 10000");
        }
        if !(1..=16).contains(&self.acquirer.concurrency) {
            return err("acquirer.concurrency", "must be between 1 and 16");
        }
        if !(1..=100).contains(&self.transport.tasks_per_message) {
            return err("transport.tasks_per_message", "must be between 1 and 100");
        }
        if !(1..=64).contains(&self.transport.in_flight_batches) {
            return err("transport.in_flight_batches", "must be between 1 and 64");
        }
        if self.acquirer.idle_wakeup_ms == 0 {
            return err("acquirer.idle_wakeup_ms", "must be at least 1");
        }
        if !(1..=60_000).contains(&self.acquirer.throttle_poll_ms) {
            return err("acquirer.throttle_poll_ms", "must be between 1 and 60000");
        }
        if self.worker.concurrency == 0 {
            return err("worker.concurrency", "must be at least 1");
        }
        if self.worker.pollers == 0 {
            return err("worker.pollers", "must be at least 1");
        }
        let heartbeat = self.worker.heartbeat_interval_secs;
        if !(0.1..=3600.0).contains(&heartbeat) {
            return err("worker.heartbeat_interval_secs", "must be between 0.1 and 3600");
        }
        if !(1..=1000).contains(&self.retry.default_max_attempts) {
            return err("retry.default_max_attempts", "must be between 1 and 1000");
        }
        let (base, max) = (self.retry.base_delay_secs, self.retry.max_delay_secs);
        if base.is_nan() || max.is_nan() || base < 0.0 || max < base {
            return err("retry.max_delay_secs", "must be at least retry.base_delay_secs, and both non-negative");
        }
        if !(0.0..=1.0).contains(&self.retry.jitter) {
            return err("retry.jitter", "must be between 0.0 and 1.0");
        }
        self.reaper.validate().map_err(ConfigError)?;
        self.stats.validate().map_err(ConfigError)?;
        if self.reaper.stale_timeout_secs < 2.0 * heartbeat {
            return err(
                "reaper.stale_timeout_secs",
                format!(
                    "must be at least twice worker.heartbeat_interval_secs ({heartbeat} s), or a running task is \
                     rescued when one heartbeat is late"
                ),
            );
        }
        for (key, v) in [
            ("chaos.error_rate", Some(self.chaos.error_rate)),
            ("chaos.persister", self.chaos.persister),
            ("chaos.acquirer", self.chaos.acquirer),
            ("chaos.worker", self.chaos.worker),
            ("chaos.result_sink", self.chaos.result_sink),
        ] {
            if let Some(v) = v {
                if !(0.0..=1.0).contains(&v) {
                    return err(key, "must be between 0.0 and 1.0");
                }
            }
        }
        self.supervision.validate().map_err(ConfigError)?;
        self.actions.validate().map_err(ConfigError)?;
        self.cron.validate().map_err(ConfigError)?;
        let schedules = crate::schedules::validate_specs(&self.schedules).map_err(ConfigError)?;
        for (i, s) in schedules.iter().enumerate() {
            if s.outbound_size() > self.transport.max_message_bytes {
                return err(
                    &format!("schedules[{i}] ({:?})", s.name),
                    "payload: its task message would exceed transport.max_message_bytes",
                );
            }
        }
        crate::guard::settings::check_numeric_ranges(self).map_err(ConfigError)?;
        if !self.http.bind.is_empty() && self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return err("http.bind", "must be host:port with an IP address, e.g. 127.0.0.1:8080, or empty");
        }
        Ok(())
    }

    /// The effective configuration as TOML with passwords, secrets and tokens replaced by "[redacted]".
    pub fn redacted_toml(&self) -> String {
        use crate::secret::{Secret, REDACTED};
        let mut s = self.clone();
        s.database.url = s.database.url.redacted().into();
        s.database.password = s.database.password.as_ref().map(|_| Secret::new(REDACTED));
        s.rabbitmq.url = s.rabbitmq.url.redacted().into();
        s.sqs.secret_access_key = s.sqs.secret_access_key.as_ref().map(|_| Secret::new(REDACTED));
        s.http.api_tokens = s.http.api_tokens.iter().map(|_| Secret::new(REDACTED)).collect();
        toml_string(&s)
    }
}

fn toml_string(s: &Settings) -> String {
    // figment re-exports no TOML writer and `toml` (in the tree through figment) is not a direct dependency:
    // serde_json -> a small TOML printer keeps `[dependencies]` as it is.
    let v = serde_json::to_value(s).expect("settings serialize");
    let mut out = String::new();
    let obj = v.as_object().expect("object");
    let mut entries = |header: String, body: &serde_json::Map<String, serde_json::Value>| {
        out.push_str(&header);
        for (k, val) in body {
            if val.is_null() {
                out.push_str(&format!("# {k} = (unset)\n"));
            } else {
                out.push_str(&format!("{} = {}\n", toml_key(k), toml_value(val)));
            }
        }
        out.push('\n');
    };
    for (section, body) in obj {
        match body {
            // An array of tables: `[[schedules]]` once per entry.
            serde_json::Value::Array(items) => {
                for item in items {
                    entries(format!("[[{section}]]\n"), item.as_object().expect("array of tables"));
                }
            }
            body => entries(format!("[{section}]\n"), body.as_object().expect("section")),
        }
    }
    out
}

/// A TOML key: bare when it can be, else quoted.
fn toml_key(k: &str) -> String {
    if !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        k.to_owned()
    } else {
        serde_json::Value::String(k.to_owned()).to_string()
    }
}

/// A JSON value as TOML: JSON's strings, numbers, booleans and arrays read the same; objects become inline tables.
fn toml_value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Object(m) => {
            let fields: Vec<String> = m.iter().map(|(k, v)| format!("{} = {}", toml_key(k), toml_value(v))).collect();
            format!("{{ {} }}", fields.join(", "))
        }
        serde_json::Value::Array(a) => format!("[{}]", a.iter().map(toml_value).collect::<Vec<_>>().join(", ")),
        other => other.to_string(),
    }
}

/// Accepts `["a", "b"]` or `"a,b"` (environment variables are strings).
fn string_or_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<crate::secret::Secret>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|t| !t.is_empty()).map(Into::into).collect(),
        OneOrMany::Many(v) => v.into_iter().map(Into::into).collect(),
    })
}
