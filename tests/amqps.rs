//! amqps://: the RabbitMQ transport over TLS, through a TLS-terminating proxy (tokio-rustls) in front of the local
//! broker, with certificates made by `openssl` for this test: a private CA, a server certificate for `localhost`, and
//! a client certificate the proxy requires (mutual TLS). Without the CA the connection is refused (unknown issuer);
//! without the client certificate too; with both, messages go through and come back.

mod common;

use common::RabbitQueueSetCleanup;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sqs_scheduler::configuration::{RabbitMqSettings, TransportSettings};
use sqs_scheduler::transport::rabbitmq::{Prefetch, RabbitMqTransport};
use sqs_scheduler::transport::{Queue, Transport};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (apt-get install openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// ca.pem/ca.key, server.pem/server.key (localhost, 127.0.0.1), client.pem/client.key, all signed by the CA.
fn certificates() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sched-amqps-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=sched test CA",
        ],
    );
    std::fs::write(dir.join("server.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, cn) in [("server", "localhost"), ("client", "sched-client")] {
        // PKCS#8 keys (-newkey writes PKCS#8), as tls_client_key_file expects.
        openssl(
            &dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            &dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
    dir
}

/// Listens on 127.0.0.1 (a free port), requires a client certificate signed by the CA, and relays each TLS
/// connection to the local broker in clear.
async fn tls_proxy(dir: &Path, broker: String) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(dir.join("ca.pem")).unwrap()).unwrap();
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().unwrap();
    let chain: Vec<CertificateDer> =
        CertificateDer::pem_file_iter(dir.join("server.pem")).unwrap().map(|c| c.unwrap()).collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let (acceptor, broker) = (acceptor.clone(), broker.clone());
            tokio::spawn(async move {
                // A refused handshake (no CA, no client certificate) just ends this connection.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut upstream) = tokio::net::TcpStream::connect(broker).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    port
}

async fn connect(settings: &RabbitMqSettings) -> anyhow::Result<RabbitMqTransport> {
    let t = TransportSettings { visibility_timeout_secs: 10, ..Default::default() };
    let s = RabbitMqSettings { reconnect_max_ms: 200, ..settings.clone() };
    tokio::time::timeout(Duration::from_secs(20), RabbitMqTransport::create_queues(&s, &t, Prefetch::default()))
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))?
}

#[actix_rt::test]
async fn amqps_with_a_private_ca_and_a_client_certificate() {
    let dir = certificates();
    let plain = url::Url::parse(&common::rabbitmq_url()).unwrap();
    let broker = format!("{}:{}", plain.host_str().unwrap(), plain.port().unwrap_or(5672));
    let port = tls_proxy(&dir, broker).await;
    let file = |n: &str| Some(dir.join(n).to_string_lossy().into_owned());
    let base = RabbitMqSettings {
        url: format!(
            "amqps://{}:{}@localhost:{port}{}",
            plain.username(),
            plain.password().unwrap_or(""),
            plain.path()
        )
        .into(),
        queue_prefix: format!("amqps{}", rand::random::<u32>()),
        ..Default::default()
    };
    let _cleanup = RabbitQueueSetCleanup::new(&RabbitMqSettings { url: common::rabbitmq_url().into(), ..base.clone() });

    // The system does not trust the private CA.
    let e = format!("{:#}", connect(&base).await.expect_err("connected without trusting the CA"));
    assert!(e.contains("connecting to RabbitMQ at amqps://") && e.to_lowercase().contains("certificate"), "{e}");
    // Trusted, but the proxy wants a client certificate.
    let with_ca = RabbitMqSettings { tls_ca_file: file("ca.pem"), ..base.clone() };
    assert!(connect(&with_ca).await.is_err(), "connected without a client certificate");
    // Both: the transport works over TLS.
    let full = RabbitMqSettings {
        tls_client_cert_file: file("client.pem"),
        tls_client_key_file: file("client.key"),
        ..with_ca.clone()
    };
    full.validate().unwrap();
    let t = connect(&full).await.expect("amqps with the CA and the client certificate");
    let bodies: Vec<String> = (0..25).map(|i| format!(r#"{{"tls":{i}}}"#)).collect();
    let sent = t.send(Queue::Inbound, &bodies).await.unwrap();
    assert!(sent.iter().all(|r| r.is_ok()), "{sent:?}");
    let mut got = Vec::new();
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while got.len() < bodies.len() && std::time::Instant::now() < until {
        got.extend(t.receive(Queue::Inbound, 10, Duration::from_secs(1)).await.unwrap());
    }
    let mut seen: Vec<String> = got.iter().map(|m| m.body.clone()).collect();
    seen.sort();
    let mut want = bodies.clone();
    want.sort();
    assert_eq!(seen, want);
    let receipts: Vec<String> = got.iter().map(|m| m.receipt.clone()).collect();
    assert!(t.delete(Queue::Inbound, &receipts).await.unwrap().is_empty());

    // A missing or non-PEM file is refused at start, naming the key.
    let bad = RabbitMqSettings { tls_ca_file: file("server.ext"), ..base.clone() };
    assert!(bad.validate().unwrap_err().contains("rabbitmq.tls_ca_file"));
    let half = RabbitMqSettings { tls_client_cert_file: file("client.pem"), ..base };
    assert!(half.validate().unwrap_err().contains("tls_client_key_file"));
    drop(t);
    let _ = std::fs::remove_dir_all(&dir);
}
