//! Database connections: TLS chosen by the URL's sslmode, the statement timeout set on every pooled connection.

mod common;

use common::TestDb;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use sqs_scheduler::db::{self, Connector};

#[derive(diesel::QueryableByName)]
struct Setting {
    #[diesel(sql_type = Text)]
    statement_timeout: String,
}

#[tokio::test]
async fn pooled_connections_have_the_statement_timeout_and_sslmode_disable_connects() {
    let db = TestDb::new().await;
    let mut settings = db.settings();
    settings.url = format!("{}?sslmode=disable", db.url).into();
    settings.statement_timeout_ms = 1_234;
    let pool = db::build_pool(&settings);
    let mut conn = pool.get().await.expect("sslmode=disable connects");
    let s: Setting = diesel::sql_query("SHOW statement_timeout").get_result(&mut conn).await.unwrap();
    assert_eq!(s.statement_timeout, "1234ms");
    // The server enforces it.
    let e = diesel::sql_query("SELECT pg_sleep(3)").execute(&mut conn).await.unwrap_err();
    assert!(e.to_string().contains("statement timeout"), "{e}");
    drop(conn);
    // The default: 30 s; 0: none.
    settings.statement_timeout_ms = 0;
    let pool = db::build_pool(&settings);
    let s: Setting =
        diesel::sql_query("SHOW statement_timeout").get_result(&mut pool.get().await.unwrap()).await.unwrap();
    assert_eq!(s.statement_timeout, "0");
    let pool = db::build_pool(&db.settings());
    let s: Setting =
        diesel::sql_query("SHOW statement_timeout").get_result(&mut pool.get().await.unwrap()).await.unwrap();
    assert_eq!(s.statement_timeout, "30s");
}

/// sslmode=require and verify-full never fall back to plain text: against a server without TLS (the local one)
/// the connection fails, saying why; against one with TLS it is encrypted.
#[tokio::test]
async fn sslmode_require_never_connects_in_plain_text() {
    let db = TestDb::new().await;
    for mode in ["require", "verify-full"] {
        let mut settings = db.settings();
        settings.url = format!("{}?sslmode={mode}", db.url).into();
        let connector = Connector::new(&settings).unwrap_or_else(|e| panic!("sslmode={mode}: {e}"));
        match connector.connect().await {
            Err(e) => {
                let msg = db::describe(&e);
                eprintln!("sslmode={mode}: refused: {msg}");
                assert!(msg.contains("TLS") || msg.contains("certificate"), "sslmode={mode}: unclear error {msg}");
            }
            Ok((client, conn)) => {
                tokio::spawn(conn);
                eprintln!("sslmode={mode}: connected");
                let row = client.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[]).await;
                assert!(row.unwrap().get::<_, bool>(0), "sslmode={mode} connected without TLS");
            }
        }
    }
}

#[test]
fn sslmode_values_are_checked() {
    for ok in [
        "",
        "?sslmode=disable",
        "?sslmode=require",
        "?sslmode=prefer",
        "?sslmode=verify-ca",
        "?sslmode=verify-full&application_name=x",
    ] {
        assert!(db::parse_url(&format!("postgres://u@h/db{ok}")).is_ok(), "{ok}");
    }
    for bad in ["?sslmode=allow", "?sslmode=bogus", "?sslmode=require&sslrootcert=/x.pem"] {
        let e = db::parse_url(&format!("postgres://u@h/db{bad}")).err().unwrap_or_else(|| panic!("{bad} accepted"));
        assert!(e.contains("sslmode") || e.contains("sslrootcert"), "{bad}: {e}");
    }
    // The rest of the URL still reaches tokio-postgres.
    let p = db::parse_url("postgres://u@h:5433/db?sslmode=require&application_name=sched").unwrap();
    assert_eq!(p.sslmode, db::SslMode::Require);
    assert_eq!(p.config.get_application_name(), Some("sched"));
    assert_eq!(p.config.get_dbname(), Some("db"));
}

/// A server that answers the TLS request with "no": sslmode=require fails saying so, it never goes on in plain
/// text (the local server has TLS, so this one stands in for a server without it).
#[tokio::test]
async fn sslmode_require_against_a_server_without_tls_fails_clearly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut request = [0u8; 8];
        sock.read_exact(&mut request).await.unwrap();
        // SSLRequest: length 8, code 80877103.
        assert_eq!(request, [0, 0, 0, 8, 4, 210, 22, 47], "the first message must be the TLS request");
        sock.write_all(b"N").await.unwrap();
        // Anything after the refusal would be a plain-text startup message.
        let mut rest = Vec::new();
        let _ = sock.read_to_end(&mut rest).await;
        rest
    });
    let settings = sqs_scheduler::configuration::DatabaseSettings {
        url: format!("postgres://postgres@127.0.0.1:{port}/x?sslmode=require").into(),
        ..Default::default()
    };
    let e = Connector::new(&settings).unwrap().connect().await.err().expect("connected without TLS");
    let msg = db::describe(&e);
    assert!(msg.contains("TLS"), "{msg}");
    assert!(server.await.unwrap().is_empty(), "a plain-text startup message followed the refusal");
}
