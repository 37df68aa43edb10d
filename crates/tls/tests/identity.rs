//! Certificate identity of the parties (R-SEC-5): the name ↔ party mapping
//! round-trips and refuses anything else, `peer_party` reads exactly one
//! party from a certificate, and a box refuses its own certificate when it
//! names another party or comes from another CA.

use ifrelay_devpki::DevPki;
use ifrelay_proto::{AgencyCode, Party, Role};
use ifrelay_tls::identity::{
    dns_name, party_from_dns, peer_party, server_name, verify_peer, IdentityError,
};
use ifrelay_tls::TlsError;

fn agency(code: &str) -> AgencyCode {
    AgencyCode::new(code).expect("valid agency code")
}

#[test]
fn every_party_round_trips_through_its_name() {
    let parties = [
        Party::core(),
        Party::is(agency("131016")),
        Party::ims(agency("131016")),
        Party::is(agency("011002")),
        Party::ims(agency("MINISTRY-01")),
    ];
    for party in parties {
        let name = dns_name(&party);
        assert!(name.ends_with(".link.invalid"), "{name}");
        assert_eq!(party_from_dns(&name), Some(party.clone()));
        server_name(&party).expect("server name");
    }
}

#[test]
fn garbage_names_are_rejected() {
    for name in [
        "localhost",
        "core.link.invalid.evil",
        "is-131016.link.invalid.example",
        "is-131016",
        "is-.link.invalid",
        "is-131016.Link.Invalid",
        "ims-13/1016.link.invalid",
        "is-１３１０１６.link.invalid",
        "*.link.invalid",
        "is-*.link.invalid",
    ] {
        assert_eq!(party_from_dns(name), None, "{name:?}");
    }
}

#[test]
fn peer_party_reads_the_one_party_name() {
    let pki = DevPki::new().expect("CA");
    let ims = Party::ims(agency("131016"));
    let cert = pki.issue(&ims).expect("cert");
    assert_eq!(peer_party(&cert.chain()), Ok(ims.clone()));
    assert_eq!(verify_peer(&cert.chain(), &ims), Ok(ims.clone()));
    assert_eq!(
        verify_peer(&cert.chain(), &Party::is(agency("131016"))),
        Err(IdentityError::WrongParty {
            expected: Party::is(agency("131016")),
            found: ims,
        })
    );
}

#[test]
fn other_names_beside_the_party_name_are_ignored() {
    let pki = DevPki::new().expect("CA");
    let cert = pki
        .issue_with_names(&[
            "box1.example",
            "core.link.invalid",
            "core.link.invalid",
            "CORE.link.invalid",
        ])
        .expect("cert");
    assert_eq!(peer_party(&cert.chain()), Ok(Party::core()));
}

#[test]
fn certificate_without_party_name_has_no_identity() {
    let pki = DevPki::new().expect("CA");
    let cert = pki.issue_with_names(&["box1.example"]).expect("cert");
    assert_eq!(
        peer_party(&cert.chain()),
        Err(IdentityError::NoIdentity {
            dns_names: vec!["box1.example".to_owned()]
        })
    );
    let bare = pki.issue_with_names(&[]).expect("cert");
    assert!(matches!(
        peer_party(&bare.chain()),
        Err(IdentityError::NoIdentity { dns_names }) if dns_names.is_empty()
    ));
}

#[test]
fn certificate_naming_two_parties_is_ambiguous() {
    let pki = DevPki::new().expect("CA");
    let cert = pki
        .issue_with_names(&["is-131016.link.invalid", "ims-131016.link.invalid"])
        .expect("cert");
    let err = peer_party(&cert.chain()).expect_err("ambiguous");
    assert!(matches!(
        &err,
        IdentityError::AmbiguousIdentity { parties } if parties.len() == 2
    ));
    assert!(err.to_string().contains("is/131016, ims/131016"), "{err}");
}

#[test]
fn own_certificate_must_name_this_box_and_chain_to_the_ca() {
    let pki = DevPki::new().expect("CA");
    let me = Party::is(agency("131016"));
    let mine = pki
        .material(&pki.issue(&me).expect("cert"))
        .expect("material");
    mine.verify_own_identity(&me).expect("own identity");

    let err = mine
        .verify_own_identity(&Party::is(agency("272124")))
        .expect_err("another box's identity");
    assert!(matches!(err, TlsError::OwnCertificate { .. }));
    assert!(err.to_string().contains("names is/131016"), "{err}");

    let foreign = DevPki::new().expect("foreign CA");
    let issued_elsewhere = foreign.issue(&me).expect("cert");
    let material = ifrelay_tls::TlsMaterial::from_der(
        std::slice::from_ref(pki.ca_cert()),
        issued_elsewhere.chain(),
        issued_elsewhere.key(),
    )
    .expect("material");
    let err = material.verify_own_identity(&me).expect_err("foreign CA");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[test]
fn role_is_part_of_the_identity() {
    let name = dns_name(&Party::ims(agency("131016")));
    let party = party_from_dns(&name).expect("party");
    assert_eq!(party.role, Role::Ims);
}
