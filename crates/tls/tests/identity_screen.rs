//! Identities are screened like header values (docs/protocol.md §6): a
//! certificate any of whose DNS names holds a My Number is refused with
//! its own error and reason code, no party is made of such a name, and no
//! error message repeats the number — a dialler's name-mismatch error from
//! a real handshake included.

use ifrelay_devpki::DevPki;
use ifrelay_proto::screen::contains_my_number;
use ifrelay_proto::{AgencyCode, Party, Reason};
use ifrelay_tls::identity::{
    checked_dns_name, party_from_dns, peer_party, server_name, verify_peer, IdentityError,
};

fn agency(code: &str) -> AgencyCode {
    AgencyCode::new(code).expect("valid agency code")
}

#[test]
fn a_certificate_naming_a_my_number_is_refused_and_the_error_withholds_it() {
    let pki = DevPki::new().expect("CA");
    for names in [
        &["is-123456789018.link.invalid"][..],
        &["ims-123456789018.link.invalid"],
        &["is-1234-5678-9018.link.invalid"],
        // Beside a good party name, or in a name that is no party's: the
        // whole certificate is refused, and the name never listed.
        &["is-131016.link.invalid", "is-123456789018.link.invalid"],
        &["host-123456789018.example"],
    ] {
        let cert = pki.issue_with_names(names).expect("cert");
        let err = peer_party(&cert.chain()).expect_err("refused");
        assert_eq!(err, IdentityError::MyNumberInName, "{names:?}");
        assert_eq!(err.reason(), Reason::MyNumber);
        let expected = Party::is(agency("131016"));
        assert_eq!(
            verify_peer(&cert.chain(), &expected),
            Err(IdentityError::MyNumberInName)
        );
        for printed in [err.to_string(), format!("{err:?}")] {
            assert!(!contains_my_number(&printed), "{printed}");
            assert!(!printed.contains("9018"), "{printed}");
        }
    }
}

#[test]
fn twelve_digits_without_a_valid_check_digit_still_name_a_party() {
    // The agency-code format allows twelve digits; only a My Number is
    // refused.
    let pki = DevPki::new().expect("CA");
    let cert = pki
        .issue_with_names(&["is-123456789012.link.invalid"])
        .expect("cert");
    assert_eq!(
        peer_party(&cert.chain()),
        Ok(Party::is(agency("123456789012")))
    );
}

#[test]
fn no_party_is_made_of_a_name_holding_a_my_number() {
    for name in [
        "is-123456789018.link.invalid",
        "ims-123456789018.link.invalid",
        "is-1234-5678-9018.link.invalid",
        "is-AB123456789018.link.invalid",
    ] {
        assert_eq!(party_from_dns(name), None, "{name}");
    }
    // A party built some other way (a configuration file) has no
    // certificate name, and the refusal does not print its agency.
    let party = Party::is(agency("123456789018"));
    let err = checked_dns_name(&party).expect_err("unrepresentable");
    assert!(matches!(err, IdentityError::Unrepresentable { .. }));
    assert_eq!(err.reason(), Reason::Identity);
    assert!(!err.to_string().contains("9018"), "{err}");
    assert!(err.to_string().contains("holds a My Number"), "{err}");
    assert!(server_name(&party).is_err());
}

#[tokio::test]
async fn a_dialled_server_naming_a_my_number_fails_without_the_name_in_the_error() {
    use ifrelay_tls::tokio_rustls::{TlsAcceptor, TlsConnector};
    use tokio::net::{TcpListener, TcpStream};

    let pki = DevPki::new().expect("CA");
    let rogue = pki
        .issue_with_names(&["is-123456789018.link.invalid"])
        .expect("cert");
    let server = pki
        .material(&rogue)
        .expect("material")
        .server_config()
        .expect("server config");
    let dialler = pki
        .material(&pki.issue(&Party::is(agency("131016"))).expect("cert"))
        .expect("material")
        .client_config()
        .expect("client config");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.expect("accept");
        // The client gives up during the handshake.
        let _ = TlsAcceptor::from(server).accept(tcp).await;
    });
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let expected = server_name(&Party::is(agency("271004"))).expect("name");
    let err = TlsConnector::from(dialler)
        .connect(expected, tcp)
        .await
        .expect_err("the name does not fit");
    let printed = format!("{err} / {err:?}");
    assert!(printed.contains("not valid for name"), "{printed}");
    assert!(
        printed.contains("<withheld: holds a My Number>"),
        "{printed}"
    );
    assert!(!printed.contains("123456789018"), "{printed}");
    accept.await.expect("server task");
}
