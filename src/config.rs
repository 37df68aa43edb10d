//! The box's configuration: one TOML file, read, checked and typed before
//! anything is bound (a bad file means one message naming the field, and
//! exit code [`EXIT_CONFIG`]).
//!
//! Three steps, so each can be used alone:
//! 1. [`ConfigFile::parse`] — TOML syntax and shape; unknown keys refused.
//! 2. [`ConfigFile::resolve`] — every value checked and typed (agency code,
//!    socket addresses, CIDRs, ranges), relative paths resolved against the
//!    configuration file's directory. No filesystem access.
//! 3. [`Config::validate_files`] — the CA, certificate and key exist, are
//!    readable, load, match, and name this box under the CA; the store's
//!    directory exists (or can be created) and is writable.
//!
//! [`Config::load`] and [`Config::from_toml_str`] run all three;
//! [`Config::parse`] runs the first two. [`ConfigFile`] is both what is read
//! and what is written ([`Config::to_toml_string`]), so simulators and test
//! harnesses write configurations the box reads. `docs/config.md` is the
//! reference of every key.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::relay::hours::{Date, ServiceHours, Window};
pub use crate::relay::rates::{Rate, RateLimits};
use ifrelay_proto::{AgencyCode, Party, RootKey};
use ifrelay_tls::{TlsError, TlsMaterial};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Exit status of the binary when the configuration is refused
/// (`EX_CONFIG` of sysexits.h).
pub const EXIT_CONFIG: i32 = 78;

/// Default largest frame body: the protocol's default.
pub const DEFAULT_MAX_FRAME_BYTES: u64 = ifrelay_proto::frame::DEFAULT_MAX_FRAME as u64;
/// Smallest accepted `limits.max_frame_bytes` (1 KiB).
pub const MIN_FRAME_BYTES: u64 = 1024;
/// Largest accepted `limits.max_frame_bytes` (64 MiB).
pub const MAX_FRAME_BYTES: u64 = 64 * 1024 * 1024;
/// Default `limits.in_flight_bytes` (32 MiB), when that is at least
/// [`IN_FLIGHT_PER_FRAME`] frames of `limits.max_frame_bytes`.
pub const DEFAULT_IN_FLIGHT_BYTES: u64 = 32 * 1024 * 1024;
/// `limits.in_flight_bytes` is at least this many of the largest frame:
/// half of it is for frames arriving (where a large one reserves its
/// length in three quarters of that half), half for decoding, where a
/// frame of the largest size needs twice its size and a little more.
pub const IN_FLIGHT_PER_FRAME: u64 = 8;
/// Largest accepted `limits.in_flight_bytes` (4 GiB).
pub const MAX_IN_FLIGHT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
/// Default `limits.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: u64 = 256;
/// Largest accepted `limits.max_connections`.
pub const MAX_CONNECTIONS: u64 = 65_536;
/// Default `limits.io_timeout_ms`.
pub const DEFAULT_IO_TIMEOUT_MS: u64 = 10_000;
/// Default `limits.handshake_timeout_ms`: a client that has not finished
/// its TLS handshake by then is dropped.
pub const DEFAULT_HANDSHAKE_TIMEOUT_MS: u64 = 3_000;
/// Default `limits.max_handshakes`: connections of one listener still in
/// their TLS handshake.
pub const DEFAULT_MAX_HANDSHAKES: u64 = 64;
/// Default `limits.max_handshakes_per_source`: of those, from one address.
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: u64 = 8;
/// Default `limits.reserved_connections`: connections of a listener only
/// the core and the own IMS may use.
pub const DEFAULT_RESERVED_CONNECTIONS: u64 = 16;
/// Largest accepted `rates.*_per_s` and `rates.*_burst`.
pub const MAX_RATE: u64 = 1_000_000;
/// Default `timeouts.connect_ms`.
pub const DEFAULT_CONNECT_MS: u64 = 3_000;
/// Default `timeouts.reply_ms`.
pub const DEFAULT_REPLY_MS: u64 = 10_000;
/// Default `timeouts.retry_count`.
pub const DEFAULT_RETRY_COUNT: u64 = 5;
/// Largest accepted `timeouts.retry_count`.
pub const MAX_RETRY_COUNT: u64 = 100;
/// Default `timeouts.permit_ms`: the core has this long to answer a
/// permit request.
pub const DEFAULT_PERMIT_MS: u64 = 60_000;
/// Default `timeouts.query_accepted_ms`: the provider has this long to
/// accept a query.
pub const DEFAULT_QUERY_ACCEPTED_MS: u64 = 60_000;
/// Default `timeouts.provision_complete_ms`: a provision, its receipt and
/// both completions must be through this long after the query.
pub const DEFAULT_PROVISION_COMPLETE_MS: u64 = 600_000;
/// Default `timeouts.idle_process_ms`: a serial with no query yet is
/// closed after this long.
pub const DEFAULT_IDLE_PROCESS_MS: u64 = 1_800_000;
/// Default `timeouts.shutdown_grace_ms`: how long an orderly stop waits
/// for connections to end and the outbox to drain.
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// Largest step timeout: one day.
const ONE_DAY_MS: u64 = 86_400_000;
/// Default `timeouts.retry_backoff_ms`.
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 500;
/// Default `store.cache_mib`.
pub const DEFAULT_CACHE_MIB: u64 = 32;
/// Largest accepted `store.cache_mib`.
pub const MAX_CACHE_MIB: u64 = 4096;
/// Longest accepted `box.name`, in characters.
pub const MAX_NAME_CHARS: usize = 64;

const TEN_MINUTES_MS: u64 = 10 * 60 * 1000;
const ONE_HOUR_MS: u64 = 60 * 60 * 1000;

/// Why the configuration was refused. Every message says what is wrong and
/// what to do; [`ConfigError::field`] names the key (dotted path).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The configuration file itself cannot be read.
    #[error("cannot read configuration file {}; check the path given and its permissions", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Not TOML, or not the shape of an ifrelay configuration (unknown
    /// key, missing key, wrong type).
    #[error(
        "{}configuration{} is refused:\n{message}\nfix it as shown; docs/config.md lists every key",
        field.as_ref().map(|f| format!("{f}: ")).unwrap_or_default(),
        origin.as_ref().map(|p| format!(" file {}", p.display())).unwrap_or_default()
    )]
    Syntax {
        /// The file, when the text came from one.
        origin: Option<PathBuf>,
        /// The key concerned, when it can be told from the error.
        field: Option<String>,
        message: String,
    },
    /// A value is refused.
    #[error("{field}: {problem}; {fix}")]
    Invalid {
        field: String,
        problem: String,
        fix: String,
    },
    /// The configuration could not be written back as TOML.
    #[error("cannot write the configuration as TOML")]
    Serialize(#[from] toml::ser::Error),
}

impl ConfigError {
    /// Exit status for a refused configuration: [`EXIT_CONFIG`].
    pub const EXIT_CODE: i32 = EXIT_CONFIG;

    /// The dotted key the error is about (`tls.cert`, `core.allow[1]`), if
    /// known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { field, .. } => Some(field),
            ConfigError::Syntax { field, .. } => field.as_deref(),
            _ => None,
        }
    }

    fn invalid(
        field: impl Into<String>,
        problem: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
            fix: fix.into(),
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written: plain values, checked by `resolve`.
// ---------------------------------------------------------------------------

/// The configuration file as read and written: strings and integers,
/// checked and typed by [`ConfigFile::resolve`]. Sections with defaults may
/// be omitted from the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `[box]`: who this box is.
    #[serde(rename = "box")]
    pub appliance: BoxSection,
    /// `[listen]`: the two TLS listeners.
    pub listen: ListenSection,
    /// `[tls]`: the box's PEM files.
    pub tls: TlsSection,
    /// `[store]`: the redb store.
    pub store: StoreSection,
    /// `[core]`: the core system.
    pub core: EndpointSection,
    /// `[ims]`: the agency's own intermediate server.
    pub ims: EndpointSection,
    /// `[peers]`: other agencies' interface systems.
    #[serde(default)]
    pub peers: PeersSection,
    /// `[limits]`: bounds on connections and frames.
    #[serde(default)]
    pub limits: LimitsSection,
    /// `[timeouts]`: relay timers.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// `[service]`: service hours (R-AV-1).
    #[serde(default)]
    pub service: ServiceSection,
    /// `[rates]`: per-sender rates of the frames that cost store space.
    #[serde(default)]
    pub rates: RatesSection,
    /// `[trust]`: the pinned distribution roots.
    #[serde(default)]
    pub trust: TrustSection,
    /// `[retention]`: how long records and the access log are kept
    /// (R-REC-4, R-REC-6).
    #[serde(default)]
    pub retention: RetentionSection,
    /// `[console]`: the maintenance console on a serial port (issue 10).
    #[serde(default)]
    pub console: ConsoleSection,
}

/// `[console]`: where the maintenance console runs and its login rules
/// (docs/console.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// The serial port (`/dev/ttyS0` on the box); empty: no console.
    pub tty: String,
    /// Line speed in bits/s.
    pub baud: u64,
    /// Minutes without input before the user is logged out.
    pub idle_minutes: u64,
    /// Failed logins in a row that lock an account.
    pub max_failures: u64,
    /// Minutes such a lock lasts.
    pub lockout_minutes: u64,
    /// Whether deleting records needs a second person's login.
    pub two_person_rule: bool,
    /// Where udev links USB disks (`usb-…` entries).
    pub usb_devices: String,
    /// Where a stick is mounted while an export is written.
    pub usb_mount: String,
    /// A folder exports go to instead of a USB stick; empty: the stick.
    pub export_folder: String,
    /// Auditors' age recipients (`age1…`) every export is encrypted to.
    pub export_recipients: Vec<String>,
}

/// Where udev links every disk by its bus and serial.
pub const DEFAULT_USB_DEVICES: &str = "/dev/disk/by-id";
/// The console's private mount point for sticks.
pub const DEFAULT_USB_MOUNT: &str = "/run/ifrelay/usb";

impl Default for ConsoleSection {
    fn default() -> Self {
        Self {
            tty: String::new(),
            baud: 115_200,
            idle_minutes: 15,
            max_failures: 5,
            lockout_minutes: 15,
            two_person_rule: true,
            usb_devices: DEFAULT_USB_DEVICES.into(),
            usb_mount: DEFAULT_USB_MOUNT.into(),
            export_folder: String::new(),
            export_recipients: Vec::new(),
        }
    }
}

/// Line speeds the console accepts.
pub const CONSOLE_BAUDS: [u32; 5] = [9_600, 19_200, 38_400, 57_600, 115_200];

/// The legal minimum retention of query and provision records, in years
/// (R-REC-4): `retention.records_years` below it is refused.
pub const MIN_RECORDS_YEARS: u64 = 7;
/// Default retention of the access log, in years.
pub const DEFAULT_ACCESS_LOG_YEARS: u64 = 7;
/// Longest retention accepted, in years.
pub const MAX_RETENTION_YEARS: u64 = 100;

/// `[retention]`: how long records and access-log entries are kept before
/// the box deletes them by policy (R-REC-4, R-REC-6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Years a record is kept (at least [`MIN_RECORDS_YEARS`]).
    pub records_years: u64,
    /// Years an access-log entry is kept (at least 1).
    pub access_log_years: u64,
    /// Whether the box deletes records past `records_years` by itself.
    /// Off until the maintenance console (issue 10) lets an operator
    /// confirm a deletion (R-REC-4): until then records are kept.
    pub delete_records: bool,
}

impl Default for RetentionSection {
    fn default() -> Self {
        Self {
            records_years: MIN_RECORDS_YEARS,
            access_log_years: DEFAULT_ACCESS_LOG_YEARS,
            delete_records: false,
        }
    }
}

/// `[trust]`: the trust anchors the box pins (R-DST-1, R-SEC-6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrustSection {
    /// PEM file of the national operator's distribution root public
    /// key(s), Ed25519 `PUBLIC KEY` blocks.
    pub distribution_roots: PathBuf,
    /// Warn this many hours before the list in force expires.
    pub expiry_warning_hours: u64,
}

impl Default for TrustSection {
    fn default() -> Self {
        TrustSection {
            distribution_roots: PathBuf::from(DEFAULT_DISTRIBUTION_ROOTS),
            expiry_warning_hours: DEFAULT_EXPIRY_WARNING_HOURS,
        }
    }
}

/// Where the image installs the operator's root keys (from `keys/`).
pub const DEFAULT_DISTRIBUTION_ROOTS: &str = "/etc/ifrelay/distribution-roots.pem";

/// Three days: time for the national operator to notice and re-send.
pub const DEFAULT_EXPIRY_WARNING_HOURS: u64 = 72;

/// A year: a longer warning would always be on.
const MAX_EXPIRY_WARNING_HOURS: u64 = 8760;

/// `[service]`: when new processes may start (R-AV-1). Times are JST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceSection {
    /// `false`: always in service (a staging box).
    pub enforced: bool,
    /// Open window on weekdays, `HH:MM-HH:MM`.
    pub weekday: String,
    /// Open window on Saturdays, Sundays and holidays.
    pub holiday: String,
    /// Closed every day in this window; empty for none.
    pub daily_stop: String,
    /// Holidays, `YYYY-MM-DD`.
    pub holidays: Vec<String>,
}

impl Default for ServiceSection {
    fn default() -> Self {
        let d = ServiceHours::default();
        Self {
            enforced: d.enforced,
            weekday: d.weekday.to_string(),
            holiday: d.holiday.to_string(),
            daily_stop: d.daily_stop.map(|w| w.to_string()).unwrap_or_default(),
            holidays: Vec::new(),
        }
    }
}

/// `[box]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxSection {
    /// This box's agency code; its certificate must be `is-<agency>`.
    pub agency: String,
    /// Display name for the console and status, optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `[listen]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenSection {
    /// `IP:port` of the listener on the core-side NIC.
    pub core_side: String,
    /// `IP:port` of the listener on the agency-side NIC.
    pub agency_side: String,
}

/// `[tls]`: PEM files, relative to the configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The network CA certificate(s).
    pub ca: PathBuf,
    /// This box's certificate chain, end-entity first.
    pub cert: PathBuf,
    /// This box's private key.
    pub key: PathBuf,
}

/// `[store]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// The redb file, relative to the configuration file's directory.
    pub path: PathBuf,
    /// Page cache size in MiB.
    #[serde(default = "default_cache_mib")]
    pub cache_mib: u64,
}

fn default_cache_mib() -> u64 {
    DEFAULT_CACHE_MIB
}

/// `[core]` and `[ims]`: a party the box dials and accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSection {
    /// `IP:port` the box dials.
    pub address: String,
    /// CIDRs the party may connect from.
    pub allow: Vec<String>,
}

/// `[peers]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeersSection {
    /// CIDRs peer interface systems may connect from and be dialled at.
    pub allow: Vec<String>,
    /// Agencies refused even with a valid certificate.
    pub deny_agencies: Vec<String>,
    /// `[peers.addresses]`: agency code → `IP:port` of its interface system.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, String>,
}

/// `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_frame_bytes: u64,
    /// Absent: [`DEFAULT_IN_FLIGHT_BYTES`], or more for large frames.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_flight_bytes: Option<u64>,
    pub max_connections: u64,
    pub io_timeout_ms: u64,
    pub handshake_timeout_ms: u64,
    pub max_handshakes: u64,
    pub max_handshakes_per_source: u64,
    pub reserved_connections: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            in_flight_bytes: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            io_timeout_ms: DEFAULT_IO_TIMEOUT_MS,
            handshake_timeout_ms: DEFAULT_HANDSHAKE_TIMEOUT_MS,
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            reserved_connections: DEFAULT_RESERVED_CONNECTIONS,
        }
    }
}

/// `[rates]`: token buckets per sending party (`<class>_per_s` tokens a
/// second, at most `<class>_burst` saved up).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RatesSection {
    pub status_per_s: u64,
    pub status_burst: u64,
    pub notice_per_s: u64,
    pub notice_burst: u64,
    pub distribution_per_s: u64,
    pub distribution_burst: u64,
    pub peer_per_s: u64,
    pub peer_burst: u64,
    pub serial_per_s: u64,
    pub serial_burst: u64,
}

impl Default for RatesSection {
    fn default() -> Self {
        let d = RateLimits::default();
        Self {
            status_per_s: d.status.per_s.into(),
            status_burst: d.status.burst.into(),
            notice_per_s: d.notice.per_s.into(),
            notice_burst: d.notice.burst.into(),
            distribution_per_s: d.distribution.per_s.into(),
            distribution_burst: d.distribution.burst.into(),
            peer_per_s: d.peer.per_s.into(),
            peer_burst: d.peer.burst.into(),
            serial_per_s: d.serial.per_s.into(),
            serial_burst: d.serial.burst.into(),
        }
    }
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    pub connect_ms: u64,
    pub reply_ms: u64,
    pub retry_count: u64,
    pub retry_backoff_ms: u64,
    pub permit_ms: u64,
    pub query_accepted_ms: u64,
    pub provision_complete_ms: u64,
    pub idle_process_ms: u64,
    pub shutdown_grace_ms: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        Self {
            connect_ms: DEFAULT_CONNECT_MS,
            reply_ms: DEFAULT_REPLY_MS,
            retry_count: DEFAULT_RETRY_COUNT,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
            permit_ms: DEFAULT_PERMIT_MS,
            query_accepted_ms: DEFAULT_QUERY_ACCEPTED_MS,
            provision_complete_ms: DEFAULT_PROVISION_COMPLETE_MS,
            idle_process_ms: DEFAULT_IDLE_PROCESS_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

// ---------------------------------------------------------------------------
// The checked, typed configuration.
// ---------------------------------------------------------------------------

/// The checked configuration of the box. Every path is absolute (or
/// resolved against the directory given), every value in range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// This box's agency code (`box.agency`).
    pub agency: AgencyCode,
    /// Display name (`box.name`).
    pub name: Option<String>,
    pub listen: Listen,
    pub tls: TlsFiles,
    pub store: StoreSettings,
    pub core: Endpoint,
    pub ims: Endpoint,
    pub peers: Peers,
    pub limits: Limits,
    pub timeouts: Timeouts,
    pub service: ServiceHours,
    pub rates: RateLimits,
    pub trust: Trust,
    pub retention: Retention,
    pub console: Console,
}

/// The maintenance console (`[console]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Console {
    /// The serial port; `None`: no console.
    pub tty: Option<PathBuf>,
    /// One of [`CONSOLE_BAUDS`].
    pub baud: u32,
    pub idle: Duration,
    pub max_failures: u32,
    pub lockout: Duration,
    /// Deleting records needs a second person's login.
    pub two_person_rule: bool,
    /// Where USB disks are linked by udev.
    pub usb_devices: PathBuf,
    /// Where a stick is mounted for an export.
    pub usb_mount: PathBuf,
    /// Exports go here instead of a stick.
    pub export_folder: Option<PathBuf>,
    /// Auditors' age recipients, each checked.
    pub export_recipients: Vec<String>,
}

impl Default for Console {
    fn default() -> Self {
        Self {
            tty: None,
            baud: 115_200,
            idle: Duration::from_secs(15 * 60),
            max_failures: 5,
            lockout: Duration::from_secs(15 * 60),
            two_person_rule: true,
            usb_devices: PathBuf::from(DEFAULT_USB_DEVICES),
            usb_mount: PathBuf::from(DEFAULT_USB_MOUNT),
            export_folder: None,
            export_recipients: Vec::new(),
        }
    }
}

/// How long records and access-log entries are kept (`[retention]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Years a record is kept; at least [`MIN_RECORDS_YEARS`].
    pub records_years: u32,
    /// Years an access-log entry is kept; at least 1.
    pub access_log_years: u32,
    /// Whether records past their period are deleted by the box.
    pub delete_records: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            records_years: MIN_RECORDS_YEARS as u32,
            access_log_years: DEFAULT_ACCESS_LOG_YEARS as u32,
            delete_records: false,
        }
    }
}

/// The trust anchors: where the pinned roots are, and when to warn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    pub distribution_roots: PathBuf,
    pub expiry_warning: Duration,
}

/// The two listeners, one per NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    /// Core system and peer interface systems connect here.
    pub core_side: SocketAddr,
    /// The agency's intermediate server connects here.
    pub agency_side: SocketAddr,
}

/// The box's PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Where and how the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    pub path: PathBuf,
    pub cache_mib: u32,
}

impl StoreSettings {
    /// The page cache size in bytes, for `ifrelay_store::Store::open`.
    pub fn cache_bytes(&self) -> usize {
        (self.cache_mib as usize).saturating_mul(1024 * 1024)
    }
}

/// A party the box both dials and accepts (the core, the own IMS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Where the box dials it.
    pub address: SocketAddr,
    /// Source networks it may connect from (never empty).
    pub allow: Vec<IpNet>,
}

impl Endpoint {
    /// Whether a connection from `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        allows(&self.allow, ip)
    }
}

/// Other agencies' interface systems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Peers {
    /// Source networks peers may connect from and be dialled at (may be
    /// empty: no peer at all).
    pub allow: Vec<IpNet>,
    /// Agencies refused even with a valid certificate.
    pub deny_agencies: Vec<AgencyCode>,
    /// Where to dial the interface system of an agency; every address is
    /// inside `allow`.
    pub addresses: BTreeMap<AgencyCode, SocketAddr>,
}

impl Peers {
    /// Whether a connection from `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        allows(&self.allow, ip)
    }

    /// Whether `agency` is refused outright.
    pub fn is_denied(&self, agency: &AgencyCode) -> bool {
        self.deny_agencies.contains(agency)
    }
}

fn allows(nets: &[IpNet], ip: IpAddr) -> bool {
    // An IPv4 peer may show up as an IPv4-mapped IPv6 address on a
    // dual-stack socket.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|net| net.contains(&ip))
}

/// Bounds on connections and frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest frame body accepted, checked before the body is read.
    pub max_frame_bytes: usize,
    /// Bytes in flight across every connection: frame bytes received and
    /// not yet handled, and the trees decoded from them
    /// (`crate::net::Budget`). Reading waits beyond it.
    pub in_flight_bytes: usize,
    /// Most simultaneous authenticated connections per listener.
    pub max_connections: usize,
    /// Longest wait for one read or write on a connection.
    pub io_timeout: Duration,
    /// Longest wait for a client's TLS handshake (and its party check).
    pub handshake_timeout: Duration,
    /// Most connections per listener still in their TLS handshake: a
    /// budget of their own, so they never take an authenticated slot.
    pub max_handshakes: usize,
    /// Of those, most from one source address.
    pub max_handshakes_per_source: usize,
    /// Authenticated connections per listener that only the core and the
    /// own IMS may use (peer boxes get `max_connections` minus these).
    pub reserved_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: ifrelay_proto::frame::DEFAULT_MAX_FRAME,
            in_flight_bytes: DEFAULT_IN_FLIGHT_BYTES as usize,
            max_connections: DEFAULT_MAX_CONNECTIONS as usize,
            io_timeout: Duration::from_millis(DEFAULT_IO_TIMEOUT_MS),
            handshake_timeout: Duration::from_millis(DEFAULT_HANDSHAKE_TIMEOUT_MS),
            max_handshakes: DEFAULT_MAX_HANDSHAKES as usize,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE as usize,
            reserved_connections: DEFAULT_RESERVED_CONNECTIONS as usize,
        }
    }
}

/// Relay timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a TCP + TLS connection to be established.
    pub connect: Duration,
    /// Longest wait for the answer to a forwarded frame.
    pub reply: Duration,
    /// Resends after the first attempt before the process is closed.
    pub retry_count: u32,
    /// Wait before the first resend (doubled at each one).
    pub retry_backoff: Duration,
    /// Steps of a process (R-COM-2): past these the process is closed and
    /// the parties told.
    pub permit: Duration,
    pub query_accepted: Duration,
    pub provision_complete: Duration,
    pub idle_process: Duration,
    /// An orderly stop waits this long for connections and the drain.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_millis(DEFAULT_CONNECT_MS),
            reply: Duration::from_millis(DEFAULT_REPLY_MS),
            retry_count: DEFAULT_RETRY_COUNT as u32,
            retry_backoff: Duration::from_millis(DEFAULT_RETRY_BACKOFF_MS),
            permit: Duration::from_millis(DEFAULT_PERMIT_MS),
            query_accepted: Duration::from_millis(DEFAULT_QUERY_ACCEPTED_MS),
            provision_complete: Duration::from_millis(DEFAULT_PROVISION_COMPLETE_MS),
            idle_process: Duration::from_millis(DEFAULT_IDLE_PROCESS_MS),
            shutdown_grace: Duration::from_millis(DEFAULT_SHUTDOWN_GRACE_MS),
        }
    }
}

// ---------------------------------------------------------------------------
// Step 1: parse.
// ---------------------------------------------------------------------------

impl ConfigFile {
    /// Parses TOML text; unknown keys, missing keys and wrong types are
    /// refused.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`], naming the key when it can be told.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::parse_from(text, None)
    }

    fn parse_from(text: &str, origin: Option<&Path>) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let field =
                key_path(e.path(), e.inner()).or_else(|| key_at_span(text, e.inner().span()?));
            ConfigError::Syntax {
                origin: origin.map(Path::to_owned),
                field,
                message: e.into_inner().to_string().trim_end().to_owned(),
            }
        })
    }

    /// The file as TOML text.
    ///
    /// # Errors
    /// [`ConfigError::Serialize`] (an integer beyond `i64`).
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        Ok(toml::to_string(self)?)
    }
}

/// The dotted key of a refused value (`core.allow[1]`), from the path
/// serde_path_to_error followed. For a missing key the path ends at the
/// table that lacks it; serde names the key only in its standard message
/// (`missing field `x``), so that one name is taken from there.
fn key_path(path: &serde_path_to_error::Path, err: &toml::de::Error) -> Option<String> {
    use serde_path_to_error::Segment;
    let mut key = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => key.push_str(&format!("[{index}]")),
            Segment::Map { key: k } | Segment::Enum { variant: k } => {
                if !key.is_empty() {
                    key.push('.');
                }
                key.push_str(k);
            }
            Segment::Unknown => {}
        }
    }
    if let Some(missing) = err
        .message()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(missing);
    }
    (!key.is_empty()).then_some(key)
}

/// The key on the line of a TOML *syntax* error (a number beyond `i64`, a
/// stray character), which serde never saw: `[section]` above the span and
/// the `key =` on its line.
fn key_at_span(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let before = text.get(..span.start)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(line_start..)?.lines().next()?.trim();
    let key = line.split_once('=')?.0.trim().trim_matches('"');
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let section = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim());
    Some(match section {
        Some(s) if !s.is_empty() => format!("{s}.{key}"),
        _ => key.to_owned(),
    })
}

// ---------------------------------------------------------------------------
// Step 2: resolve.
// ---------------------------------------------------------------------------

impl ConfigFile {
    /// Checks and types every value; relative paths are resolved against
    /// `base_dir` (the configuration file's directory). Touches no file.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming the first refused key.
    pub fn resolve(&self, base_dir: &Path) -> Result<Config, ConfigError> {
        let agency = agency_code("box.agency", &self.appliance.agency)?;
        let name = match &self.appliance.name {
            None => None,
            Some(name) => Some(display_name(name)?),
        };

        let listen = Listen {
            core_side: socket_addr("listen.core_side", &self.listen.core_side, true)?,
            agency_side: socket_addr("listen.agency_side", &self.listen.agency_side, true)?,
        };
        if overlaps(listen.core_side, listen.agency_side) {
            return Err(ConfigError::invalid(
                "listen.agency_side",
                format!(
                    "{} collides with listen.core_side {}",
                    listen.agency_side, listen.core_side
                ),
                "each NIC needs its own listener: use the agency-side interface's address or another port",
            ));
        }

        let tls = TlsFiles {
            ca: path(
                "tls.ca",
                &self.tls.ca,
                base_dir,
                "the network CA certificate PEM",
            )?,
            cert: path(
                "tls.cert",
                &self.tls.cert,
                base_dir,
                "the box certificate PEM",
            )?,
            key: path(
                "tls.key",
                &self.tls.key,
                base_dir,
                "the box private key PEM",
            )?,
        };

        let store = StoreSettings {
            path: path(
                "store.path",
                &self.store.path,
                base_dir,
                "the redb store file",
            )?,
            cache_mib: in_range(
                "store.cache_mib",
                self.store.cache_mib,
                1,
                MAX_CACHE_MIB,
                "MiB",
            )?
            .try_into()
            .map_err(|_| ConfigError::invalid("store.cache_mib", "is too large", "lower it"))?,
        };

        let core = endpoint("core", &self.core, "the core system")?;
        let ims = endpoint("ims", &self.ims, "the intermediate server")?;
        let peers = self.peers(&agency)?;
        let limits = self.limits()?;
        let timeouts = self.timeouts()?;
        let service = self.service()?;
        let rates = self.rates()?;
        let trust = Trust {
            distribution_roots: path(
                "trust.distribution_roots",
                &self.trust.distribution_roots,
                base_dir,
                "the PEM file of the distribution root public keys",
            )?,
            expiry_warning: Duration::from_secs(
                in_range(
                    "trust.expiry_warning_hours",
                    self.trust.expiry_warning_hours,
                    1,
                    MAX_EXPIRY_WARNING_HOURS,
                    "hours",
                )? * 3600,
            ),
        };

        let retention = self.retention()?;
        let console = self.console()?;

        Ok(Config {
            agency,
            name,
            listen,
            tls,
            store,
            core,
            ims,
            peers,
            limits,
            timeouts,
            service,
            rates,
            trust,
            retention,
            console,
        })
    }

    fn console(&self) -> Result<Console, ConfigError> {
        let c = &self.console;
        let tty = match c.tty.trim() {
            "" => None,
            t if t.starts_with('/') => Some(PathBuf::from(t)),
            t => return Err(ConfigError::invalid(
                "console.tty",
                format!("{t:?} is not an absolute path"),
                "name the serial port's device, e.g. /dev/ttyS0, or leave it empty for no console",
            )),
        };
        let baud = u32::try_from(c.baud)
            .ok()
            .filter(|b| CONSOLE_BAUDS.contains(b))
            .ok_or_else(|| {
                ConfigError::invalid(
                    "console.baud",
                    format!("{} is not a serial line speed the console uses", c.baud),
                    "use 9600, 19200, 38400, 57600 or 115200 (TeraTerm's setting must match)",
                )
            })?;
        let minutes = |field: &str, v: u64, max: u64| {
            in_range(field, v, 1, max, "minutes").map(|m| Duration::from_secs(m * 60))
        };
        let absolute = |field: &str, v: &str| {
            if v.starts_with('/') {
                Ok(PathBuf::from(v))
            } else {
                Err(ConfigError::invalid(
                    field,
                    format!("{v:?} is not an absolute path"),
                    "give an absolute path",
                ))
            }
        };
        let usb_devices = absolute("console.usb_devices", c.usb_devices.trim())?;
        let usb_mount = absolute("console.usb_mount", c.usb_mount.trim())?;
        let export_folder = match c.export_folder.trim() {
            "" => None,
            f => Some(absolute("console.export_folder", f)?),
        };
        for r in &c.export_recipients {
            if let Err(e) = crate::export::parse_recipient(r) {
                return Err(ConfigError::invalid(
                    "console.export_recipients",
                    e.to_string(),
                    "give each auditor's age public key (age1…), as age-keygen prints it",
                ));
            }
        }
        Ok(Console {
            tty,
            baud,
            idle: minutes("console.idle_minutes", c.idle_minutes, 24 * 60)?,
            max_failures: in_range("console.max_failures", c.max_failures, 1, 100, "attempts")?
                as u32,
            lockout: minutes("console.lockout_minutes", c.lockout_minutes, 7 * 24 * 60)?,
            two_person_rule: c.two_person_rule,
            usb_devices,
            usb_mount,
            export_folder,
            export_recipients: c
                .export_recipients
                .iter()
                .map(|r| r.trim().to_owned())
                .collect(),
        })
    }

    fn retention(&self) -> Result<Retention, ConfigError> {
        let r = &self.retention;
        if r.records_years < MIN_RECORDS_YEARS {
            return Err(ConfigError::invalid(
                "retention.records_years",
                format!(
                    "{} years is below the legal minimum of {MIN_RECORDS_YEARS} years for \
                     query and provision records",
                    r.records_years
                ),
                format!("use {MIN_RECORDS_YEARS} or more (up to {MAX_RETENTION_YEARS})"),
            ));
        }
        let records_years = in_range(
            "retention.records_years",
            r.records_years,
            MIN_RECORDS_YEARS,
            MAX_RETENTION_YEARS,
            "years",
        )?;
        let access_log_years = in_range(
            "retention.access_log_years",
            r.access_log_years,
            1,
            MAX_RETENTION_YEARS,
            "years",
        )?;
        Ok(Retention {
            // Both at most MAX_RETENTION_YEARS: they fit.
            records_years: records_years as u32,
            access_log_years: access_log_years as u32,
            delete_records: r.delete_records,
        })
    }

    fn service(&self) -> Result<ServiceHours, ConfigError> {
        let s = &self.service;
        let window = |field: &str, text: &str| {
            text.parse::<Window>().map_err(|e| {
                ConfigError::invalid(
                    field,
                    e.to_string(),
                    "write it as HH:MM-HH:MM, e.g. 08:00-21:00 (24:00 ends the day)",
                )
            })
        };
        let daily_stop = if s.daily_stop.trim().is_empty() {
            None
        } else {
            Some(window("service.daily_stop", &s.daily_stop)?)
        };
        let mut holidays = std::collections::BTreeSet::new();
        for (i, text) in s.holidays.iter().enumerate() {
            let date = text.parse::<Date>().map_err(|e| {
                ConfigError::invalid(
                    format!("service.holidays[{i}]"),
                    e.to_string(),
                    "write holidays as YYYY-MM-DD",
                )
            })?;
            holidays.insert(date);
        }
        Ok(ServiceHours {
            enforced: s.enforced,
            weekday: window("service.weekday", &s.weekday)?,
            holiday: window("service.holiday", &s.holiday)?,
            daily_stop,
            holidays,
        })
    }

    fn peers(&self, own: &AgencyCode) -> Result<Peers, ConfigError> {
        let allow = cidrs("peers.allow", &self.peers.allow)?;
        let deny_agencies = self
            .peers
            .deny_agencies
            .iter()
            .enumerate()
            .map(|(i, code)| agency_code(&format!("peers.deny_agencies[{i}]"), code))
            .collect::<Result<Vec<_>, _>>()?;
        let mut addresses = BTreeMap::new();
        for (code, addr) in &self.peers.addresses {
            let field = format!("peers.addresses.{}", toml_key(code));
            let agency = agency_code(&field, code)?;
            if &agency == own {
                return Err(ConfigError::invalid(
                    field,
                    "is this box's own agency",
                    "remove it; the box never dials itself",
                ));
            }
            let addr = socket_addr(&field, addr, false)?;
            if !allows(&allow, addr.ip()) {
                return Err(ConfigError::invalid(
                    field,
                    format!("{} is outside peers.allow", addr.ip()),
                    "add its network to peers.allow or correct the address",
                ));
            }
            addresses.insert(agency, addr);
        }
        Ok(Peers {
            allow,
            deny_agencies,
            addresses,
        })
    }

    fn limits(&self) -> Result<Limits, ConfigError> {
        let l = &self.limits;
        let frame = in_range(
            "limits.max_frame_bytes",
            l.max_frame_bytes,
            MIN_FRAME_BYTES,
            MAX_FRAME_BYTES,
            "bytes",
        )?;
        let conns = in_range(
            "limits.max_connections",
            l.max_connections,
            1,
            MAX_CONNECTIONS,
            "connections",
        )?;
        let count = |field: &str, value: u64, min: u64| {
            to_usize(
                field,
                in_range(field, value, min, MAX_CONNECTIONS, "connections")?,
            )
        };
        let at_least = frame.saturating_mul(IN_FLIGHT_PER_FRAME);
        let in_flight = match l.in_flight_bytes {
            Some(bytes) => in_range(
                "limits.in_flight_bytes",
                bytes,
                at_least,
                MAX_IN_FLIGHT_BYTES,
                "bytes (at least 8 × limits.max_frame_bytes)",
            )?,
            None => DEFAULT_IN_FLIGHT_BYTES.max(at_least),
        };
        Ok(Limits {
            max_frame_bytes: to_usize("limits.max_frame_bytes", frame)?,
            in_flight_bytes: to_usize("limits.in_flight_bytes", in_flight)?,
            max_connections: to_usize("limits.max_connections", conns)?,
            io_timeout: millis("limits.io_timeout_ms", l.io_timeout_ms, TEN_MINUTES_MS)?,
            handshake_timeout: millis(
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms,
                TEN_MINUTES_MS,
            )?,
            max_handshakes: count("limits.max_handshakes", l.max_handshakes, 1)?,
            max_handshakes_per_source: count(
                "limits.max_handshakes_per_source",
                l.max_handshakes_per_source,
                1,
            )?,
            reserved_connections: count("limits.reserved_connections", l.reserved_connections, 0)?,
        })
    }

    fn rates(&self) -> Result<RateLimits, ConfigError> {
        let r = &self.rates;
        let rate = |class: &str, per_s: u64, burst: u64| -> Result<Rate, ConfigError> {
            let field = |key: &str| format!("rates.{class}_{key}");
            let one = |key: &str, value: u64, unit: &str| {
                let field = field(key);
                in_range(&field, value, 1, MAX_RATE, unit).and_then(|v| {
                    u32::try_from(v)
                        .map_err(|_| ConfigError::invalid(&field, "is too large", "lower it"))
                })
            };
            Ok(Rate {
                per_s: one("per_s", per_s, "frames a second")?,
                burst: one("burst", burst, "frames")?,
            })
        };
        Ok(RateLimits {
            status: rate("status", r.status_per_s, r.status_burst)?,
            notice: rate("notice", r.notice_per_s, r.notice_burst)?,
            distribution: rate("distribution", r.distribution_per_s, r.distribution_burst)?,
            peer: rate("peer", r.peer_per_s, r.peer_burst)?,
            serial: rate("serial", r.serial_per_s, r.serial_burst)?,
        })
    }

    fn timeouts(&self) -> Result<Timeouts, ConfigError> {
        let t = &self.timeouts;
        let retries = in_range(
            "timeouts.retry_count",
            t.retry_count,
            0,
            MAX_RETRY_COUNT,
            "retries",
        )?;
        Ok(Timeouts {
            connect: millis("timeouts.connect_ms", t.connect_ms, TEN_MINUTES_MS)?,
            reply: millis("timeouts.reply_ms", t.reply_ms, ONE_HOUR_MS)?,
            retry_count: u32::try_from(retries).map_err(|_| {
                ConfigError::invalid("timeouts.retry_count", "is too large", "lower it")
            })?,
            retry_backoff: millis(
                "timeouts.retry_backoff_ms",
                t.retry_backoff_ms,
                TEN_MINUTES_MS,
            )?,
            permit: millis("timeouts.permit_ms", t.permit_ms, ONE_DAY_MS)?,
            query_accepted: millis(
                "timeouts.query_accepted_ms",
                t.query_accepted_ms,
                ONE_DAY_MS,
            )?,
            provision_complete: millis(
                "timeouts.provision_complete_ms",
                t.provision_complete_ms,
                ONE_DAY_MS,
            )?,
            idle_process: millis("timeouts.idle_process_ms", t.idle_process_ms, ONE_DAY_MS)?,
            shutdown_grace: millis(
                "timeouts.shutdown_grace_ms",
                t.shutdown_grace_ms,
                TEN_MINUTES_MS,
            )?,
        })
    }
}

/// A key as written in a dotted path: bare when it can be, quoted otherwise.
fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn agency_code(field: &str, value: &str) -> Result<AgencyCode, ConfigError> {
    AgencyCode::new(value).map_err(|e| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an agency code ({e})"),
            "write the agency's code, e.g. the six-digit local-government code \"131016\"",
        )
    })
}

fn display_name(name: &str) -> Result<String, ConfigError> {
    if name.trim().is_empty() {
        return Err(ConfigError::invalid(
            "box.name",
            "is empty",
            "give the box a display name or remove the key",
        ));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(ConfigError::invalid(
            "box.name",
            format!("is longer than {MAX_NAME_CHARS} characters"),
            "shorten it",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ConfigError::invalid(
            "box.name",
            "holds control characters",
            "use printable characters only",
        ));
    }
    Ok(name.to_owned())
}

/// `IP:port`; port 0 (any free port) only where `listen` is true.
fn socket_addr(field: &str, value: &str, listen: bool) -> Result<SocketAddr, ConfigError> {
    let addr = SocketAddr::from_str(value.trim()).map_err(|_| {
        ConfigError::invalid(
            field,
            format!("{value:?} is not an IP:port address (host names are not resolved)"),
            "write it like 192.0.2.10:7443 or [2001:db8::10]:7443",
        )
    })?;
    if addr.port() == 0 && !listen {
        return Err(ConfigError::invalid(
            field,
            format!("{value:?} has port 0"),
            "give the port the party listens on",
        ));
    }
    Ok(addr)
}

/// Two listeners collide when they share a port and an address, or one of
/// them listens on every address of that family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() != 0
        && a.port() == b.port()
        && (a.ip() == b.ip()
            || (a.is_ipv4() == b.is_ipv4() && (a.ip().is_unspecified() || b.ip().is_unspecified())))
}

fn cidrs(field: &str, values: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    values
        .iter()
        .enumerate()
        .map(|(i, value)| cidr(&format!("{field}[{i}]"), value))
        .collect()
}

fn cidr(field: &str, value: &str) -> Result<IpNet, ConfigError> {
    let value = value.trim();
    let net = IpNet::from_str(value).map_err(|_| {
        let fix = match IpAddr::from_str(value) {
            Ok(IpAddr::V4(_)) => format!("for one host write {value}/32"),
            Ok(IpAddr::V6(_)) => format!("for one host write {value}/128"),
            Err(_) => "write a network like 192.0.2.0/24 or 2001:db8::/64".to_owned(),
        };
        ConfigError::invalid(field, format!("{value:?} is not a CIDR network"), fix)
    })?;
    if net != net.trunc() {
        return Err(ConfigError::invalid(
            field,
            format!("{value} has host bits set"),
            format!(
                "write the network {} or the host {}/{}",
                net.trunc(),
                net.addr(),
                net.max_prefix_len()
            ),
        ));
    }
    Ok(net)
}

fn endpoint(section: &str, e: &EndpointSection, who: &str) -> Result<Endpoint, ConfigError> {
    let address = socket_addr(&format!("{section}.address"), &e.address, false)?;
    let allow = cidrs(&format!("{section}.allow"), &e.allow)?;
    if allow.is_empty() {
        return Err(ConfigError::invalid(
            format!("{section}.allow"),
            format!("is empty, so {who} could never connect"),
            format!("list the networks {who} connects from, e.g. [\"192.0.2.1/32\"]"),
        ));
    }
    Ok(Endpoint { address, allow })
}

fn path(field: &str, value: &Path, base_dir: &Path, what: &str) -> Result<PathBuf, ConfigError> {
    if value.as_os_str().is_empty() {
        return Err(ConfigError::invalid(
            field,
            "is empty",
            format!("point it at {what}"),
        ));
    }
    Ok(base_dir.join(value))
}

fn in_range(field: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if value < min || value > max {
        return Err(ConfigError::invalid(
            field,
            format!("{value} is out of range"),
            format!("use {min} to {max} {unit}"),
        ));
    }
    Ok(value)
}

fn to_usize(field: &str, value: u64) -> Result<usize, ConfigError> {
    usize::try_from(value)
        .map_err(|_| ConfigError::invalid(field, "is too large for this machine", "lower it"))
}

fn millis(field: &str, value: u64, max: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(
            field,
            "is 0, which would fail every attempt at once",
            format!("use 1 to {max} milliseconds"),
        ));
    }
    in_range(field, value, 1, max, "milliseconds").map(Duration::from_millis)
}

// ---------------------------------------------------------------------------
// Step 3: files; and the whole.
// ---------------------------------------------------------------------------

impl Config {
    /// Reads, checks and types the configuration file at `path`, including
    /// [`Config::validate_files`]. Relative paths in it are resolved
    /// against the file's directory.
    ///
    /// # Errors
    /// Any [`ConfigError`]; the binary exits with [`EXIT_CONFIG`].
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Self::read(path)?;
        config.validate_files()?;
        Ok(config)
    }

    /// Reads and checks the configuration file at `path` (steps 1–2)
    /// without touching the files it names: for commands that need only
    /// some of it (`ifrelay identity` needs no TLS files).
    ///
    /// # Errors
    /// [`ConfigError::Read`], [`ConfigError::Syntax`] or
    /// [`ConfigError::Invalid`].
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path.parent().unwrap_or_else(|| Path::new("."));
        ConfigFile::parse_from(&text, Some(path))?.resolve(base_dir)
    }

    /// The store's folder (the directory of `store.path`), which also holds
    /// the box's signing key.
    pub fn store_dir(&self) -> &Path {
        crate::store_dir::of(&self.store.path)
    }

    /// [`Config::parse`] then [`Config::validate_files`].
    ///
    /// # Errors
    /// Any [`ConfigError`] but `Read`.
    pub fn from_toml_str(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let config = Self::parse(text, base_dir)?;
        config.validate_files()?;
        Ok(config)
    }

    /// Parses and checks every value without touching the filesystem.
    ///
    /// # Errors
    /// [`ConfigError::Syntax`] or [`ConfigError::Invalid`].
    pub fn parse(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        ConfigFile::parse(text)?.resolve(base_dir)
    }

    /// The party this box is: the interface system of its agency.
    pub fn party(&self) -> Party {
        Party::is(self.agency.clone())
    }

    /// Checks the files the configuration names: the TLS material loads
    /// and names this box under the CA ([`Config::tls_material`]), and the
    /// store's directory exists or can be created, and is writable.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `tls.ca`, `tls.cert`, `tls.key` or
    /// `store.path`.
    pub fn validate_files(&self) -> Result<(), ConfigError> {
        self.tls_material()?;
        self.distribution_roots()?;
        check_store_path(&self.store.path)
    }

    /// Loads the pinned distribution roots: every `PUBLIC KEY` block of
    /// `trust.distribution_roots`, each an Ed25519 key; at least one. The
    /// file must not be writable by group or others.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `trust.distribution_roots`.
    pub fn distribution_roots(&self) -> Result<Vec<RootKey>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::SubjectPublicKeyInfoDer;

        const FIELD: &str = "trust.distribution_roots";
        let path = &self.trust.distribution_roots;
        let shown = path.display();
        check_readable_file(
            FIELD,
            path,
            "the PEM file of the distribution root public keys",
        )?;
        let writable_by_others = std::fs::metadata(path)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o022 != 0)
            .unwrap_or(false);
        if writable_by_others {
            return Err(ConfigError::invalid(
                FIELD,
                format!("file {shown} is writable by group or others"),
                "chmod go-w it: whoever can write it decides which distributions the box trusts",
            ));
        }
        let blocks = SubjectPublicKeyInfoDer::pem_file_iter(path).map_err(|e| {
            ConfigError::invalid(
                FIELD,
                format!("file {shown} cannot be read as PEM: {e}"),
                "install the operator's root keys as PEM PUBLIC KEY blocks",
            )
        })?;
        let mut roots = Vec::new();
        for (i, block) in blocks.enumerate() {
            let der = block.map_err(|e| {
                ConfigError::invalid(
                    FIELD,
                    format!("block {} of {shown} is not PEM: {e}", i + 1),
                    "install the operator's root keys as PEM PUBLIC KEY blocks",
                )
            })?;
            let root = RootKey::from_spki_der(der.as_ref()).ok_or_else(|| {
                ConfigError::invalid(
                    FIELD,
                    format!("key {} of {shown} is not an Ed25519 public key", i + 1),
                    "the distribution roots are Ed25519 keys (openssl pkey -pubout of an ed25519 key)",
                )
            })?;
            roots.push(root);
        }
        if roots.is_empty() {
            return Err(ConfigError::invalid(
                FIELD,
                format!("file {shown} holds no PUBLIC KEY block"),
                "install the operator's root keys as PEM PUBLIC KEY blocks",
            ));
        }
        Ok(roots)
    }

    /// Loads the TLS material, checking that the key matches the
    /// certificate and that the certificate chains to the CA, is valid now
    /// and names this box (`is-<box.agency>.link.invalid`).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] naming `tls.ca`, `tls.cert` or `tls.key`.
    pub fn tls_material(&self) -> Result<TlsMaterial, ConfigError> {
        let files = [
            ("tls.ca", &self.tls.ca, "the network CA certificate PEM"),
            ("tls.cert", &self.tls.cert, "the box certificate PEM"),
            ("tls.key", &self.tls.key, "the box private key PEM"),
        ];
        for (field, path, what) in files {
            check_readable_file(field, path, what)?;
        }
        let material = TlsMaterial::from_files(&self.tls.ca, &self.tls.cert, &self.tls.key)
            .map_err(tls_error)?;
        material
            .verify_own_identity(&self.party())
            .map_err(tls_error)?;
        Ok(material)
    }

    /// The configuration as a [`ConfigFile`] (paths as absolute as they are
    /// here).
    pub fn to_file(&self) -> ConfigFile {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let nets = |nets: &[IpNet]| nets.iter().map(ToString::to_string).collect();
        ConfigFile {
            appliance: BoxSection {
                agency: self.agency.to_string(),
                name: self.name.clone(),
            },
            listen: ListenSection {
                core_side: self.listen.core_side.to_string(),
                agency_side: self.listen.agency_side.to_string(),
            },
            tls: TlsSection {
                ca: self.tls.ca.clone(),
                cert: self.tls.cert.clone(),
                key: self.tls.key.clone(),
            },
            store: StoreSection {
                path: self.store.path.clone(),
                cache_mib: self.store.cache_mib.into(),
            },
            core: EndpointSection {
                address: self.core.address.to_string(),
                allow: nets(&self.core.allow),
            },
            ims: EndpointSection {
                address: self.ims.address.to_string(),
                allow: nets(&self.ims.allow),
            },
            peers: PeersSection {
                allow: nets(&self.peers.allow),
                deny_agencies: self
                    .peers
                    .deny_agencies
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                addresses: self
                    .peers
                    .addresses
                    .iter()
                    .map(|(a, s)| (a.to_string(), s.to_string()))
                    .collect(),
            },
            limits: LimitsSection {
                max_frame_bytes: self.limits.max_frame_bytes as u64,
                in_flight_bytes: Some(self.limits.in_flight_bytes as u64),
                max_connections: self.limits.max_connections as u64,
                io_timeout_ms: ms(self.limits.io_timeout),
                handshake_timeout_ms: ms(self.limits.handshake_timeout),
                max_handshakes: self.limits.max_handshakes as u64,
                max_handshakes_per_source: self.limits.max_handshakes_per_source as u64,
                reserved_connections: self.limits.reserved_connections as u64,
            },
            rates: {
                let r = &self.rates;
                RatesSection {
                    status_per_s: r.status.per_s.into(),
                    status_burst: r.status.burst.into(),
                    notice_per_s: r.notice.per_s.into(),
                    notice_burst: r.notice.burst.into(),
                    distribution_per_s: r.distribution.per_s.into(),
                    distribution_burst: r.distribution.burst.into(),
                    peer_per_s: r.peer.per_s.into(),
                    peer_burst: r.peer.burst.into(),
                    serial_per_s: r.serial.per_s.into(),
                    serial_burst: r.serial.burst.into(),
                }
            },
            trust: TrustSection {
                distribution_roots: self.trust.distribution_roots.clone(),
                expiry_warning_hours: self.trust.expiry_warning.as_secs() / 3600,
            },
            retention: RetentionSection {
                records_years: self.retention.records_years.into(),
                access_log_years: self.retention.access_log_years.into(),
                delete_records: self.retention.delete_records,
            },
            console: ConsoleSection {
                tty: self
                    .console
                    .tty
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                baud: self.console.baud.into(),
                idle_minutes: self.console.idle.as_secs() / 60,
                max_failures: self.console.max_failures.into(),
                lockout_minutes: self.console.lockout.as_secs() / 60,
                two_person_rule: self.console.two_person_rule,
                usb_devices: self.console.usb_devices.display().to_string(),
                usb_mount: self.console.usb_mount.display().to_string(),
                export_folder: self
                    .console
                    .export_folder
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                export_recipients: self.console.export_recipients.clone(),
            },
            timeouts: TimeoutsSection {
                connect_ms: ms(self.timeouts.connect),
                reply_ms: ms(self.timeouts.reply),
                retry_count: self.timeouts.retry_count.into(),
                retry_backoff_ms: ms(self.timeouts.retry_backoff),
                permit_ms: ms(self.timeouts.permit),
                query_accepted_ms: ms(self.timeouts.query_accepted),
                provision_complete_ms: ms(self.timeouts.provision_complete),
                idle_process_ms: ms(self.timeouts.idle_process),
                shutdown_grace_ms: ms(self.timeouts.shutdown_grace),
            },
            service: ServiceSection {
                enforced: self.service.enforced,
                weekday: self.service.weekday.to_string(),
                holiday: self.service.holiday.to_string(),
                daily_stop: self
                    .service
                    .daily_stop
                    .map(|w| w.to_string())
                    .unwrap_or_default(),
                holidays: self
                    .service
                    .holidays
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
            },
        }
    }

    /// The configuration as TOML the box reads back unchanged.
    ///
    /// # Errors
    /// [`ConfigError::Serialize`].
    pub fn to_toml_string(&self) -> Result<String, ConfigError> {
        self.to_file().to_toml_string()
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "box {} (agency {}), listening on {} (core side) and {} (agency side)",
            self.name.as_deref().unwrap_or("-"),
            self.agency,
            self.listen.core_side,
            self.listen.agency_side
        )
    }
}

fn check_readable_file(field: &str, path: &Path, what: &str) -> Result<(), ConfigError> {
    let shown = path.display();
    match std::fs::metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(ConfigError::invalid(
            field,
            format!("file {shown} does not exist"),
            format!("point it at {what}"),
        )),
        Err(e) => Err(ConfigError::invalid(
            field,
            format!("file {shown} cannot be examined: {e}"),
            "check the permissions of its directories",
        )),
        Ok(meta) if !meta.is_file() => Err(ConfigError::invalid(
            field,
            format!("{shown} is not a regular file"),
            format!("point it at {what}"),
        )),
        Ok(_) => std::fs::File::open(path).map(drop).map_err(|e| {
            ConfigError::invalid(
                field,
                format!("file {shown} cannot be read: {e}"),
                "make it readable by the user ifrelay runs as",
            )
        }),
    }
}

fn tls_error(err: TlsError) -> ConfigError {
    let field = match &err {
        TlsError::Missing { what, .. }
        | TlsError::Unreadable { what, .. }
        | TlsError::BadPem { what, .. }
        | TlsError::NoCertificate { what, .. } => match *what {
            "CA certificate" => "tls.ca",
            "key" => "tls.key",
            _ => "tls.cert",
        },
        TlsError::NoKey { .. } | TlsError::KeyMismatch { .. } | TlsError::UnusableKey { .. } => {
            "tls.key"
        }
        TlsError::BadCaCertificate { .. } => "tls.ca",
        _ => "tls.cert",
    };
    // The TLS error already says what is wrong and what to do; its cause
    // (an I/O or rustls error) goes into the one message here.
    ConfigError::invalid(
        field,
        crate::logging::Causes(&err).to_string(),
        "see docs/config.md, [tls]",
    )
}

fn check_store_path(path: &Path) -> Result<(), ConfigError> {
    let field = "store.path";
    if path.is_dir() {
        return Err(ConfigError::invalid(
            field,
            format!("{} is a directory", path.display()),
            "point it at the redb file inside it, e.g. var/ifrelay.redb",
        ));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // `run` creates the store's directory (mode 0700) when its parent
    // exists, and nothing further up: a missing mount point is a mistake
    // to report, not a tree to make.
    let existing =
        if parent.exists() {
            parent
        } else {
            match parent.parent() {
                Some(up) if up.as_os_str().is_empty() => Path::new("."),
                Some(up) if up.exists() => up,
                _ => return Err(ConfigError::invalid(
                    field,
                    format!(
                        "neither the store's directory {} nor its parent exists",
                        parent.display()
                    ),
                    "create the parent directory (the box creates the store's directory itself), \
                     or point store.path into a directory on the mirrored disks",
                )),
            }
        };
    if !existing.is_dir() {
        return Err(ConfigError::invalid(
            field,
            format!(
                "{} is not a directory, so {} cannot be created",
                existing.display(),
                parent.display()
            ),
            "point store.path into a directory on the mirrored disks",
        ));
    }
    // An anonymous temporary file proves the directory is writable and
    // leaves nothing behind.
    tempfile::tempfile_in(existing).map(drop).map_err(|e| {
        ConfigError::invalid(
            field,
            format!("directory {} is not writable: {e}", existing.display()),
            "make it writable by the user ifrelay runs as",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ifrelay_devpki::DevPki;

    const BASE: &str = "/etc/ifrelay";

    /// A complete, valid configuration with every section.
    const VALID: &str = r#"
[box]
agency = "131016"
name = "Chiyoda-ku"

[listen]
core_side = "127.0.0.1:7443"
agency_side = "127.0.0.1:7444"

[tls]
ca = "pki/ca.pem"
cert = "pki/is-131016.pem"
key = "pki/is-131016.key"

[trust]
distribution_roots = "pki/distribution-roots.pem"
expiry_warning_hours = 48

[store]
path = "var/ifrelay.redb"
cache_mib = 32

[core]
address = "127.0.0.1:7000"
allow = ["127.0.0.1/32"]

[ims]
address = "127.0.0.1:7100"
allow = ["127.0.0.1/32"]

[peers]
allow = ["127.0.0.0/8"]
deny_agencies = ["999999"]

[peers.addresses]
272124 = "127.0.0.2:7443"

[limits]
max_frame_bytes = 4194304
max_connections = 256
io_timeout_ms = 10000
handshake_timeout_ms = 3000
max_handshakes = 64
max_handshakes_per_source = 8
reserved_connections = 16

[timeouts]
connect_ms = 3000
reply_ms = 10000
retry_count = 5
retry_backoff_ms = 500

[rates]
status_per_s = 1
status_burst = 10
peer_per_s = 1000
peer_burst = 2000
"#;

    /// The minimal file: only required keys.
    const MINIMAL: &str = r#"
[box]
agency = "131016"
[listen]
core_side = "0.0.0.0:7443"
agency_side = "10.1.0.1:7444"
[tls]
ca = "/pki/ca.pem"
cert = "is.pem"
key = "is.key"
[store]
path = "ifrelay.redb"
[core]
address = "192.0.2.1:7000"
allow = ["192.0.2.0/24"]
[ims]
address = "10.1.0.2:7100"
allow = ["10.1.0.2/32"]
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new(BASE))
    }

    /// VALID with `key` of `[section]` set to `value` (TOML syntax).
    #[track_caller]
    fn with(section: &str, key: &str, value: &str) -> String {
        let out = with_in(VALID, section, key, value);
        assert_ne!(out, VALID, "no {section}.{key} in VALID");
        out
    }

    #[track_caller]
    #[test]
    fn the_console_is_off_by_default_and_its_settings_are_checked() {
        let c = parse(MINIMAL).expect("minimal");
        assert_eq!(c.console, Console::default());
        assert_eq!(c.console.tty, None);
        assert_eq!(c.console.baud, 115_200);
        let text = format!(
            "{VALID}\n[console]\ntty = \"/dev/ttyS0\"\nbaud = 9600\nidle_minutes = 5\nmax_failures = 3\nlockout_minutes = 30\n"
        );
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.console,
            Console {
                tty: Some(PathBuf::from("/dev/ttyS0")),
                baud: 9600,
                idle: Duration::from_secs(300),
                max_failures: 3,
                lockout: Duration::from_secs(1800),
                ..Console::default()
            }
        );
        let back =
            Config::parse(&c.to_toml_string().expect("toml"), Path::new("/x")).expect("back");
        assert_eq!(back.console, c.console);
        let err = refused(
            &format!("{VALID}\n[console]\ntty = \"ttyS0\"\n"),
            "console.tty",
        );
        assert!(err.to_string().contains("/dev/ttyS0"), "{err}");
        let err = refused(
            &format!("{VALID}\n[console]\nbaud = 12345\n"),
            "console.baud",
        );
        assert!(err.to_string().contains("TeraTerm"), "{err}");
        refused(
            &format!("{VALID}\n[console]\nidle_minutes = 0\n"),
            "console.idle_minutes",
        );
        refused(
            &format!("{VALID}\n[console]\nmax_failures = 0\n"),
            "console.max_failures",
        );
    }

    #[test]
    fn console_exports_are_configured_and_checked() {
        let c = parse(MINIMAL).expect("minimal");
        assert!(c.console.two_person_rule);
        assert_eq!(c.console.usb_devices, Path::new("/dev/disk/by-id"));
        assert_eq!(c.console.usb_mount, Path::new("/run/ifrelay/usb"));
        assert_eq!(c.console.export_folder, None);
        let key = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";
        let text = format!(
            "{VALID}\n[console]\ntwo_person_rule = false\nusb_devices = \"/dev/usb-links\"\n\
             usb_mount = \"/run/x\"\nexport_folder = \"/srv/exports\"\n\
             export_recipients = [\"{key}\"]\n"
        );
        let c = parse(&text).expect("valid");
        assert!(!c.console.two_person_rule);
        assert_eq!(c.console.usb_devices, Path::new("/dev/usb-links"));
        assert_eq!(
            c.console.export_folder.as_deref(),
            Some(Path::new("/srv/exports"))
        );
        assert_eq!(c.console.export_recipients, [key]);
        let back =
            Config::parse(&c.to_toml_string().expect("toml"), Path::new("/x")).expect("back");
        assert_eq!(back.console, c.console);
        let err = refused(
            &format!("{VALID}\n[console]\nexport_recipients = [\"age1nope\"]\n"),
            "console.export_recipients",
        );
        assert!(err.to_string().contains("age-keygen"), "{err}");
        for key in ["usb_devices", "usb_mount", "export_folder"] {
            refused(
                &format!("{VALID}\n[console]\n{key} = \"relative/path\"\n"),
                &format!("console.{key}"),
            );
        }
    }

    fn refused(text: &str, field: &str) -> ConfigError {
        let err = parse(text).expect_err("configuration must be refused");
        assert_eq!(err.field(), Some(field), "{err}");
        assert!(err.to_string().contains(field), "{err}");
        err
    }

    #[test]
    fn exit_code_is_ex_config() {
        assert_eq!(EXIT_CONFIG, 78);
        assert_eq!(ConfigError::EXIT_CODE, 78);
    }

    #[test]
    fn valid_file_is_typed() {
        let c = parse(VALID).expect("valid");
        assert_eq!(c.agency.as_str(), "131016");
        assert_eq!(
            c.party(),
            Party::is(AgencyCode::new("131016").expect("code"))
        );
        assert_eq!(c.name.as_deref(), Some("Chiyoda-ku"));
        assert_eq!(c.listen.core_side, "127.0.0.1:7443".parse().expect("addr"));
        assert_eq!(c.tls.cert, Path::new("/etc/ifrelay/pki/is-131016.pem"));
        assert_eq!(c.store.path, Path::new("/etc/ifrelay/var/ifrelay.redb"));
        assert_eq!(c.store.cache_bytes(), 32 * 1024 * 1024);
        assert!(c.core.allows("127.0.0.1".parse().expect("ip")));
        assert!(!c.core.allows("127.0.0.2".parse().expect("ip")));
        assert!(c.peers.allows("127.9.9.9".parse().expect("ip")));
        assert!(c.peers.allows("::ffff:127.0.0.5".parse().expect("ip")));
        assert!(c.peers.is_denied(&AgencyCode::new("999999").expect("code")));
        assert_eq!(
            c.peers
                .addresses
                .get(&AgencyCode::new("272124").expect("code")),
            Some(&"127.0.0.2:7443".parse().expect("addr"))
        );
        assert_eq!(c.limits.max_frame_bytes, 4 * 1024 * 1024);
        assert_eq!(c.timeouts.reply, Duration::from_secs(10));
        assert_eq!(c.timeouts.retry_count, 5);
    }

    #[test]
    fn omitted_sections_take_defaults_and_absolute_paths_stay() {
        let c = parse(MINIMAL).expect("minimal");
        assert_eq!(c.name, None);
        assert_eq!(c.tls.ca, Path::new("/pki/ca.pem"));
        assert_eq!(c.tls.cert, Path::new("/etc/ifrelay/is.pem"));
        assert_eq!(c.store.cache_mib, 32);
        assert_eq!(c.peers, Peers::default());
        assert_eq!(c.limits, Limits::default());
        assert_eq!(c.timeouts, Timeouts::default());
    }

    #[test]
    fn written_configuration_reads_back_unchanged() {
        for text in [VALID, MINIMAL] {
            let c = parse(text).expect("valid");
            let written = c.to_toml_string().expect("toml");
            let back = Config::parse(&written, Path::new("/elsewhere")).expect(&written);
            assert_eq!(back, c, "{written}");
        }
    }

    #[test]
    fn retention_defaults_keep_records_and_refuse_less_than_the_legal_minimum() {
        let c = parse(MINIMAL).expect("minimal");
        assert_eq!(c.retention, Retention::default());
        assert_eq!(c.retention.records_years, 7);
        assert_eq!(c.retention.access_log_years, 7);
        assert!(!c.retention.delete_records, "records are kept by default");

        let text = format!(
            "{VALID}\n[retention]\nrecords_years = 10\naccess_log_years = 2\ndelete_records = true\n"
        );
        let c = parse(&text).expect("valid");
        assert_eq!(
            c.retention,
            Retention {
                records_years: 10,
                access_log_years: 2,
                delete_records: true
            }
        );
        let back =
            Config::parse(&c.to_toml_string().expect("toml"), Path::new("/x")).expect("back");
        assert_eq!(back.retention, c.retention);

        let err = refused(
            &format!("{VALID}\n[retention]\nrecords_years = 6\n"),
            "retention.records_years",
        );
        assert!(
            err.to_string().contains("legal minimum of 7 years"),
            "{err}"
        );
        refused(
            &format!("{VALID}\n[retention]\naccess_log_years = 0\n"),
            "retention.access_log_years",
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = VALID.replace("cache_mib = 32", "cache_mib = 32\ncache_gib = 1");
        let err = refused(&text, "store.cache_gib");
        assert!(err.to_string().contains("unknown field"), "{err}");
        refused(&format!("{VALID}\n[extra]\nx = 1\n"), "extra");
        refused(
            &VALID.replace("[limits]", "[limits]\nmax_frames = 3"),
            "limits.max_frames",
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let text = VALID.replace("cert = \"pki/is-131016.pem\"\n", "");
        refused(&text, "tls.cert");
        let text = VALID.replace("agency = \"131016\"\n", "");
        refused(&text, "box.agency");
    }

    #[test]
    fn wrong_types_are_named() {
        refused(
            &with("limits", "max_connections", "\"many\""),
            "limits.max_connections",
        );
        refused(
            &with("timeouts", "retry_count", "-1"),
            "timeouts.retry_count",
        );
        refused(&with("core", "allow", "\"127.0.0.1/32\""), "core.allow");
    }

    #[test]
    fn syntax_error_is_refused() {
        let err = parse("[box\nagency = 1").expect_err("not TOML");
        assert!(matches!(err, ConfigError::Syntax { .. }));
    }

    #[test]
    fn agency_code_is_checked() {
        refused(&with("box", "agency", "\"\""), "box.agency");
        refused(&with("box", "agency", "\"13 1016\""), "box.agency");
        refused(
            &with("box", "agency", "\"12345678901234567\""),
            "box.agency",
        );
    }

    #[test]
    fn display_name_is_checked() {
        refused(&with("box", "name", "\"  \""), "box.name");
        refused(
            &with("box", "name", &format!("\"{}\"", "x".repeat(65))),
            "box.name",
        );
        refused(&with("box", "name", "\"a\\tb\""), "box.name");
        let c = parse(&with("box", "name", "\"千代田区\"")).expect("unicode name");
        assert_eq!(c.name.as_deref(), Some("千代田区"));
    }

    #[test]
    fn listen_addresses_are_checked() {
        let err = refused(
            &with("listen", "core_side", "\"localhost:7443\""),
            "listen.core_side",
        );
        assert!(err.to_string().contains("IP:port"), "{err}");
        refused(
            &with("listen", "agency_side", "\"127.0.0.1\""),
            "listen.agency_side",
        );
        refused(
            &with("listen", "agency_side", "\"127.0.0.1:7443\""),
            "listen.agency_side",
        );
        refused(
            &with("listen", "core_side", "\"0.0.0.0:7444\""),
            "listen.agency_side",
        );
        // Port 0 (any free port) is allowed for listeners, for tests.
        let c = parse(&with("listen", "core_side", "\"127.0.0.1:0\"")).expect("port 0");
        assert_eq!(c.listen.core_side.port(), 0);
        // Same port on different addresses is fine: two NICs.
        parse(&with("listen", "agency_side", "\"10.1.0.1:7443\"")).expect("two NICs");
    }

    #[test]
    fn dial_addresses_are_checked() {
        refused(
            &with("core", "address", "\"core.example:7000\""),
            "core.address",
        );
        refused(&with("ims", "address", "\"127.0.0.1:0\""), "ims.address");
        refused(
            &with("ims", "address", "\"127.0.0.1:70000\""),
            "ims.address",
        );
    }

    #[test]
    fn admission_limits_and_rates_are_checked() {
        let c = parse(MINIMAL).expect("minimal");
        assert_eq!(c.limits.handshake_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.max_handshakes, 64);
        assert_eq!(c.limits.max_handshakes_per_source, 8);
        assert_eq!(c.limits.reserved_connections, 16);
        assert_eq!(c.rates, RateLimits::default());
        refused(
            &with("limits", "handshake_timeout_ms", "0"),
            "limits.handshake_timeout_ms",
        );
        refused(
            &with("limits", "max_handshakes", "0"),
            "limits.max_handshakes",
        );
        refused(
            &with("limits", "max_handshakes_per_source", "65537"),
            "limits.max_handshakes_per_source",
        );
        let c = parse(&with("limits", "reserved_connections", "0")).expect("no reserve");
        assert_eq!(c.limits.reserved_connections, 0);
        refused(&with("rates", "status_per_s", "0"), "rates.status_per_s");
        refused(&with("rates", "peer_burst", "1000001"), "rates.peer_burst");
        refused(
            &VALID.replace("[rates]", "[rates]\nbox_status_per_s = 3"),
            "rates.box_status_per_s",
        );
        let c = parse(&with("rates", "status_burst", "3")).expect("valid");
        assert_eq!(c.rates.status, Rate { per_s: 1, burst: 3 });
    }

    #[test]
    fn allow_lists_are_checked() {
        let err = refused(&with("core", "allow", "[]"), "core.allow");
        assert!(err.to_string().contains("could never connect"), "{err}");
        refused(&with("ims", "allow", "[]"), "ims.allow");
        let err = refused(
            &with("core", "allow", "[\"127.0.0.1/32\", \"10.0.0.5\"]"),
            "core.allow[1]",
        );
        assert!(err.to_string().contains("10.0.0.5/32"), "{err}");
        let err = refused(&with("ims", "allow", "[\"10.1.2.3/8\"]"), "ims.allow[0]");
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
        refused(&with("peers", "allow", "[\"nonsense\"]"), "peers.allow[0]");
        let c = parse(&with(
            "peers",
            "allow",
            "[\"127.0.0.0/8\", \"2001:db8::/32\"]",
        ))
        .expect("IPv6");
        assert_eq!(c.peers.allow.len(), 2);
    }

    #[test]
    fn peer_entries_are_checked() {
        refused(
            &with("peers", "deny_agencies", "[\"131024\", \"x y\"]"),
            "peers.deny_agencies[1]",
        );
        refused(
            &VALID.replace("272124 = ", "\"27 2124\" = "),
            "peers.addresses.\"27 2124\"",
        );
        let err = refused(
            &VALID.replace("\"127.0.0.2:7443\"", "\"192.0.2.9:7443\""),
            "peers.addresses.272124",
        );
        assert!(err.to_string().contains("outside peers.allow"), "{err}");
        refused(
            &VALID.replace("272124 = ", "131016 = "),
            "peers.addresses.131016",
        );
        refused(
            &VALID.replace("\"127.0.0.2:7443\"", "\"127.0.0.2\""),
            "peers.addresses.272124",
        );
    }

    #[test]
    fn limits_are_checked() {
        refused(
            &with("limits", "max_frame_bytes", "1023"),
            "limits.max_frame_bytes",
        );
        refused(
            &with("limits", "max_frame_bytes", "67108865"),
            "limits.max_frame_bytes",
        );
        parse(&with("limits", "max_frame_bytes", "1024")).expect("1 KiB");
        parse(&with("limits", "max_frame_bytes", "67108864")).expect("64 MiB");
        // The in-flight budget holds at least eight of the largest frames;
        // left out, it grows with them.
        let in_flight = |text: &str| parse(text).expect("valid").limits.in_flight_bytes;
        assert_eq!(in_flight(VALID), 32 << 20);
        assert_eq!(
            in_flight(&with("limits", "max_frame_bytes", "67108864")),
            512 << 20
        );
        let set = |bytes: &str| {
            VALID.replace(
                "[limits]\n",
                &format!("[limits]\nin_flight_bytes = {bytes}\n"),
            )
        };
        assert_eq!(in_flight(&set("67108864")), 64 << 20);
        let err = refused(&set("33554431"), "limits.in_flight_bytes");
        assert!(
            err.to_string().contains("8 × limits.max_frame_bytes"),
            "{err}"
        );
        refused(&set("4294967297"), "limits.in_flight_bytes");
        refused(
            &with("limits", "max_connections", "0"),
            "limits.max_connections",
        );
        refused(
            &with("limits", "max_connections", "65537"),
            "limits.max_connections",
        );
        refused(
            &with("limits", "io_timeout_ms", "0"),
            "limits.io_timeout_ms",
        );
        refused(
            &with("limits", "io_timeout_ms", "600001"),
            "limits.io_timeout_ms",
        );
    }

    #[test]
    fn timeouts_are_checked() {
        let err = refused(&with("timeouts", "connect_ms", "0"), "timeouts.connect_ms");
        assert!(err.to_string().contains("is 0"), "{err}");
        refused(&with("timeouts", "reply_ms", "0"), "timeouts.reply_ms");
        refused(
            &with("timeouts", "reply_ms", "3600001"),
            "timeouts.reply_ms",
        );
        refused(
            &with("timeouts", "retry_backoff_ms", "0"),
            "timeouts.retry_backoff_ms",
        );
        refused(
            &with("timeouts", "retry_count", "101"),
            "timeouts.retry_count",
        );
        let c = parse(&with("timeouts", "retry_count", "0")).expect("no retries");
        assert_eq!(c.timeouts.retry_count, 0);
    }

    #[test]
    fn store_settings_are_checked() {
        refused(&with("store", "cache_mib", "0"), "store.cache_mib");
        refused(&with("store", "cache_mib", "4097"), "store.cache_mib");
        refused(&with("store", "path", "\"\""), "store.path");
        refused(&with("tls", "ca", "\"\""), "tls.ca");
        refused(&with("tls", "key", "\"\""), "tls.key");
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../docs/ifrelay.example.toml");
        let c = parse(text).expect("docs/ifrelay.example.toml parses");
        assert_eq!(c.agency.as_str(), "131016");
    }

    // -- files -------------------------------------------------------------

    /// A directory holding a development PKI at the paths VALID names.
    struct Site {
        dir: tempfile::TempDir,
        pki: DevPki,
    }

    impl Site {
        fn new() -> Self {
            let dir = tempfile::tempdir().expect("temp dir");
            let pki_dir = dir.path().join("pki");
            std::fs::create_dir(&pki_dir).expect("pki dir");
            let pki = DevPki::new().expect("CA");
            pki.write_ca(&pki_dir).expect("CA");
            pki.operator().write_roots(&pki_dir).expect("roots");
            pki.issue(&Party::is(AgencyCode::new("131016").expect("code")))
                .expect("cert")
                .write(&pki_dir, "is-131016")
                .expect("write");
            Site { dir, pki }
        }

        fn check(&self, text: &str) -> Result<Config, ConfigError> {
            Config::from_toml_str(text, self.dir.path())
        }

        #[track_caller]
        fn refused(&self, text: &str, field: &str) -> ConfigError {
            let err = self.check(text).expect_err("must be refused");
            assert_eq!(err.field(), Some(field), "{err}");
            err
        }
    }

    #[test]
    fn files_that_exist_and_match_pass() {
        let b = Site::new();
        let c = b.check(VALID).expect("valid with files");
        c.tls_material().expect("material");
        // The store directory does not exist yet: it can be created.
        assert!(!b.dir.path().join("var").exists());
    }

    #[test]
    fn load_resolves_paths_against_the_file() {
        let b = Site::new();
        let file = b.dir.path().join("ifrelay.toml");
        std::fs::write(&file, VALID).expect("write config");
        let c = Config::load(&file).expect("load");
        assert_eq!(c.tls.ca, b.dir.path().join("pki/ca.pem"));

        let broken = b.dir.path().join("broken.toml");
        std::fs::write(
            &broken,
            VALID.replace("[limits]", "[limits]\nmax_frames = 1"),
        )
        .expect("write config");
        let err = Config::load(&broken).expect_err("unknown key");
        assert_eq!(err.field(), Some("limits.max_frames"));
        assert!(err.to_string().contains("broken.toml"), "{err}");

        let err = Config::load(&b.dir.path().join("absent.toml")).expect_err("absent");
        assert!(matches!(err, ConfigError::Read { .. }));
        assert!(err.to_string().contains("absent.toml"), "{err}");
    }

    #[test]
    fn missing_tls_files_are_named() {
        let b = Site::new();
        let err = b.refused(&with("tls", "cert", "\"pki/nope.pem\""), "tls.cert");
        let text = err.to_string();
        assert!(
            text.contains("nope.pem") && text.contains("does not exist"),
            "{text}"
        );
        assert!(text.contains("box certificate PEM"), "{text}");
        b.refused(&with("tls", "ca", "\"pki/none.pem\""), "tls.ca");
        b.refused(&with("tls", "key", "\"pki/none.key\""), "tls.key");
        b.refused(&with("tls", "ca", "\"pki\""), "tls.ca");
    }

    #[test]
    fn tls_contents_are_checked() {
        let b = Site::new();
        // A certificate where the key belongs, and the reverse.
        b.refused(&with("tls", "key", "\"pki/is-131016.pem\""), "tls.key");
        b.refused(&with("tls", "cert", "\"pki/is-131016.key\""), "tls.cert");
        b.refused(&with("tls", "ca", "\"pki/is-131016.key\""), "tls.ca");

        // Another party's certificate: refused, naming tls.cert.
        let pki_dir = b.dir.path().join("pki");
        b.pki
            .issue(&Party::ims(AgencyCode::new("131016").expect("code")))
            .expect("cert")
            .write(&pki_dir, "ims")
            .expect("write");
        let text = with("tls", "cert", "\"pki/ims.pem\"");
        let err = b.refused(&with_in(&text, "tls", "key", "\"pki/ims.key\""), "tls.cert");
        assert!(err.to_string().contains("ims/131016"), "{err}");

        // A key of another certificate.
        b.refused(&with("tls", "key", "\"pki/ims.key\""), "tls.key");

        // A certificate of this box from another CA.
        let foreign = DevPki::new().expect("foreign CA");
        foreign
            .issue(&Party::is(AgencyCode::new("131016").expect("code")))
            .expect("cert")
            .write(&pki_dir, "foreign")
            .expect("write");
        let text = with("tls", "cert", "\"pki/foreign.pem\"");
        b.refused(
            &with_in(&text, "tls", "key", "\"pki/foreign.key\""),
            "tls.cert",
        );
    }

    #[test]
    fn distribution_roots_are_checked() {
        use std::os::unix::fs::PermissionsExt;
        let b = Site::new();
        let c = b.check(VALID).expect("valid");
        assert_eq!(c.trust.expiry_warning, Duration::from_secs(48 * 3600));
        assert_eq!(
            c.distribution_roots().expect("roots"),
            vec![b.pki.operator().root()]
        );
        let pki_dir = b.dir.path().join("pki");
        b.refused(
            &with("trust", "distribution_roots", "\"pki/none.pem\""),
            "trust.distribution_roots",
        );
        // A certificate is not a root key; nor is an empty file.
        b.refused(
            &with("trust", "distribution_roots", "\"pki/ca.pem\""),
            "trust.distribution_roots",
        );
        std::fs::write(pki_dir.join("empty.pem"), "").expect("write");
        b.refused(
            &with("trust", "distribution_roots", "\"pki/empty.pem\""),
            "trust.distribution_roots",
        );
        // Two roots: both pinned.
        let second = ifrelay_devpki::DevOperator::generate().expect("operator");
        let both = format!("{}{}", b.pki.operator().roots_pem(), second.roots_pem());
        std::fs::write(pki_dir.join("both.pem"), both).expect("write");
        let c = b
            .check(&with("trust", "distribution_roots", "\"pki/both.pem\""))
            .expect("two roots");
        assert_eq!(c.distribution_roots().expect("roots").len(), 2);
        // Whoever may write the file decides what the box trusts.
        let roots = pki_dir.join("distribution-roots.pem");
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let err = b.refused(VALID, "trust.distribution_roots");
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );
        b.refused(
            &with("trust", "expiry_warning_hours", "0"),
            "trust.expiry_warning_hours",
        );
    }

    #[test]
    fn store_path_is_checked() {
        let b = Site::new();
        std::fs::create_dir(b.dir.path().join("var")).expect("var");
        b.refused(&with("store", "path", "\"var\""), "store.path");
        std::fs::write(b.dir.path().join("plain"), "x").expect("file");
        b.refused(
            &with("store", "path", "\"plain/deeper/ifrelay.redb\""),
            "store.path",
        );
        // `run` creates the store's directory, but nothing above it.
        b.check(&with("store", "path", "\"new/ifrelay.redb\""))
            .expect("creatable");
        let err = b.refused(
            &with("store", "path", "\"new/deeper/ifrelay.redb\""),
            "store.path",
        );
        assert!(err.to_string().contains("create the parent"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn unwritable_store_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let b = Site::new();
        let ro = b.dir.path().join("ro");
        std::fs::create_dir(&ro).expect("dir");
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o500)).expect("chmod");
        // root ignores permissions: only meaningful for an ordinary user.
        if tempfile::tempfile_in(&ro).is_err() {
            b.refused(&with("store", "path", "\"ro/ifrelay.redb\""), "store.path");
        }
        std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    }

    #[test]
    fn example_file_validates_with_its_files_in_place() {
        let b = Site::new();
        let text = include_str!("../docs/ifrelay.example.toml");
        b.check(text)
            .expect("example validates against a PKI at its paths");
    }

    /// `text` with `key` of `[section]` set to `value` (TOML syntax).
    fn with_in(text: &str, section: &str, key: &str, value: &str) -> String {
        let mut out = String::new();
        let mut current = String::new();
        for line in text.lines() {
            let t = line.trim();
            if t.starts_with('[') {
                current = t.trim_matches(|c| c == '[' || c == ']').to_owned();
            }
            if current == section && t.split('=').next().map(str::trim) == Some(key) {
                out.push_str(&format!("{key} = {value}\n"));
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}
