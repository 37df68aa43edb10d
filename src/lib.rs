//! ifrelay: the supervisor of the Interface System appliance.
//!
//! The binary (`src/main.rs`) is CLI plus glue; the logic lives here and in
//! the workspace crates: `ifrelay-proto` (wire format), `ifrelay-store`
//! (redb store), `ifrelay-tls` (certificates and TLS).

pub mod bench;
pub mod config;
pub mod demo;
pub mod net;
pub mod relay;
pub mod report;
pub mod scenarios;
pub mod sim;
pub mod supervisor;
pub mod testbed;
