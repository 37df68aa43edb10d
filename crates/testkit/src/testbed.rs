//! A whole network on loopback: a development PKI, the core simulator,
//! boxes and their intermediate-server simulators, every one over real TLS
//! with a real redb file. Used by the integration tests, `ifrelay-demo`
//! and the benchmarks, so that all three exercise the same thing.
//!
//! Every box is started from a TOML file written here and read back with
//! [`Config::load`], the same path the real box takes. Its ports are
//! chosen before it starts and written in the file, so a restarted box
//! listens where its peers already look for it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ifrelay_devpki::{DevOperator, DevPki};
use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, ItemRow, MasterRow, Masters, Party, Prefix,
    PrefixEntry, RootKey,
};
use ifrelay_tls::TlsMaterial;

use crate::child::{BoxCommand, BoxProcess};
use crate::sim::core::CoreSim;
use crate::sim::ims::{ImsOptions, ImsSim};
use crate::sim::serve::NetOptions;
use ifrelay::config::{
    BoxSection, Config, ConfigFile, EndpointSection, ListenSection, PeersSection, ServiceSection,
    StoreSection, TlsSection, TrustSection,
};
use ifrelay::net::Link;
use ifrelay::supervisor::RunningBox;

/// Anything that can go wrong while building the testbed.
pub type TestbedError = Box<dyn std::error::Error + Send + Sync>;

/// The development PKI, its files under `dir/pki`: the network CA and
/// the national operator's distribution root (`distribution-roots.pem`).
pub struct Pki {
    dev: DevPki,
    dir: PathBuf,
    ca: PathBuf,
    operator: Arc<DevOperator>,
    roots: PathBuf,
}

impl Pki {
    /// # Errors
    /// When the PKI cannot be generated or written.
    pub fn new(dir: &Path) -> Result<Pki, TestbedError> {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir)?;
        let dev = DevPki::new()?;
        let ca = dev.write_ca(&dir)?;
        let operator = dev.operator();
        let roots = operator.write_roots(&dir)?;
        Ok(Pki {
            dev,
            dir,
            ca,
            operator,
            roots,
        })
    }

    /// The operator that signs distributions under the pinned root.
    pub fn operator(&self) -> Arc<DevOperator> {
        Arc::clone(&self.operator)
    }

    /// The pinned distribution roots, as boxes and IMSs check them.
    pub fn roots(&self) -> Vec<RootKey> {
        vec![self.operator.root()]
    }

    /// The PEM file of the distribution roots.
    pub fn roots_path(&self) -> &Path {
        &self.roots
    }

    /// In-memory TLS material for `party`, signed by this PKI.
    ///
    /// # Errors
    /// When issuing fails.
    pub fn material(&self, party: &Party) -> Result<TlsMaterial, TestbedError> {
        let issued = self.dev.issue(party)?;
        Ok(self.dev.material(&issued)?)
    }

    /// Writes `party`'s certificate and key; returns (ca, cert, key).
    ///
    /// # Errors
    /// When issuing or writing fails.
    pub fn write(&self, party: &Party) -> Result<(PathBuf, PathBuf, PathBuf), TestbedError> {
        let issued = self.dev.issue(party)?;
        let stem = ifrelay_tls::dns_name(party);
        let (cert, key) = issued.write(&self.dir, &stem)?;
        Ok((self.ca.clone(), cert, key))
    }

    /// Opens a TLS link to `addr` as `as_party`, expecting `server`.
    ///
    /// # Errors
    /// When the PKI cannot issue or the connection fails.
    pub async fn link(
        &self,
        as_party: &Party,
        server: &Party,
        addr: SocketAddr,
    ) -> Result<Link, TestbedError> {
        let tls = self.material(as_party)?.client_config()?;
        Ok(Link::connect(
            addr,
            server,
            tls,
            std::time::Duration::from_secs(5),
            std::time::Duration::from_secs(10),
            ifrelay_proto::frame::DEFAULT_MAX_FRAME,
        )
        .await?)
    }
}

/// Writes the configuration file of a box under `dir/<agency>/` and
/// returns its path.
///
/// # Errors
/// When the PKI or the file cannot be written.
pub fn write_box_config(
    dir: &Path,
    pki: &Pki,
    agency: &AgencyCode,
    (core_side, agency_side): (SocketAddr, SocketAddr),
    core: SocketAddr,
    ims: SocketAddr,
) -> Result<PathBuf, TestbedError> {
    let box_dir = dir.join(agency.as_str());
    std::fs::create_dir_all(&box_dir)?;
    let (ca, cert, key) = pki.write(&Party::is(agency.clone()))?;
    let loopback = vec!["127.0.0.0/8".to_owned()];
    let file = ConfigFile {
        appliance: BoxSection {
            agency: agency.to_string(),
            name: Some(format!("test box {agency}")),
        },
        listen: ListenSection {
            core_side: core_side.to_string(),
            agency_side: agency_side.to_string(),
        },
        tls: TlsSection { ca, cert, key },
        store: StoreSection {
            path: box_dir.join("ifrelay.redb"),
            cache_mib: 16,
        },
        core: EndpointSection {
            address: core.to_string(),
            allow: loopback.clone(),
        },
        ims: EndpointSection {
            address: ims.to_string(),
            allow: loopback.clone(),
        },
        peers: PeersSection {
            allow: loopback,
            ..PeersSection::default()
        },
        limits: Default::default(),
        timeouts: Default::default(),
        // Tests run at any hour; service hours have their own tests.
        service: ServiceSection {
            enforced: false,
            ..ServiceSection::default()
        },
        rates: Default::default(),
        trust: TrustSection {
            distribution_roots: pki.roots_path().to_owned(),
            ..TrustSection::default()
        },
        retention: Default::default(),
        console: Default::default(),
    };
    let path = box_dir.join("ifrelay.toml");
    std::fs::write(&path, file.to_toml_string()?)?;
    Ok(path)
}

/// Starts the box of `config_path`.
///
/// # Errors
/// When the configuration is invalid or the box cannot start.
pub async fn start_box(config_path: &Path) -> Result<(RunningBox, Config), TestbedError> {
    let config = Config::load(config_path)?;
    let running = RunningBox::start(&config).await?;
    Ok((running, config))
}

/// Builds a valid code from a literal.
///
/// # Panics
/// When `s` is not a valid code; only called with literals below.
fn code<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse()
        .expect("invariant: testbed code literals are valid")
}

/// The two municipalities of the testbed.
pub fn agencies() -> (AgencyCode, AgencyCode) {
    (code("131016"), code("271004"))
}

/// What the testbed's prefix list allows, in both directions: each of the
/// two agencies may ask the other for business `JM010`, info name
/// `TK001`, items `I01` and `I02`; and for `JM020`/`TK002`/`I01`.
/// `JM099` is in the list but the core refuses its permits.
pub fn prefix_list() -> Vec<PrefixEntry> {
    let (a, b) = agencies();
    let mut out = Vec::new();
    for (req, prov) in [(&a, &b), (&b, &a)] {
        for (business, info, items) in [
            ("JM010", "TK001", &["I01", "I02"][..]),
            ("JM020", "TK002", &["I01"][..]),
            ("JM099", "TK001", &["I01"][..]),
        ] {
            for item in items {
                out.push(PrefixEntry {
                    requester: req.clone(),
                    provider: prov.clone(),
                    business: code(business),
                    info_name: code(info),
                    item: code(item),
                });
            }
        }
    }
    out
}

/// Master tables matching [`prefix_list`].
pub fn masters() -> Masters {
    let (a, b) = agencies();
    let row = |c: &str, l: &str| MasterRow {
        code: code::<BusinessCode>(c),
        label: l.to_owned(),
    };
    Masters {
        agencies: vec![
            MasterRow {
                code: a,
                label: "千代田区".into(),
            },
            MasterRow {
                code: b,
                label: "大阪市".into(),
            },
        ],
        businesses: vec![
            row("JM010", "児童手当の支給"),
            row("JM020", "介護保険の給付"),
            row("JM099", "試験用(許可証拒否)"),
        ],
        info_names: vec![
            MasterRow {
                code: code::<InfoNameCode>("TK001"),
                label: "住民税情報".into(),
            },
            MasterRow {
                code: code::<InfoNameCode>("TK002"),
                label: "介護保険情報".into(),
            },
        ],
        items: vec![
            ItemRow {
                info_name: code("TK001"),
                item: code("I01"),
                label: "課税額".into(),
                business: code("JM010"),
            },
            ItemRow {
                info_name: code("TK001"),
                item: code("I02"),
                label: "所得額".into(),
                business: code("JM010"),
            },
            ItemRow {
                info_name: code("TK002"),
                item: code("I01"),
                label: "要介護度".into(),
                business: code("JM020"),
            },
        ],
    }
}

/// A prefix from `requester` to `provider` for a listed business.
pub fn prefix(requester: &AgencyCode, provider: &AgencyCode, business: &str) -> Prefix {
    let (info, items): (&str, &[&str]) = match business {
        "JM020" => ("TK002", &["I01"]),
        "JM099" => ("TK001", &["I01"]),
        _ => ("TK001", &["I01", "I02"]),
    };
    let mut list = heapless::Vec::new();
    for item in items {
        // Capacity is far above the two items used here.
        let _ = list.push(code::<ItemCode>(item));
    }
    Prefix {
        requester: requester.clone(),
        business: code(business),
        provider: provider.clone(),
        info_name: code(info),
        items: list,
    }
}

/// One box of the testbed with its intermediate server.
pub struct Node {
    pub agency: AgencyCode,
    pub config_path: PathBuf,
    pub config: Config,
    /// The box, when it runs in this process.
    pub running: Option<RunningBox>,
    /// The box, when it runs as a child process (`ifrelay run`); killed
    /// and reaped when dropped.
    pub child: Option<BoxProcess>,
    /// Shared so flows can run from several tasks at once.
    pub ims: std::sync::Arc<ImsSim>,
}

impl Node {
    /// # Panics
    /// When the box is stopped; tests call it only while it runs.
    pub fn running(&self) -> &RunningBox {
        self.running
            .as_ref()
            .expect("invariant: node accessed while its box runs")
    }

    pub fn party(&self) -> Party {
        Party::is(self.agency.clone())
    }
}

/// The whole network.
pub struct Testbed {
    pub dir: PathBuf,
    pub pki: Pki,
    pub core: CoreSim,
    pub nodes: Vec<Node>,
    /// Set when [`Testbed::start_box`] starts boxes as child processes of
    /// this binary.
    pub child_binary: Option<PathBuf>,
}

/// How the testbed is built beyond the configuration files.
#[derive(Debug, Clone, Default)]
pub struct TestbedOptions {
    pub ims: ImsOptions,
    pub core: NetOptions,
    /// Run each box as a child process of this `ifrelay` binary
    /// (`ifrelay run --config …`), so it can be killed for real.
    pub child_binary: Option<PathBuf>,
}

/// How long a child box may take to start.
const CHILD_START: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts `ifrelay run` on `config_path` and waits until it has started
/// (listeners bound). Its log (at `info`) is appended to `ifrelay.log`
/// beside the configuration, across restarts.
async fn spawn_child(
    binary: &Path,
    config_path: &Path,
    config: &Config,
) -> Result<BoxProcess, TestbedError> {
    let mut child = BoxProcess::spawn(
        &format!("box {}", config.agency),
        &BoxCommand::Ifrelay(binary.to_owned()),
        config_path,
        &config_path.with_file_name("ifrelay.log"),
        Some("info"),
    )?;
    // On failure the child is dropped, which kills it.
    child.wait_ready(CHILD_START).await?;
    Ok(child)
}

impl Testbed {
    /// Starts the core, two boxes and their intermediate servers under
    /// `dir`, and distributes the prefix list to both boxes.
    ///
    /// # Errors
    /// When any part fails to start.
    pub async fn start(dir: &Path) -> Result<Testbed, TestbedError> {
        Self::start_with(dir, |_| {}).await
    }

    /// As [`Testbed::start`], with `tweak` applied to every box's
    /// configuration file before it starts (timers, service hours…).
    ///
    /// # Errors
    /// As [`Testbed::start`].
    pub async fn start_with(
        dir: &Path,
        tweak: impl Fn(&mut ConfigFile),
    ) -> Result<Testbed, TestbedError> {
        Self::start_opts(dir, &tweak, TestbedOptions::default()).await
    }

    /// The general form: configuration `tweak`, simulator options, and
    /// whether boxes run in this process or as child processes.
    ///
    /// # Errors
    /// As [`Testbed::start`].
    pub async fn start_opts(
        dir: &Path,
        tweak: &dyn Fn(&mut ConfigFile),
        options: TestbedOptions,
    ) -> Result<Testbed, TestbedError> {
        std::fs::create_dir_all(dir)?;
        // Configuration files resolve relative paths against their own
        // folder; absolute paths keep them independent of it.
        let dir = &std::path::absolute(dir)?;
        let pki = Pki::new(dir)?;
        let any: SocketAddr = "127.0.0.1:0".parse()?;
        let core = CoreSim::start_with(
            any,
            pki.material(&Party::core())?,
            pki.operator(),
            prefix_list(),
            masters(),
            options.core.clone(),
        )
        .await?;
        core.refuse_business(code("JM099"));
        let (a, b) = agencies();
        let mut nodes = Vec::new();
        for agency in [a, b] {
            // The box and its IMS each need the other's address first:
            // the box's listeners are bound before either starts, and
            // handed to an in-process box, so no other test can take the
            // ports. A child process binds them itself.
            let core_listener = ifrelay::relay::server::bind(any).await?;
            let agency_listener = ifrelay::relay::server::bind(any).await?;
            let core_side = core_listener.local_addr()?;
            let agency_side = agency_listener.local_addr()?;
            let ims = ImsSim::start_with(
                agency.clone(),
                any,
                pki.material(&Party::ims(agency.clone()))?,
                agency_side,
                pki.roots(),
                options.ims.clone(),
            )
            .await?;
            let config_path = write_box_config(
                dir,
                &pki,
                &agency,
                (core_side, agency_side),
                core.local_addr(),
                ims.local_addr(),
            )?;
            let mut file = Config::load(&config_path)?.to_file();
            tweak(&mut file);
            std::fs::write(&config_path, file.to_toml_string()?)?;
            let config = Config::load(&config_path)?;
            let (running, child) = match &options.child_binary {
                None => (
                    Some(RunningBox::start_on(&config, core_listener, agency_listener).await?),
                    None,
                ),
                Some(binary) => {
                    drop((core_listener, agency_listener));
                    (
                        None,
                        Some(spawn_child(binary, &config_path, &config).await?),
                    )
                }
            };
            core.register_box(agency.clone(), core_side);
            nodes.push(Node {
                agency,
                config_path,
                config,
                running,
                child,
                ims: std::sync::Arc::new(ims),
            });
        }
        let bed = Testbed {
            dir: dir.to_owned(),
            pki,
            core,
            nodes,
            child_binary: options.child_binary,
        };
        bed.distribute(1).await?;
        Ok(bed)
    }

    /// Sends the testbed's prefix list as distribution `version` to every
    /// box and waits until every intermediate server has received one
    /// more distribution.
    ///
    /// # Errors
    /// When a box refuses it or it does not arrive in time.
    pub async fn distribute(&self, version: u64) -> Result<(), TestbedError> {
        let before: Vec<u64> = self
            .nodes
            .iter()
            .map(|n| n.ims.stats().distributions_received)
            .collect();
        self.core
            .distribute(version, prefix_list(), masters())
            .await?;
        for (node, before) in self.nodes.iter().zip(before) {
            node.ims
                .wait_for(std::time::Duration::from_secs(10), |s| {
                    s.distributions_received > before
                })
                .await?;
        }
        Ok(())
    }

    /// Stops box `i` through its one shutdown path (SIGTERM for a child
    /// process, which runs the same path; SIGKILL if it has not ended
    /// within its shutdown grace and 5 s more).
    pub async fn stop_box(&mut self, i: usize) {
        let Some(node) = self.nodes.get_mut(i) else {
            return;
        };
        if let Some(running) = node.running.take() {
            running.shutdown().await;
        }
        if let Some(mut child) = node.child.take() {
            let grace = node.config.timeouts.shutdown_grace + std::time::Duration::from_secs(5);
            child.stop(grace).await;
        }
    }

    /// Kills box `i`'s child process with SIGKILL: no shutdown path, no
    /// flush — a power cut as far as the store can tell.
    ///
    /// # Errors
    /// When box `i` does not run as a child process.
    pub async fn kill_box(&mut self, i: usize) -> Result<(), TestbedError> {
        let node = self.nodes.get_mut(i).ok_or("no such node")?;
        let mut child = node
            .child
            .take()
            .ok_or("box does not run as a child process")?;
        child.kill()?;
        Ok(())
    }

    /// Starts box `i` again from its file (same ports, same store), in
    /// this process or as a child, as the testbed was started.
    ///
    /// # Errors
    /// When the box cannot start.
    pub async fn start_box(&mut self, i: usize) -> Result<(), TestbedError> {
        let binary = self.child_binary.clone();
        let node = self.nodes.get_mut(i).ok_or("no such node")?;
        match binary {
            None => {
                let (running, config) = start_box(&node.config_path).await?;
                node.config = config;
                node.running = Some(running);
            }
            Some(binary) => {
                let config = Config::load(&node.config_path)?;
                node.child = Some(spawn_child(&binary, &node.config_path, &config).await?);
                node.config = config;
            }
        }
        Ok(())
    }

    /// Stops everything.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop_box(i).await;
        }
        for node in &self.nodes {
            node.ims.shutdown().await;
        }
        self.core.shutdown().await;
    }
}
