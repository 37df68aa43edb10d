//! `delete`: records past their retention period go only after the user
//! saw what will go and typed a confirmation phrase naming how many, and
//! — under the two-person rule (`[console] two_person_rule`, default on)
//! — after another auditor or security administrator logged in at this
//! console to approve (R-REC-4). The engine then deletes them in bounded
//! steps; the confirmation is durable, so a restart continues it.
//!
//! Invariants: nothing is confirmed without the exact phrase; the
//! approver is a different person whose role may approve, passes the same
//! checks as a login (password, fresh one-time code, lockout; a failure
//! counts against that account) and holds no temporary password; every
//! outcome is an access-log entry.

use ifrelay_proto::Millis;

use super::{entry, Accounts, Audit, DeletionPlan, Session, State};
use crate::console::accounts::Permission;
use crate::console::messages::Msg;
use crate::relay::engine::RETENTION_DELETE_PER_TICK;

const OPERATION: &str = "delete records";

impl<B: Accounts> Session<B> {
    /// Shows what the policy allows to delete and asks for the phrase.
    pub(super) fn delete_command(&mut self, me: &str, now: Millis) {
        match self.backend.deletion_plan(now) {
            Ok(plan) => match (
                plan.records.entries,
                plan.records.oldest,
                plan.records.newest,
            ) {
                (count @ 1.., Some(oldest), Some(newest)) => {
                    self.say(&Msg::DeletePlan {
                        count,
                        oldest,
                        newest,
                        years: plan.years,
                        cutoff: plan.cutoff,
                    });
                    let phrase = format!("DELETE {count}");
                    self.state = State::DeleteConfirm {
                        plan,
                        phrase: phrase.clone(),
                    };
                    self.prompt(&Msg::DeletePhrasePrompt { phrase }, false);
                    return;
                }
                _ => {
                    self.say(&Msg::NothingToDelete {
                        years: plan.years,
                        cutoff: plan.cutoff,
                    });
                    self.audit(me, OPERATION, "accepted: nothing past the period");
                }
            },
            Err(detail) => self.say(&Msg::StoreFailed { detail }),
        }
        self.state = State::Ready;
        self.ready_prompt();
    }

    pub(super) fn delete_confirmed(&mut self, plan: DeletionPlan, phrase: &str, typed: &str) {
        let me = self.user_id();
        self.state = State::Ready;
        if typed.trim() != phrase {
            self.audit(&me, OPERATION, "refused: not confirmed");
            self.say(&Msg::DeleteNotConfirmed);
            self.ready_prompt();
            return;
        }
        if self.settings.two_person {
            self.say(&Msg::ApprovalNeeded);
            self.state = State::ApproverId { plan };
            self.prompt(&Msg::ApproverIdPrompt, false);
            return;
        }
        self.confirm(plan, None);
    }

    /// The second person's login; approves when it passes.
    pub(super) fn approve(
        &mut self,
        plan: DeletionPlan,
        id: &str,
        password: &str,
        code: &str,
        now: Millis,
    ) {
        let me = self.user_id();
        self.state = State::Ready;
        let users = match self.backend.users() {
            Ok(u) => u,
            Err(detail) => {
                self.say(&Msg::StoreFailed { detail });
                self.ready_prompt();
                return;
            }
        };
        let candidate = users
            .into_iter()
            .find(|u| u.id == id && u.id != me && u.role.allows(Permission::ApproveDeletion));
        let Some(mut approver) = candidate else {
            crate::console::accounts::check_nobody(password, self.settings.cost);
            self.audit(id, "approve deletion", "refused: not another approver");
            self.audit(&me, OPERATION, "refused: not approved");
            self.say(&Msg::ApproverRefused { id: id.to_owned() });
            self.ready_prompt();
            return;
        };
        let s = self.settings.clone();
        match approver.login(password, code, now, &s.password, &s.login) {
            Ok(Ok(ok)) => {
                if ok.must_change {
                    let refused = entry(id, "approve deletion", "refused: temporary password");
                    let _ = self.backend.save_logged(&approver, refused);
                    self.audit(&me, OPERATION, "refused: not approved");
                    self.say(&Msg::ApproverMustChange { id: id.to_owned() });
                    self.ready_prompt();
                    return;
                }
                let approved = entry(id, "approve deletion", "accepted");
                if let Err(detail) = self.backend.save_logged(&approver, approved) {
                    self.say(&Msg::StoreFailed { detail });
                    self.ready_prompt();
                    return;
                }
                self.confirm(plan, Some(id));
            }
            Ok(Err(refusal)) => {
                // The failure counts against the approver's account.
                let refused = entry(id, "approve deletion", &format!("refused: {refusal:?}"));
                let _ = self.backend.save_logged(&approver, refused);
                self.audit(&me, OPERATION, "refused: not approved");
                self.say(&Msg::LoginRefused(refusal));
                self.ready_prompt();
            }
            Err(e) => {
                self.say(&Msg::StoreFailed {
                    detail: e.to_string(),
                });
                self.ready_prompt();
            }
        }
    }

    fn confirm(&mut self, plan: DeletionPlan, approver: Option<&str>) {
        let me = self.user_id();
        let count = plan.records.entries;
        let entry = Audit {
            user: me,
            operation: OPERATION.into(),
            outcome: format!(
                "accepted: {count} records before {}{}",
                crate::relay::jst::jst_minute(plan.cutoff),
                approver.map_or(String::new(), |a| format!(", approved by {a}"))
            ),
            ..Audit::default()
        };
        match self.backend.confirm_deletion(plan.cutoff, entry) {
            Ok(()) => {
                let per_minute = (RETENTION_DELETE_PER_TICK as u64) * 60;
                self.say(&Msg::DeletionConfirmed {
                    count,
                    minutes: count.div_ceil(per_minute),
                });
            }
            Err(detail) => self.say(&Msg::StoreFailed { detail }),
        }
        self.ready_prompt();
    }
}
