//! The box holds a server it dials to the same identity rule as a client
//! that dials it (R-SEC-5): the certificate must carry exactly one party
//! name, the expected one. webpki alone would accept a certificate that
//! names the expected party among others.

use std::time::Duration;

use ifrelay::net::{Link, LinkError};
use ifrelay_devpki::DevPki;
use ifrelay_proto::{AgencyCode, Party};
use tokio::io::AsyncReadExt;

/// Serves TLS with a certificate naming `names` and returns its address.
async fn server(pki: &DevPki, names: &[&str]) -> std::net::SocketAddr {
    let issued = pki.issue_with_names(names).expect("server cert");
    let config = pki
        .material(&issued)
        .expect("material")
        .server_config()
        .expect("config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 64];
                    let _ = tls.read(&mut buf).await;
                }
            });
        }
    });
    addr
}

async fn dial(pki: &DevPki, addr: std::net::SocketAddr, party: &Party) -> Result<Link, LinkError> {
    let own = pki
        .issue(&Party::is(AgencyCode::new("271004").expect("code")))
        .expect("client cert");
    let client = pki
        .material(&own)
        .expect("material")
        .client_config()
        .expect("config");
    Link::connect(
        addr,
        party,
        client,
        Duration::from_secs(5),
        Duration::from_secs(5),
        1 << 20,
    )
    .await
}

#[tokio::test]
async fn a_server_naming_two_parties_is_refused_and_one_naming_one_is_taken() {
    let pki = DevPki::new().expect("CA");
    let ims = Party::ims(AgencyCode::new("131016").expect("code"));

    let two = server(&pki, &["ims-131016.link.invalid", "core.link.invalid"]).await;
    match dial(&pki, two, &ims).await {
        Err(LinkError::Identity { text, .. }) => assert!(!text.is_empty()),
        Err(other) => panic!("refused for another reason: {other}"),
        Ok(_) => panic!("a certificate naming two parties was taken"),
    }

    let one = server(&pki, &["ims-131016.link.invalid"]).await;
    dial(&pki, one, &ims)
        .await
        .expect("the right single name is taken");
}
