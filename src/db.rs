//! The Postgres connection pool (bb8 over diesel-async, no libpq) and the embedded migrations.

use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::bb8::{Pool, PooledConnection};
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::AsyncPgConnection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn<'a> = PooledConnection<'a, AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Builds the pool. Connections are opened lazily, so this succeeds even while the database is down; the first
/// query then waits up to `connect_timeout_ms`. Every connection is opened by [`Connector`]: TLS per `sslmode`,
/// statement timeout, connect timeout and TCP keepalive.
pub fn build_pool(settings: &DatabaseSettings) -> DbPool {
    use diesel_async::pooled_connection::ManagerConfig;
    use futures::FutureExt;
    let mut config = ManagerConfig::default();
    // Checked at every checkout without a round trip: a connection whose task has ended (the server closed it:
    // restart, pg_terminate_backend, failover) is discarded and another one is taken, instead of failing the next
    // statement — or a task's handler, which would cost the task an attempt.
    config.recycling_method =
        diesel_async::pooled_connection::RecyclingMethod::CustomFunction(Box::new(|conn: &mut AsyncPgConnection| {
            use diesel_async::pooled_connection::PoolableConnection;
            let closed = conn.is_broken();
            async move {
                if closed {
                    Err(diesel::result::Error::BrokenTransactionManager)
                } else {
                    Ok(())
                }
            }
            .boxed()
        }));
    // The URL was validated at start (Settings::validate); a bad one here fails every connection, with its reason.
    let connector = Connector::new(settings).map_err(|e| e.to_string());
    config.custom_setup = Box::new(move |_url| {
        let connector = connector.clone();
        async move {
            let connector = connector.map_err(diesel::ConnectionError::BadConnection)?;
            connector.establish().await
        }
        .boxed()
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(settings.url.expose().to_owned(), config);
    Pool::builder()
        .max_size(settings.pool_size)
        .min_idle(Some(settings.min_idle.min(settings.pool_size)))
        .connection_timeout(Duration::from_millis(settings.connect_timeout_ms))
        // The check is the recycling function above: no query, no round trip.
        .test_on_check_out(true)
        .error_sink(Box::new(LogErrors))
        .build_unchecked(manager)
}

/// Logs why the pool could not open a connection (a checkout only reports that it timed out).
#[derive(Debug, Clone, Copy)]
struct LogErrors;

impl bb8::ErrorSink<diesel_async::pooled_connection::PoolError> for LogErrors {
    fn sink(&self, e: diesel_async::pooled_connection::PoolError) {
        tracing::warn!(error = %e, "cannot open a database connection");
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<diesel_async::pooled_connection::PoolError>> {
        Box::new(*self)
    }
}

/// How a connection is secured, from the URL's `sslmode` (libpq's names and meanings; `allow` is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP; TLS is never negotiated.
    Disable,
    /// TLS if the server offers it, else plain TCP; the certificate is not verified (libpq's default, and ours when
    /// the URL has no sslmode). Protects against passive listeners on a server with TLS, against nobody active.
    Prefer,
    /// TLS or no connection; the server's certificate is not verified (encryption against passive listeners only).
    Require,
    /// TLS, the certificate chain verified against the system's roots (plus `sslrootcert`), the host name not
    /// checked (a server reached by an address its certificate does not name, e.g. through a tunnel).
    VerifyCa,
    /// TLS, the certificate chain verified against the system's roots (plus `sslrootcert`, a PEM file, if given)
    /// and the host name checked.
    VerifyFull,
}

/// The connection parameters of the database URL as the scheduler reads them: `sslmode` and `sslrootcert` are
/// taken out (tokio-postgres knows neither verify-full nor sslrootcert); the rest is tokio-postgres's.
pub struct ParsedUrl {
    pub config: tokio_postgres::Config,
    pub sslmode: SslMode,
    pub sslrootcert: Option<String>,
}

/// Parses a postgres:// URL. The error names what is wrong (`Settings::validate` reports it under `database.url`).
pub fn parse_url(url: &str) -> Result<ParsedUrl, String> {
    let mut u = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    let (mut sslmode, mut sslrootcert) = (SslMode::Prefer, None);
    let mut rest = Vec::new();
    for (k, v) in u.query_pairs() {
        match k.as_ref() {
            "sslmode" => {
                sslmode = match v.as_ref() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode must be disable, prefer, require, verify-ca or verify-full, not {other:?}"
                        ))
                    }
                }
            }
            "sslrootcert" => sslrootcert = Some(v.into_owned()),
            _ => rest.push((k.into_owned(), v.into_owned())),
        }
    }
    if rest.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(rest);
    }
    let config: tokio_postgres::Config = u.as_str().parse().map_err(|e| format!("{e}"))?;
    if sslrootcert.is_some() && !matches!(sslmode, SslMode::VerifyCa | SslMode::VerifyFull) {
        return Err("sslrootcert is used only with sslmode=verify-ca or verify-full".into());
    }
    Ok(ParsedUrl { config, sslmode, sslrootcert })
}

/// The TLS stream of every database connection (plain TCP when sslmode=disable: TLS is then never negotiated).
pub type TlsStream =
    <tokio_postgres_rustls::MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// Opens database connections the one way this process does (pool, DueListener, migrations): TLS per the URL's
/// `sslmode`, `statement_timeout` set in the startup packet (no extra round trip), connect timeout and TCP
/// keepalive from [`DatabaseSettings`]. Cheap to clone.
#[derive(Clone)]
pub struct Connector {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl Connector {
    pub fn new(settings: &DatabaseSettings) -> Result<Connector, String> {
        Self::with_statement_timeout(settings, settings.statement_timeout_ms)
    }

    fn with_statement_timeout(settings: &DatabaseSettings, statement_timeout_ms: u64) -> Result<Connector, String> {
        let parsed = parse_url(&settings.url)?;
        let mut config = parsed.config;
        let mut options = config.get_options().map(str::to_owned).unwrap_or_default();
        if statement_timeout_ms > 0 {
            options = format!("{options} -c statement_timeout={statement_timeout_ms}").trim().to_owned();
        }
        config.options(options);
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_millis(settings.connect_timeout_ms));
        }
        if settings.tcp_keepalive_secs > 0 {
            config.keepalives(true).keepalives_idle(Duration::from_secs(settings.tcp_keepalive_secs));
        } else {
            config.keepalives(false);
        }
        config.ssl_mode(match parsed.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => tokio_postgres::config::SslMode::Require,
        });
        let tls = tls_config(parsed.sslmode, parsed.sslrootcert.as_deref())?;
        Ok(Connector { config, tls: tokio_postgres_rustls::MakeRustlsConnect::new(tls) })
    }

    /// A client and its connection (which the caller drives).
    pub async fn connect(
        &self,
    ) -> Result<
        (tokio_postgres::Client, tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>),
        tokio_postgres::Error,
    > {
        self.config.connect(self.tls.clone()).await
    }

    /// A diesel-async connection (its connection task spawned on the current thread's runtime).
    pub async fn establish(&self) -> diesel::ConnectionResult<AsyncPgConnection> {
        let (client, conn) = self.connect().await.map_err(|e| diesel::ConnectionError::BadConnection(e.to_string()))?;
        AsyncPgConnection::try_from_client_and_connection(client, conn).await
    }
}

/// An error with its causes ("error performing TLS handshake: invalid peer certificate: UnknownIssuer").
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out = format!("{out}: {text}");
        }
        source = s.source();
    }
    out
}

fn tls_config(mode: SslMode, rootcert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    Ok(match mode {
        // Never used for a handshake (TLS is not negotiated), but the connector type is the same.
        SslMode::Disable | SslMode::VerifyCa | SslMode::VerifyFull => {
            let mut roots = rustls::RootCertStore::empty();
            if mode != SslMode::Disable {
                let native = rustls_native_certs::load_native_certs();
                for cert in native.certs {
                    let _ = roots.add(cert);
                }
                if let Some(path) = rootcert {
                    use rustls::pki_types::pem::PemObject;
                    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
                        .map_err(|e| format!("sslrootcert {path}: {e}"))?;
                    for cert in certs {
                        roots.add(cert.map_err(|e| format!("sslrootcert {path}: {e}"))?).map_err(|e| e.to_string())?;
                    }
                }
                if roots.is_empty() {
                    return Err(format!(
                        "sslmode={}: no root certificates (system store empty, no sslrootcert)",
                        if mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
                    ));
                }
            }
            if mode == SslMode::VerifyCa {
                let chain = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| e.to_string())?;
                return Ok(builder
                    .dangerous()
                    .with_custom_certificate_verifier(std::sync::Arc::new(ChainOnly(chain)))
                    .with_no_client_auth());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        SslMode::Prefer | SslMode::Require => builder
            .dangerous()
            .with_custom_certificate_verifier(std::sync::Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    })
}

/// sslmode=require: like libpq, the channel is encrypted but the server's certificate is not checked (the
/// handshake signatures still are).
#[derive(Debug)]
struct AnyCertificate(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// sslmode=verify-ca: the chain is verified as for verify-full; only a certificate that does not name the host is
/// accepted anyway (libpq's verify-ca).
#[derive(Debug)]
struct ChainOnly(std::sync::Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. })) => {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A pool listed for `scheduler_db_pool_connections`, as long as its owner keeps this alive.
pub struct ReportedPool {
    stage: String,
    pool: DbPool,
}

static REPORTED: std::sync::Mutex<Vec<std::sync::Weak<ReportedPool>>> = std::sync::Mutex::new(Vec::new());

/// Lists `pool` under `stage` until the returned handle is dropped (a restarted stage's old pool disappears).
pub fn report_pool(stage: &str, pool: &DbPool) -> std::sync::Arc<ReportedPool> {
    let r = std::sync::Arc::new(ReportedPool { stage: stage.to_owned(), pool: pool.clone() });
    REPORTED.lock().unwrap().push(std::sync::Arc::downgrade(&r));
    r
}

/// (stage, connections in use, idle connections) of every pool this process reports, summed by stage.
pub fn pool_states() -> Vec<(String, u32, u32)> {
    let mut listed = REPORTED.lock().unwrap();
    listed.retain(|w| w.strong_count() > 0);
    let mut out: Vec<(String, u32, u32)> = Vec::new();
    for r in listed.iter().filter_map(|w| w.upgrade()) {
        let s = r.pool.state();
        let (in_use, idle) = (s.connections - s.idle_connections, s.idle_connections);
        match out.iter_mut().find(|o| o.0 == r.stage) {
            Some(o) => {
                o.1 += in_use;
                o.2 += idle;
            }
            None => out.push((r.stage.clone(), in_use, idle)),
        }
    }
    out
}

/// Applies pending migrations; returns the versions applied. Blocking: the async migration harness panics inside an
/// actix System, so call it before the System starts or through `run_migrations`. Connects like the pools (TLS per
/// sslmode), but without a statement timeout: a migration may take long.
pub fn run_migrations_blocking(url: &str) -> anyhow::Result<Vec<String>> {
    let settings = DatabaseSettings { url: url.into(), ..DatabaseSettings::default() };
    let connector =
        Connector::with_statement_timeout(&settings, 0).map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    // Its own runtime, with a worker thread to drive the connection while the harness blocks on it.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let _enter = rt.enter();
    let conn = rt
        .block_on(connector.establish())
        .map_err(|e| anyhow::anyhow!("cannot connect to the database for migrations: {e}"))?;
    let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::from(conn);
    // Several processes may start at once: one migrates, the others wait and then find nothing pending.
    diesel::RunQueryDsl::execute(diesel::sql_query("SELECT pg_advisory_lock(7261737)"), &mut conn)?;
    let applied = conn.run_pending_migrations(MIGRATIONS).map_err(|e| anyhow::anyhow!("migration failed: {e}"))?;
    let applied = applied.into_iter().map(|v| v.to_string()).collect();
    drop(conn);
    drop(_enter);
    rt.shutdown_background();
    Ok(applied)
}

/// `run_migrations_blocking` on a blocking thread, for async callers.
pub async fn run_migrations(url: &str) -> anyhow::Result<Vec<String>> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || run_migrations_blocking(&url)).await?
}

/// Creates an empty database `name` next to the one `base_url` points at, and returns its URL. Used by tests (one
/// fresh database each) and benchmarks. `name` must be a plain identifier.
pub async fn create_database(base_url: &str, name: &str) -> anyhow::Result<String> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "database name {name:?} must be lowercase letters, digits and '_'"
    );
    let mut conn = AsyncPgConnection::establish(base_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    diesel::sql_query(format!("CREATE DATABASE {name}")).execute(&mut conn).await?;
    let mut url = url::Url::parse(base_url)?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// Drops a database made by `create_database`, disconnecting its sessions.
pub async fn drop_database(base_url: &str, name: &str) -> anyhow::Result<()> {
    use diesel_async::{AsyncConnection, RunQueryDsl};
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    let mut conn = AsyncPgConnection::establish(base_url).await?;
    diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await?;
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// Postgres URL, e.g. postgres://user:password@host:5432/db. The password is redacted by `config`.
    /// `?sslmode=` `prefer` (default), `disable`, `require`, `verify-ca` or `verify-full` (the last two optionally with
    /// `&sslrootcert=<PEM file>`) selects TLS; see the README.
    pub url: crate::secret::SecretUrl,
    /// The password, when it is not in the URL (libpq's PGPASSWORD; `SCHEDULER_DATABASE__PASSWORD`). Overrides the
    /// URL's. Redacted by `config` and `Debug`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<crate::secret::Secret>,
    /// Maximum connections in the pool.
    pub pool_size: u32,
    /// Connections kept open while idle.
    pub min_idle: u32,
    /// How long to wait for a connection before an operation fails; also the limit for opening one (TCP and TLS).
    pub connect_timeout_ms: u64,
    /// Every statement is cancelled by the server after this long (ms; 0: no limit). Set per connection.
    pub statement_timeout_ms: u64,
    /// TCP keepalive: probes start after the connection was idle this long (seconds; 0: keepalive off), so a dead
    /// server or a dropped NAT entry is noticed instead of hanging.
    pub tcp_keepalive_secs: u64,
}

impl DatabaseSettings {
    /// Moves `password` into the URL's user info (percent-encoded), so every connection (pools, migrations, child
    /// processes) uses it; the URL stays a [`crate::secret::SecretUrl`], so it is still never printed.
    pub fn merge_password(&mut self) -> Result<(), String> {
        let Some(password) = &self.password else { return Ok(()) };
        let mut u = url::Url::parse(&self.url).map_err(|e| format!("database.url: not a URL: {e}"))?;
        u.set_password(Some(password.expose()))
            .map_err(|_| "database.password: the URL has no host to log in to".to_owned())?;
        self.url = u.to_string().into();
        Ok(())
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/scheduler".into(),
            password: None,
            pool_size: 16,
            min_idle: 2,
            connect_timeout_ms: 5_000,
            statement_timeout_ms: 30_000,
            tcp_keepalive_secs: 60,
        }
    }
}

/// Can the database be reached now? A fresh connection (the way every connection is opened) and `SELECT 1`,
/// bounded by the connect timeout: the circuit breaker's probe, which must not depend on a pool whose connections
/// may all be dead.
pub async fn probe(settings: &DatabaseSettings) -> Result<(), String> {
    let check = async {
        let connector = Connector::new(settings)?;
        let (client, conn) = connector.connect().await.map_err(|e| describe(&e))?;
        let driver = actix_rt::spawn(conn);
        let r = client.simple_query("SELECT 1").await.map(|_| ()).map_err(|e| describe(&e));
        driver.abort();
        r
    };
    match tokio::time::timeout(Duration::from_millis(settings.connect_timeout_ms), check).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {} ms", settings.connect_timeout_ms)),
    }
}

/// Sets `scheduler_db_pool_connections` from every pool this process has open (at scrape time: `/metrics` calls
/// it). A stage whose pool is gone (restarted, or not running here) reads 0 rather than its last value.
pub fn refresh_pool_metrics() {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let gauge = &crate::metrics::metrics().db_pool_connections;
    let states = pool_states();
    let mut seen = SEEN.lock().unwrap();
    for (stage, ..) in &states {
        if !seen.contains(stage) {
            seen.push(stage.clone());
        }
    }
    for stage in seen.iter() {
        let (in_use, idle) = states.iter().find(|s| &s.0 == stage).map(|s| (s.1, s.2)).unwrap_or((0, 0));
        gauge.with_label_values(&[stage.as_str(), "in_use"]).set(in_use as i64);
        gauge.with_label_values(&[stage.as_str(), "idle"]).set(idle as i64);
    }
}

/// LISTENs on `channel` on a dedicated connection and calls `on` with each notification's payload, for ever:
/// reconnects a second after the connection is lost (notifications sent meanwhile are missed; callers have a
/// fallback: a timer, a heartbeat).
pub async fn listen(settings: DatabaseSettings, channel: &'static str, mut on: impl FnMut(&str)) {
    use futures::StreamExt;
    // The same connections as the pools: TLS per sslmode, connect timeout, TCP keepalive (a LISTEN connection is
    // idle most of the time: keepalive is what notices that it died).
    let connector = match Connector::new(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "database.url unusable; no notification connection");
            return;
        }
    };
    loop {
        match connector.connect().await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = futures::channel::mpsc::unbounded();
                let stream =
                    futures::stream::poll_fn(move |cx| conn.poll_message(cx)).map(|r| r.map_err(|e| e.to_string()));
                let driver = stream.forward(futures::SinkExt::sink_map_err(tx, |e| e.to_string()));
                let listen = async {
                    client.batch_execute(&format!("LISTEN {channel}")).await?;
                    while let Some(msg) = rx.next().await {
                        if let tokio_postgres::AsyncMessage::Notification(n) = msg {
                            on(n.payload());
                        }
                    }
                    Ok::<_, tokio_postgres::Error>(())
                };
                tokio::select! {
                    r = driver => if let Err(e) = r { tracing::warn!(error = %e, "notification connection lost") },
                    r = listen => if let Err(e) = r { tracing::warn!(error = %e, "LISTEN failed") },
                }
            }
            Err(e) => tracing::warn!(error = %describe(&e), "cannot open the notification connection"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
