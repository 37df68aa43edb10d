//! Real TLS handshakes on loopback between parties of one development PKI
//! (R-SEC-5: every connected device is authenticated by its certificate).
//!
//! Covers: an interface-system server and an intermediate-server client
//! authenticating each other and reading each other's party; a client
//! without a certificate, a client certificate from another CA, and a
//! TLS 1.2-only client refused by the server; a server certificate that
//! names another party, or comes from another CA, refused by the client.

use std::sync::Arc;
use std::time::Duration;

use ifrelay_devpki::DevPki;
use ifrelay_proto::{AgencyCode, Party};
use ifrelay_tls::identity::{connection_party, server_name, IdentityError};
use ifrelay_tls::rustls::{self, ClientConfig, ServerConfig};
use ifrelay_tls::tokio_rustls::{TlsAcceptor, TlsConnector};
use ifrelay_tls::{provider, TlsMaterial};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LIMIT: Duration = Duration::from_secs(10);

fn agency(code: &str) -> AgencyCode {
    AgencyCode::new(code).expect("valid agency code")
}

/// What each side saw of one connection attempt.
struct Outcome {
    /// The client's party as read by the server, or the server's error.
    server: Result<Result<Party, IdentityError>, String>,
    /// The server's party as read by the client and the bytes it received,
    /// or the client's error (at handshake or at the first read).
    client: Result<(Result<Party, IdentityError>, Vec<u8>), String>,
}

async fn connect(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let party = connection_party(tls.get_ref().1);
        tls.write_all(b"hello").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.map_err(|e| e.to_string())?;
        Ok::<_, String>(party)
    });
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let party = connection_party(tls.get_ref().1);
        let mut buf = Vec::new();
        tls.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((party, buf))
    };
    let client = tokio::time::timeout(LIMIT, client)
        .await
        .expect("client finishes in time");
    let server = tokio::time::timeout(LIMIT, server_task)
        .await
        .expect("server finishes in time")
        .expect("server task does not panic");
    Outcome { server, client }
}

struct Net {
    pki: DevPki,
    is: TlsMaterial,
    ims: TlsMaterial,
}

fn net() -> Net {
    let pki = DevPki::new().expect("CA");
    let is = pki
        .material(&pki.issue(&Party::is(agency("131016"))).expect("IS cert"))
        .expect("IS material");
    let ims = pki
        .material(&pki.issue(&Party::ims(agency("131016"))).expect("IMS cert"))
        .expect("IMS material");
    Net { pki, is, ims }
}

fn is_name() -> ServerName<'static> {
    server_name(&Party::is(agency("131016"))).expect("server name")
}

#[tokio::test]
async fn is_server_and_ims_client_from_pem_files_authenticate_each_other() {
    let pki = DevPki::new().expect("CA");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = pki.write_ca(dir.path()).expect("write CA");
    let (is_cert, is_key) = pki
        .issue(&Party::is(agency("131016")))
        .expect("IS cert")
        .write(dir.path(), "is-131016")
        .expect("write IS");
    let (ims_cert, ims_key) = pki
        .issue(&Party::ims(agency("131016")))
        .expect("IMS cert")
        .write(dir.path(), "ims-131016")
        .expect("write IMS");

    let server = ifrelay_tls::server_config(&ca, &is_cert, &is_key).expect("server config");
    let client = ifrelay_tls::client_config(&ca, &ims_cert, &ims_key).expect("client config");
    let outcome = connect(server, client, is_name()).await;

    let server_saw = outcome.server.expect("server handshake");
    assert_eq!(server_saw, Ok(Party::ims(agency("131016"))));
    let (client_saw, bytes) = outcome.client.expect("client handshake");
    assert_eq!(client_saw, Ok(Party::is(agency("131016"))));
    assert_eq!(bytes, b"hello");
}

#[tokio::test]
async fn handshake_is_tls13() {
    let net = net();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let acceptor = TlsAcceptor::from(net.is.server_config().expect("server config"));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        let tls = acceptor.accept(tcp).await.expect("server handshake");
        tls.get_ref().1.protocol_version()
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let tls = TlsConnector::from(net.ims.client_config().expect("client config"))
        .connect(is_name(), tcp)
        .await
        .expect("client handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        server.await.expect("server task"),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let net = net();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_root_certificates(net.pki.roots().expect("roots"))
        .with_no_client_auth();
    let outcome = connect(
        net.is.server_config().expect("server config"),
        Arc::new(client),
        is_name(),
    )
    .await;
    let err = outcome.server.expect_err("server refuses");
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    assert!(outcome.client.is_err(), "client learns it was refused");
}

#[tokio::test]
async fn client_certificate_from_another_ca_is_refused() {
    let net = net();
    let foreign = DevPki::new().expect("foreign CA");
    let forged = foreign
        .issue(&Party::ims(agency("131016")))
        .expect("forged IMS cert");
    // The client trusts the real CA (so it accepts the server) but presents
    // a certificate the real CA never issued.
    let client = TlsMaterial::from_der(
        std::slice::from_ref(net.pki.ca_cert()),
        forged.chain(),
        forged.key(),
    )
    .expect("material");
    let outcome = connect(
        net.is.server_config().expect("server config"),
        client.client_config().expect("client config"),
        is_name(),
    )
    .await;
    let err = outcome.server.expect_err("server refuses");
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn tls12_only_client_is_refused() {
    let net = net();
    let client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("TLS 1.2")
        .with_root_certificates(net.pki.roots().expect("roots"))
        .with_client_auth_cert(net.ims.chain.clone(), net.ims.key.clone_key())
        .expect("client cert");
    let outcome = connect(
        net.is.server_config().expect("server config"),
        Arc::new(client),
        is_name(),
    )
    .await;
    assert!(outcome.server.is_err());
    assert!(outcome.client.is_err());
}

#[tokio::test]
async fn server_certificate_naming_another_party_is_refused_by_the_client() {
    let net = net();
    // The client dials the IS of agency 272124 but reaches the IS of 131016.
    let wrong_agency = server_name(&Party::is(agency("272124"))).expect("name");
    let outcome = connect(
        net.is.server_config().expect("server config"),
        net.ims.client_config().expect("client config"),
        wrong_agency,
    )
    .await;
    let err = outcome.client.expect_err("client refuses");
    assert!(err.contains("not valid for name"), "{err}");
    assert!(outcome.server.is_err());

    // The client dials an IS but an IMS answers with its (valid) certificate.
    let outcome = connect(
        net.ims.server_config().expect("server config"),
        net.is.client_config().expect("client config"),
        is_name(),
    )
    .await;
    let err = outcome.client.expect_err("client refuses");
    assert!(err.contains("not valid for name"), "{err}");
}

#[tokio::test]
async fn server_certificate_from_another_ca_is_refused_by_the_client() {
    let net = net();
    let foreign = DevPki::new().expect("foreign CA");
    let forged = foreign
        .material(&foreign.issue(&Party::is(agency("131016"))).expect("forged"))
        .expect("material");
    let outcome = connect(
        forged.server_config().expect("server config"),
        net.ims.client_config().expect("client config"),
        is_name(),
    )
    .await;
    let err = outcome.client.expect_err("client refuses");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn certificate_without_party_name_connects_but_has_no_identity() {
    let net = net();
    let anonymous = net
        .pki
        .material(
            &net.pki
                .issue_with_names(&["printer.example"])
                .expect("cert"),
        )
        .expect("material");
    let outcome = connect(
        net.is.server_config().expect("server config"),
        anonymous.client_config().expect("client config"),
        is_name(),
    )
    .await;
    assert!(matches!(
        outcome.server.expect("the CA vouches for the chain"),
        Err(IdentityError::NoIdentity { .. })
    ));
}
