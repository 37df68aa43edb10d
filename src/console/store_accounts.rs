//! The console's accounts in the box's store: read through a
//! [`StoreReader`], written through the engine (the store's one writer)
//! as [`Input::Console`], each write durable before the console goes on.
//!
//! Blocking: the console runs on its own thread, never on the runtime.

use std::time::Duration;

use ifrelay_proto::{Body, Millis};
use ifrelay_store::{AccessEntry, AccessFilter, Direction, PageCursor, RecordFilter, StoreReader};
use tokio::sync::{mpsc, oneshot};

use super::accounts::User;
use super::export::{ExportFailure, ExportOrder, ExportSetup, Exported};
use super::session::{AccessPage, Accounts, Audit, DeletionPlan, RecordPage};
use super::status::StatusReport;
use crate::relay::channel::{ConsoleWrite, Input};
use crate::relay::engine::RetentionPolicy;

/// How long a write may wait for the engine before the console says the
/// store failed (the engine commits within milliseconds when healthy).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accounts in the store, for the console at `terminal`.
pub struct StoreAccounts {
    reader: StoreReader,
    inputs: mpsc::Sender<Input>,
    /// `console:<tty>`, the access log's terminal.
    terminal: String,
    clock: fn() -> Millis,
    status: Option<StatusSource>,
    records: Option<(std::sync::Arc<ExportSetup>, RetentionPolicy)>,
}

/// What `status` reads besides the store.
#[derive(Debug, Clone)]
pub struct StatusSource {
    pub name: String,
    pub started: std::time::Instant,
    /// The service hours.
    pub service: crate::relay::hours::ServiceHours,
    pub store_path: std::path::PathBuf,
    pub peers: std::sync::Arc<crate::health::PeerBook>,
    pub chains: std::sync::Arc<std::sync::Mutex<crate::health::ChainState>>,
}

impl StoreAccounts {
    pub fn new(
        reader: StoreReader,
        inputs: mpsc::Sender<Input>,
        terminal: &str,
        clock: fn() -> Millis,
    ) -> StoreAccounts {
        StoreAccounts {
            reader,
            inputs,
            terminal: format!("console:{terminal}"),
            clock,
            status: None,
            records: None,
        }
    }

    /// With what `export` and `delete` need.
    pub fn with_records(
        mut self,
        export: std::sync::Arc<ExportSetup>,
        retention: RetentionPolicy,
    ) -> StoreAccounts {
        self.records = Some((export, retention));
        self
    }

    /// With what `status` needs besides the store.
    pub fn with_status(mut self, source: StatusSource) -> StoreAccounts {
        self.status = Some(source);
        self
    }

    fn write(
        &self,
        users: Vec<(String, Option<Vec<u8>>)>,
        access: Option<AccessEntry>,
    ) -> Result<(), String> {
        self.write_all(users, access, None)
    }

    fn write_all(
        &self,
        users: Vec<(String, Option<Vec<u8>>)>,
        access: Option<AccessEntry>,
        delete_records_before: Option<Millis>,
    ) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        let input = Input::Console(Box::new(ConsoleWrite {
            users,
            access,
            delete_records_before,
            done,
        }));
        self.inputs
            .blocking_send(input)
            .map_err(|_| "the relay engine is stopping".to_owned())?;
        // The runtime is not this thread's: wait with a bound.
        let deadline = std::time::Instant::now() + WRITE_TIMEOUT;
        let mut answer = answer;
        loop {
            match answer.try_recv() {
                Ok(Body::Accepted(_)) => return Ok(()),
                Ok(Body::Refused(r)) => return Err(format!("{}: {}", r.reason, r.text)),
                Ok(other) => return Err(format!("unexpected answer {other:?}")),
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err("the store refused the write".to_owned())
                }
                Err(oneshot::error::TryRecvError::Empty) => {
                    if std::time::Instant::now() >= deadline {
                        return Err("the store did not answer in time".to_owned());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

impl Accounts for StoreAccounts {
    fn users(&self) -> Result<Vec<User>, String> {
        let rows = self.reader.users().map_err(|e| e.to_string())?;
        rows.into_iter()
            .map(|(id, bytes)| {
                ciborium::from_reader::<User, _>(&bytes[..])
                    .map_err(|e| format!("account {id} does not decode: {e}"))
            })
            .collect()
    }

    fn save(&mut self, user: &User) -> Result<(), String> {
        let mut bytes = Vec::new();
        ciborium::into_writer(user, &mut bytes).map_err(|e| e.to_string())?;
        self.write(vec![(user.id.clone(), Some(bytes))], None)
    }

    fn save_logged(&mut self, user: &User, entry: Audit) -> Result<(), String> {
        let mut bytes = Vec::new();
        ciborium::into_writer(user, &mut bytes).map_err(|e| e.to_string())?;
        let access = self.access_entry(entry);
        self.write(vec![(user.id.clone(), Some(bytes))], Some(access))
    }

    fn remove(&mut self, id: &str) -> Result<(), String> {
        self.write(vec![(id.to_owned(), None)], None)
    }

    fn status(&self) -> Result<StatusReport, String> {
        let source = self.status.as_ref().ok_or("not available here")?;
        let text = |e: ifrelay_store::StoreError| e.to_string();
        let store = &source.store_path;
        let size = |p: &std::path::Path| std::fs::metadata(p).map(|m| m.len()).ok();
        let store_bytes =
            size(store).map(|s| s + size(&ifrelay_store::log_path(store)).unwrap_or(0));
        let free_bytes = store.parent().and_then(|dir| {
            nix::sys::statvfs::statvfs(dir)
                .ok()
                .map(|v| v.blocks_available() * v.fragment_size())
        });
        Ok(StatusReport {
            name: source.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: source.started.elapsed().as_secs(),
            in_service: source.service.is_open((self.clock)()),
            service: source.service.describe(),
            outbox: self.reader.outbox_destinations().map_err(text)?,
            records: self.reader.record_count().map_err(text)?,
            access_log: self.reader.access_count().map_err(text)?,
            store_bytes,
            free_bytes,
            clock_synced: false,
            peers: source.peers.snapshot(),
            chains: source
                .chains
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        })
    }

    fn search_records(
        &self,
        filter: &RecordFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<RecordPage, String> {
        self.reader
            .search_records_page(filter, cursor, limit)
            .map_err(|e| e.to_string())
    }

    fn search_access(
        &self,
        filter: &AccessFilter,
        cursor: PageCursor,
        limit: usize,
    ) -> Result<AccessPage, String> {
        self.reader
            .search_access_page(filter, cursor, limit)
            .map_err(|e| e.to_string())
    }

    fn export(&mut self, order: &ExportOrder, now: Millis) -> Result<Exported, ExportFailure> {
        let (setup, _) = self.records.as_ref().ok_or_else(|| ExportFailure::Box {
            detail: "exports are not set up".into(),
        })?;
        setup.run(&self.reader, order, now)
    }

    fn deletion_plan(&self, now: Millis) -> Result<DeletionPlan, String> {
        let (_, retention) = self.records.as_ref().ok_or("not available here")?;
        let cutoff = retention.records_cutoff(now);
        let records = self
            .reader
            .records_before(cutoff)
            .map_err(|e| e.to_string())?;
        let years = retention.records.as_secs() / RetentionPolicy::YEAR.as_secs();
        Ok(DeletionPlan {
            cutoff,
            years: u32::try_from(years).unwrap_or(u32::MAX),
            records,
        })
    }

    fn confirm_deletion(&mut self, before: Millis, entry: Audit) -> Result<(), String> {
        let access = self.access_entry(entry);
        self.write_all(Vec::new(), Some(access), Some(before))
    }

    fn audit(&mut self, entry: Audit) {
        let access = self.access_entry(entry);
        if let Err(error) = self.write(Vec::new(), Some(access)) {
            tracing::error!(%error, "console: could not write the access log");
        }
    }
}

impl StoreAccounts {
    fn access_entry(&self, entry: Audit) -> AccessEntry {
        AccessEntry {
            at: (self.clock)(),
            terminal: self.terminal.clone(),
            party: "console".to_owned(),
            agency: None,
            staff: Some(entry.user),
            direction: Direction::In,
            operation: entry.operation,
            message_id: None,
            serial: None,
            business: entry.business,
            info_name: entry.info_name,
            items: entry.items,
            outcome: entry.outcome,
        }
    }
}
