//! `wss://` with a private CA: a TLS terminator (tokio-rustls, certificates made with rcgen) in
//! front of the real socketcluster-server, as a load balancer would be.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[path = "support/reference_launcher.rs"]
mod launcher;

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use sc_client::rustls;
use sc_client::{Client, Error};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

/// A CA (as PEM) and a TLS server configuration for `localhost` signed by it.
fn pki() -> (String, Arc<rustls::ServerConfig>) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "sc-client test CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der());
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key.into())
        .unwrap();
    (ca.pem(), Arc::new(config))
}

/// Terminates TLS on a free port of 127.0.0.1 and forwards to `backend`.
async fn tls_terminator(config: Arc<rustls::ServerConfig>, backend: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut up) = TcpStream::connect(("127.0.0.1", backend)).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn wss_with_a_custom_ca() {
    let server = common::Server::start(launcher::reference_server).await;
    let (ca_pem, config) = pki();
    let port = tls_terminator(config, server.port).await;
    let url = format!("wss://localhost:{port}");

    let client = timeout(
        common::WAIT,
        Client::builder(&url)
            .native_roots(false)
            .add_root_ca_pem(ca_pem.as_bytes())
            .connect(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(client.id().is_some());
    let back: serde_json::Value = client
        .invoke("echo", &json!({"over": "tls"}))
        .await
        .unwrap();
    assert_eq!(back, json!({"over": "tls"}));
    let mut ch = client.subscribe("secure");
    timeout(common::WAIT, ch.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    client.invoke_publish("secure", &1).await.unwrap();
    assert_eq!(common::next_message(&mut ch).await, json!(1));

    // With another CA the certificate is not trusted.
    let (other_ca, _) = pki();
    let err = timeout(
        common::WAIT,
        Client::builder(&url)
            .native_roots(false)
            .add_root_ca_pem(other_ca.as_bytes())
            .auto_reconnect(false)
            .connect(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        matches!(err, Error::Connect(ref why) if why.contains("TLS")),
        "{err:?}"
    );
}

#[test]
fn bad_ca_pem_is_a_config_error() {
    let err = Client::builder("wss://localhost:1")
        .add_root_ca_pem(b"not a pem")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}
