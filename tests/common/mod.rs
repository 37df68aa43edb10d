//! Shared by the firmware's CLI tests: a box's development PKI and a
//! valid configuration under one folder.

#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

use ifrelay::config::{
    BoxSection, ConfigFile, EndpointSection, ListenSection, PeersSection, ServiceSection,
    StoreSection, TimeoutsSection, TlsSection, TrustSection,
};
use ifrelay_devpki::DevPki;
use ifrelay_proto::{AgencyCode, Party};

/// A box's PKI and configuration under one folder.
pub struct Site<'a> {
    dir: &'a Path,
}

impl<'a> Site<'a> {
    pub fn new(dir: &'a Path) -> Self {
        let pki = DevPki::new().expect("CA");
        pki.write_ca(dir).expect("CA file");
        pki.operator().write_roots(dir).expect("roots file");
        pki.issue(&Party::is(AgencyCode::new("131016").expect("code")))
            .expect("cert")
            .write(dir, "box")
            .expect("write");
        Site { dir }
    }

    /// A valid configuration listening on `core_side` (agency side on
    /// port 0), with the store at `store` relative to the folder.
    pub fn config(&self, core_side: &str, store: &str) -> PathBuf {
        let loopback = vec!["127.0.0.0/8".to_owned()];
        let file = ConfigFile {
            appliance: BoxSection {
                agency: "131016".to_owned(),
                name: None,
            },
            listen: ListenSection {
                core_side: core_side.to_owned(),
                agency_side: "127.0.0.1:0".to_owned(),
            },
            tls: TlsSection {
                ca: self.dir.join("ca.pem"),
                cert: self.dir.join("box.pem"),
                key: self.dir.join("box.key"),
            },
            store: StoreSection {
                path: self.dir.join(store),
                cache_mib: 16,
            },
            core: EndpointSection {
                address: "127.0.0.1:9".to_owned(),
                allow: loopback.clone(),
            },
            ims: EndpointSection {
                address: "127.0.0.1:9".to_owned(),
                allow: loopback.clone(),
            },
            peers: PeersSection {
                allow: loopback,
                ..PeersSection::default()
            },
            limits: Default::default(),
            // Nothing answers at the core and IMS addresses: do not wait
            // long for a drain that cannot happen.
            timeouts: TimeoutsSection {
                shutdown_grace_ms: 500,
                ..TimeoutsSection::default()
            },
            service: ServiceSection::default(),
            rates: Default::default(),
            trust: TrustSection {
                distribution_roots: self.dir.join("distribution-roots.pem"),
                ..TrustSection::default()
            },
            retention: Default::default(),
            console: Default::default(),
        };
        let path = self.dir.join("ifrelay.toml");
        std::fs::write(&path, file.to_toml_string().expect("toml")).expect("write");
        path
    }
}
