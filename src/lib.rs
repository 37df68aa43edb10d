//! ifrelay: the supervisor of the Interface System appliance.
//!
//! The binary (`src/main.rs`) is CLI plus glue; the logic lives here and in
//! the workspace crates: `ifrelay-proto` (wire format), `ifrelay-store`
//! (redb store), `ifrelay-tls` (certificates and TLS). This crate holds
//! only what the box runs; the simulators, testbed, demo and benchmark are
//! in `ifrelay-testkit`, which the firmware never links.

pub mod config;
pub mod console;
pub mod critical;
pub mod exit;
pub mod export;
pub mod health;
pub mod identity;
pub mod logging;
pub mod net;
pub mod relay;
pub mod report;
pub mod store_dir;
pub mod supervisor;
