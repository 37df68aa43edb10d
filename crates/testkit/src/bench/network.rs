//! The testbed network of `src/testbed.rs` with the two boxes as child
//! processes: the same development PKI ([`Pki`]), core simulator,
//! intermediate-server simulators, configuration files
//! ([`write_box_config`]) and prefix distribution, but each box is a
//! process of its own ([`BoxProcess`]), so its memory and CPU can be
//! measured apart from the simulators that drive it. Flows run through
//! each node's [`ImsSim`] as in the integration tests.
//!
//! Only the testbed's functions are used, not its `Testbed` and `Node`
//! types, so this module does not change when those grow fields.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ifrelay_proto::{AgencyCode, Party};

use super::BenchError;
use crate::child::{BoxCommand, BoxProcess};
use crate::sim::core::CoreSim;
use crate::sim::ims::ImsSim;
use crate::testbed::{agencies, masters, prefix_list, write_box_config, Pki};
use ifrelay::config::{Config, ConfigFile};

/// How long a box may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Attempts at finding free ports for a box.
const PORT_ATTEMPTS: usize = 3;

/// One agency: its box's configuration and its intermediate server.
pub struct Node {
    pub agency: AgencyCode,
    pub config: Config,
    pub ims: Arc<ImsSim>,
}

/// The network and the box processes in it (same order as `nodes`).
pub struct Network {
    pub pki: Pki,
    pub core: CoreSim,
    pub nodes: Vec<Node>,
    pub boxes: Vec<BoxProcess>,
}

/// Two free loopback ports, found by binding port 0 and letting go: the
/// box binds them itself a moment later (a rare clash is retried).
///
/// # Errors
/// When no port can be bound.
pub fn reserve_ports() -> Result<(SocketAddr, SocketAddr), BenchError> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?, b.local_addr()?))
}

/// Starts the core, and for each of the two agencies its intermediate
/// server and its box (a child process started with `cmd`), then
/// distributes the prefix list. Box logs go to `dir/<agency>.log`.
///
/// # Errors
/// When any part fails to start.
pub async fn start(dir: &Path, cmd: &BoxCommand) -> Result<Network, BenchError> {
    start_with(dir, cmd, |_| {}).await
}

/// [`start`], with each box's configuration changed by `tweak` first.
///
/// # Errors
/// When any part fails to start.
pub async fn start_with(
    dir: &Path,
    cmd: &BoxCommand,
    tweak: fn(&mut ConfigFile),
) -> Result<Network, BenchError> {
    std::fs::create_dir_all(dir)?;
    let dir = &std::path::absolute(dir)?;
    let pki = Pki::new(dir)?;
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let core = CoreSim::start(
        any,
        pki.material(&Party::core())?,
        pki.operator(),
        prefix_list(),
        masters(),
    )
    .await?;
    let (a, b) = agencies();
    let mut nodes = Vec::new();
    let mut boxes = Vec::new();
    for agency in [a, b] {
        let (node, child) = start_node(dir, &pki, &core, &agency, cmd, tweak).await?;
        nodes.push(node);
        boxes.push(child);
    }
    let net = Network {
        pki,
        core,
        nodes,
        boxes,
    };
    net.distribute(1).await?;
    Ok(net)
}

async fn start_node(
    dir: &Path,
    pki: &Pki,
    core: &CoreSim,
    agency: &AgencyCode,
    cmd: &BoxCommand,
    tweak: fn(&mut ConfigFile),
) -> Result<(Node, BoxProcess), BenchError> {
    let any: SocketAddr = "127.0.0.1:0".parse()?;
    let mut last_error = String::new();
    for _ in 0..PORT_ATTEMPTS {
        let (core_side, agency_side) = reserve_ports()?;
        let ims = ImsSim::start(
            agency.clone(),
            any,
            pki.material(&Party::ims(agency.clone()))?,
            agency_side,
            pki.roots(),
        )
        .await?;
        let config_path = write_box_config(
            dir,
            pki,
            agency,
            (core_side, agency_side),
            core.local_addr(),
            ims.local_addr(),
        )?;
        let mut file = Config::load(&config_path)?.to_file();
        tweak(&mut file);
        std::fs::write(&config_path, file.to_toml_string()?)?;
        let config = Config::load(&config_path)?;
        let log = dir.join(format!("box-{agency}.log"));
        let mut child = BoxProcess::spawn(&format!("box {agency}"), cmd, &config_path, &log, None)?;
        match child.wait_ready(START_TIMEOUT).await {
            Ok(_) => {
                core.register_box(agency.clone(), core_side);
                let node = Node {
                    agency: agency.clone(),
                    config,
                    ims: Arc::new(ims),
                };
                return Ok((node, child));
            }
            Err(e) => {
                last_error = e.to_string();
                drop(child);
                ims.shutdown().await;
            }
        }
    }
    Err(format!("box {agency} did not start: {last_error}").into())
}

impl Network {
    /// Sends the testbed's prefix list as distribution `version` to both
    /// boxes and waits until both intermediate servers have it.
    ///
    /// # Errors
    /// When a box refuses it or it does not arrive within 10 s.
    pub async fn distribute(&self, version: u64) -> Result<(), BenchError> {
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
                .wait_for(Duration::from_secs(10), |s| {
                    s.distributions_received > before
                })
                .await?;
        }
        Ok(())
    }

    /// Stops the simulators (after [`Network::stop_boxes`]).
    pub async fn shutdown_simulators(&self) {
        for node in &self.nodes {
            node.ims.shutdown().await;
        }
        self.core.shutdown().await;
    }

    /// Stops the boxes (SIGTERM, then their shutdown path drains what
    /// they hold), keeping the simulators; returns how each ended.
    pub async fn stop_boxes(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for mut b in self.boxes.drain(..) {
            let how = b.stop(Duration::from_secs(20)).await;
            out.push(format!("{}: {how}", b.name()));
        }
        out
    }
}
