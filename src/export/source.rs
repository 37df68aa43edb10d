//! [`ExportSource`]: what an export reads, a page at a time, from one
//! consistent state of the store. A read-only store's [`Snapshot`] is the
//! source of `ifrelay export` on a stopped box; the console of a later
//! issue adds one over the running box's reader.

use ifrelay_proto::Millis;
use ifrelay_store::{
    ChainMark, ChainName, RawAccess, RawRecord, RecordFilter, Snapshot, StoreError,
};

/// One consistent state of a store, read a page at a time.
pub trait ExportSource {
    /// Where `chain` starts and ends.
    ///
    /// # Errors
    /// The store's read error.
    fn chain_mark(&self, chain: ChainName) -> Result<ChainMark, StoreError>;

    /// Up to `limit` records matching `filter` from `filter.from_seq` on,
    /// and the seq to continue from (`None`: done).
    ///
    /// # Errors
    /// The store's read error.
    fn records(
        &self,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<(Vec<RawRecord>, Option<u64>), StoreError>;

    /// Up to `limit` access-log entries from `from_seq` on within
    /// `since..until`, and the seq to continue from (`None`: done).
    ///
    /// # Errors
    /// The store's read error.
    fn access_log(
        &self,
        from_seq: u64,
        since: Option<Millis>,
        until: Option<Millis>,
        limit: usize,
    ) -> Result<(Vec<RawAccess>, Option<u64>), StoreError>;
}

impl ExportSource for Snapshot {
    fn chain_mark(&self, chain: ChainName) -> Result<ChainMark, StoreError> {
        Snapshot::chain_mark(self, chain)
    }

    fn records(
        &self,
        filter: &RecordFilter,
        limit: usize,
    ) -> Result<(Vec<RawRecord>, Option<u64>), StoreError> {
        Snapshot::records(self, filter, limit)
    }

    fn access_log(
        &self,
        from_seq: u64,
        since: Option<Millis>,
        until: Option<Millis>,
        limit: usize,
    ) -> Result<(Vec<RawAccess>, Option<u64>), StoreError> {
        Snapshot::access_log(self, from_seq, since, until, limit)
    }
}
