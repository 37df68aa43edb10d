//! `export` and `users export`: the order is checked and the user told
//! not to pull the stick; the export itself runs at the next tick
//! ([`Session::tick`]), so that message is on the screen first.

use super::{access_filter, record_filter, Accounts, Audit, Session};
use crate::console::accounts::{inventory, inventory_csv};
use crate::console::export::ExportOrder;
use crate::console::messages::Msg;
use crate::export::AccessSelection;
use ifrelay_proto::Millis;

const EXPORT_USAGE: &str =
    "export records [KEY VALUE…] | export access [from …] [to …] | export all";

impl<B: Accounts> Session<B> {
    /// `export records KEY VALUE…`, `export access [from T] [to T]`,
    /// `export all`.
    pub(super) fn export_command(&mut self, args: &[&str], me: &str) {
        let mut audit = Audit {
            user: me.to_owned(),
            ..Audit::default()
        };
        let order = match args.first() {
            Some(&"records") => {
                audit.operation = "export records".into();
                record_filter(&args[1..]).map(|f| {
                    audit.business = f.business.clone();
                    audit.info_name = f.info_name.clone();
                    audit.items.extend(f.item.clone());
                    ExportOrder::Chains {
                        records: Some(Box::new(f)),
                        access: None,
                    }
                })
            }
            Some(&"access") => {
                audit.operation = "export access".into();
                access_filter(&args[1..]).and_then(|f| {
                    // Only a time range selects access-log entries to export.
                    let only_time = f.serial.is_none()
                        && f.staff.is_none()
                        && f.party.is_none()
                        && f.agency.is_none()
                        && f.operation.is_none();
                    if only_time {
                        Ok(ExportOrder::Chains {
                            records: None,
                            access: Some(AccessSelection {
                                since: f.since,
                                until: f.until,
                            }),
                        })
                    } else {
                        Err(Msg::Usage {
                            usage: "export access [from YYYY-MM-DD[Thh:mm]] [to …]".into(),
                        })
                    }
                })
            }
            Some(&"all") if args.len() == 1 => {
                audit.operation = "export all".into();
                Ok(ExportOrder::Chains {
                    records: Some(Box::default()),
                    access: Some(AccessSelection::default()),
                })
            }
            _ => Err(Msg::Usage {
                usage: EXPORT_USAGE.into(),
            }),
        };
        match order {
            Ok(order) => {
                self.say(&Msg::ExportStarted);
                self.pending_export = Some((order, audit));
            }
            Err(msg) => {
                self.say(&msg);
                if !audit.operation.is_empty() {
                    audit.outcome = "refused: usage".into();
                    self.backend.audit(audit);
                }
                self.ready_prompt();
            }
        }
    }

    /// `users export`: the account inventory as CSV onto the stick.
    pub(super) fn export_inventory(&mut self, me: &str, now: Millis) {
        let csv = self.backend.users().and_then(|users| {
            let rows = inventory(&users, now, &self.settings.password);
            inventory_csv(&rows, crate::relay::jst::jst_minute).map_err(|e| e.to_string())
        });
        match csv {
            Ok(csv) => {
                self.say(&Msg::ExportStarted);
                self.pending_export = Some((
                    ExportOrder::Inventory { csv },
                    Audit {
                        user: me.to_owned(),
                        operation: "users export".into(),
                        ..Audit::default()
                    },
                ));
            }
            Err(detail) => {
                self.say(&Msg::StoreFailed { detail });
                self.ready_prompt();
            }
        }
    }

    /// Runs an export asked for, tells the user and the access log.
    pub(super) fn run_export(&mut self, order: &ExportOrder, mut audit: Audit, now: Millis) {
        match self.backend.export(order, now) {
            Ok(done) => {
                audit.outcome = format!(
                    "accepted: {} records, {} access-log entries, {} recipients, to {} on {}",
                    done.records, done.access_entries, done.recipients, done.name, done.device
                );
                match order {
                    ExportOrder::Inventory { .. } => {
                        self.say(&Msg::InventoryExported { name: done.name })
                    }
                    ExportOrder::Chains { .. } => self.say(&Msg::ExportDone(done)),
                }
            }
            Err(failure) => {
                tracing::warn!(error = %crate::logging::Causes(&failure), "console: export failed");
                audit.outcome = format!("refused: {failure}");
                self.say(&Msg::export_failed(&failure));
            }
        }
        self.backend.audit(audit);
        self.ready_prompt();
    }
}
