//! The values the store keeps for the rest of the firmware: records,
//! access-log entries, their chained forms, search filters, boot state,
//! outbox entries and the remembered replies of duplicate suppression.
//!
//! [`Record`] and [`AccessEntry`] are stored as CBOR inside hash-chained
//! rows; their field names are part of the file format (renaming one breaks
//! decoding of old rows, so a change needs a schema version bump).

use ifrelay_proto::{
    AgencyCode, BusinessCode, InfoNameCode, ItemCode, Millis, PermitId, PersonCode, Prefix, Serial,
};
use serde::{Deserialize, Serialize};

/// Which record of a query's life (R-REC-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// A query was relayed (情報照会).
    Query,
    /// A provision (the answer) was relayed (情報提供).
    Provision,
}

/// Which side of the exchange this box is on for the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// This box serves the requesting agency.
    Requester,
    /// This box serves the providing agency.
    Provider,
}

/// A query or provision record (R-REC-1, Article 23 of the Act).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: RecordKind,
    pub side: Side,
    /// Processing serial of the exchange.
    pub serial: Serial,
    /// Requester, business, provider, info name and items.
    pub prefix: Prefix,
    /// This side's pseudonymous code (符号) of the person, when known.
    pub code: Option<PersonCode>,
    /// The core's permit, once one was issued.
    pub permit_id: Option<PermitId>,
    /// The other agency of the exchange.
    pub counterpart: Option<AgencyCode>,
    /// When the query was requested.
    pub query_requested_at: Millis,
    /// When the provision was made, for provision records.
    pub provision_at: Option<Millis>,
    /// Whether the box clock was NTP-synchronised when the record was made,
    /// so a reader knows how far to trust the times.
    pub clock_synced: bool,
}

/// A record as stored: its place in the chain and the time it was appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedRecord {
    pub seq: u64,
    /// Box time when the record was appended.
    pub at: Millis,
    #[serde(with = "serde_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    pub record: Record,
}

/// What an access-log entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// A message received.
    In,
    /// A message sent.
    Out,
    /// An operation at the local console.
    Console,
    /// A connection opened, refused or closed.
    Connection,
}

/// One access-log entry (R-REC-5): one per message sent or received and
/// per console operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessEntry {
    pub at: Millis,
    /// Peer socket address, or `console:ttyS0`.
    pub terminal: String,
    /// `core`, `is/131016`, `ims/131016`, `unauthenticated`.
    pub party: String,
    pub agency: Option<AgencyCode>,
    /// Console user id.
    pub staff: Option<String>,
    pub direction: Direction,
    /// Message type (`query`, `permit`, ...) or console command.
    pub operation: String,
    pub message_id: Option<String>,
    pub serial: Option<Serial>,
    pub business: Option<BusinessCode>,
    pub info_name: Option<InfoNameCode>,
    pub items: Vec<ItemCode>,
    /// `accepted`, `delivered`, or a reason code such as `E_NO_BINDING`.
    pub outcome: String,
}

/// An access-log entry as stored, with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedAccess {
    pub seq: u64,
    #[serde(with = "serde_bytes")]
    pub prev_hash: [u8; 32],
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    pub entry: AccessEntry,
}

/// The body of a record row, which the chain hash covers (borrowed form
/// for writing).
#[derive(Serialize)]
pub(crate) struct RecordBodyRef<'a> {
    pub at: Millis,
    pub record: &'a Record,
}

/// The body of a record row (owned form for reading).
#[derive(Deserialize)]
pub(crate) struct RecordBody {
    pub at: Millis,
    pub record: Record,
}

/// Search criteria for records (R-REC-2). Every set field must match; an
/// empty filter matches everything. Build with struct-update syntax:
/// `RecordFilter { serial: Some(s), ..RecordFilter::default() }`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordFilter {
    /// Only records with seq at or above this (paging: last seq + 1).
    pub from_seq: u64,
    pub serial: Option<Serial>,
    /// Appended at or after this time.
    pub since: Option<Millis>,
    /// Appended strictly before this time.
    pub until: Option<Millis>,
    pub requester: Option<AgencyCode>,
    pub provider: Option<AgencyCode>,
    pub business: Option<BusinessCode>,
    pub info_name: Option<InfoNameCode>,
    /// The record's prefix names this item.
    pub item: Option<ItemCode>,
    /// This side's pseudonymous code.
    pub code: Option<PersonCode>,
    pub kind: Option<RecordKind>,
    pub side: Option<Side>,
}

impl RecordFilter {
    /// Whether `r` (appended at `at`) matches every set criterion.
    pub fn matches(&self, seq: u64, at: Millis, r: &Record) -> bool {
        seq >= self.from_seq
            && self.serial.as_ref().is_none_or(|s| *s == r.serial)
            && self.since.is_none_or(|t| at >= t)
            && self.until.is_none_or(|t| at < t)
            && self
                .requester
                .as_ref()
                .is_none_or(|a| *a == r.prefix.requester)
            && self
                .provider
                .as_ref()
                .is_none_or(|a| *a == r.prefix.provider)
            && self
                .business
                .as_ref()
                .is_none_or(|b| *b == r.prefix.business)
            && self
                .info_name
                .as_ref()
                .is_none_or(|i| *i == r.prefix.info_name)
            && self
                .item
                .as_ref()
                .is_none_or(|i| r.prefix.items.contains(i))
            && self
                .code
                .as_ref()
                .is_none_or(|c| r.code.as_ref() == Some(c))
            && self.kind.is_none_or(|k| k == r.kind)
            && self.side.is_none_or(|s| s == r.side)
    }
}

/// Entries appended before a time: how many, the oldest and the newest
/// time among them (`None` when there are none).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AgeCount {
    pub entries: u64,
    pub oldest: Option<i64>,
    pub newest: Option<i64>,
}

/// Where a page of search results ends: the seq of the last entry
/// returned. Seqs only grow, so entries appended after a page was read
/// all come after its cursor, and the next page neither skips nor repeats
/// an entry (R-REC-2: paging stays stable while new records arrive).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PageCursor {
    /// The seq of the last entry of the page; the next page starts after
    /// it.
    pub last_seq: u64,
}

impl PageCursor {
    /// The cursor before the first entry.
    pub const START: PageCursor = PageCursor { last_seq: 0 };
}

/// Search criteria for the access log (R-REC-2, R-REC-6). Every set field
/// must match; an empty filter matches everything. Party, agency, staff
/// and serial are answered through an index, the time range through the
/// time index; direction and operation only narrow what those yield.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessFilter {
    /// Logged at or after this time.
    pub since: Option<Millis>,
    /// Logged strictly before this time.
    pub until: Option<Millis>,
    /// The peer or actor: `core`, `is/131016`, `ims/131016`, ...
    pub party: Option<String>,
    pub agency: Option<AgencyCode>,
    /// Console user id.
    pub staff: Option<String>,
    pub serial: Option<Serial>,
    pub direction: Option<Direction>,
    /// Message type or console command.
    pub operation: Option<String>,
}

impl AccessFilter {
    /// Whether `e` matches every set criterion.
    pub fn matches(&self, e: &AccessEntry) -> bool {
        self.since.is_none_or(|t| e.at >= t)
            && self.until.is_none_or(|t| e.at < t)
            && self.party.as_ref().is_none_or(|p| *p == e.party)
            && self
                .agency
                .as_ref()
                .is_none_or(|a| e.agency.as_ref() == Some(a))
            && self
                .staff
                .as_ref()
                .is_none_or(|s| e.staff.as_ref() == Some(s))
            && self
                .serial
                .as_ref()
                .is_none_or(|s| e.serial.as_ref() == Some(s))
            && self.direction.is_none_or(|d| d == e.direction)
            && self.operation.as_ref().is_none_or(|o| *o == e.operation)
    }
}

/// A frame waiting in the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Monotonic forever, also across restarts and removals.
    pub seq: u64,
    pub destination: String,
    pub frame: Vec<u8>,
}

/// What the engine reloads at start ([`crate::Store::boot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootState {
    /// The serial epoch of this boot, already durable.
    pub epoch: u64,
    /// Every stored prefix snapshot `(version, opaque CBOR)`, oldest
    /// first; the last is the current one. The engine prunes all but the
    /// ones it may still need ([`crate::Batch::prune_prefixes_below`]).
    pub prefixes: Vec<(u64, Vec<u8>)>,
    /// Every stored process state, by serial, in serial order.
    pub processes: Vec<(Serial, Vec<u8>)>,
    /// Number of frames waiting in the outbox. The entries themselves are
    /// read per destination with [`crate::StoreReader::outbox_destinations`]
    /// and [`crate::StoreReader::outbox_for`], so a large backlog is never
    /// loaded whole.
    pub outbox_len: u64,
}

/// A frame already accepted from a sender, remembered so a resent copy
/// (same sender, same message id) gets the same reply again and is not
/// handled twice (DESIGN "Wire format": duplicates dropped by message id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenEntry {
    /// Box time when the frame was first accepted; pruning goes by it.
    pub at: Millis,
    /// The encoded reply body the box sent then (opaque bytes).
    pub reply: Vec<u8>,
}
