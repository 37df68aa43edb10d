//! The console's message catalogue: every text the console shows, in
//! Japanese and English side by side, chosen per user (Japanese by
//! default). Each refusal says what went wrong and what to do next
//! (seed 002 §4.7 item 2).

use super::accounts::{Lang, PasswordRefusal, Refusal, Role};
use super::export::{ExportFailure, Exported};
use super::media::MediaError;
use crate::relay::jst::jst_minute;

/// One message, with what it mentions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Banner {
        name: String,
    },
    FirstBoot,
    FirstIdPrompt,
    NewPasswordPrompt,
    AgainPrompt,
    PasswordsDiffer,
    PasswordRefused(PasswordRefusal),
    Enrolment {
        base32: String,
        uri: String,
    },
    EnrolCodePrompt,
    EnrolCodeWrong,
    FirstCreated {
        id: String,
    },
    IdPrompt,
    PasswordPrompt,
    CodePrompt,
    LoginRefused(Refusal),
    Welcome {
        id: String,
        role: Role,
    },
    ExpiresSoon {
        days: u32,
    },
    MustChange,
    PasswordChanged,
    LoggedOut,
    IdleLoggedOut {
        minutes: u64,
    },
    UnknownCommand {
        word: String,
    },
    NotAllowed {
        command: String,
        role: Role,
    },
    Usage {
        usage: String,
    },
    NoSuchUser {
        id: String,
    },
    UserExists {
        id: String,
    },
    BadId,
    UnknownRole {
        word: String,
    },
    UserCreated {
        id: String,
        role: Role,
    },
    Locked {
        id: String,
    },
    RoleChanged {
        id: String,
        role: Role,
    },
    Unlocked {
        id: String,
    },
    Reset {
        id: String,
    },
    Deleted {
        id: String,
    },
    NotYourself,
    LangSet,
    StoreFailed {
        detail: String,
    },
    Noise,
    Interrupted,
    HelpHeader,
    NoMore,
    NoSuchRecord {
        seq: u64,
    },
    Shown {
        shown: usize,
        more: bool,
    },
    BadValue {
        key: String,
        value: String,
        detail: String,
    },
    UnknownKey {
        key: String,
        keys: String,
    },
    /// How many entries a search matched; `capped`: at least that many.
    Matched {
        count: u64,
        capped: bool,
    },
    ExportStarted,
    ExportDone(Exported),
    InventoryExported {
        name: String,
    },
    ExportFailed(String, ExportFailureKind),
    NothingToDelete {
        years: u32,
        cutoff: i64,
    },
    DeletePlan {
        count: u64,
        oldest: i64,
        newest: i64,
        years: u32,
        cutoff: i64,
    },
    /// The phrase to type, shown as the prompt.
    DeletePhrasePrompt {
        phrase: String,
    },
    DeleteNotConfirmed,
    ApprovalNeeded,
    ApproverIdPrompt,
    ApproverRefused {
        id: String,
    },
    ApproverMustChange {
        id: String,
    },
    DeletionConfirmed {
        count: u64,
        minutes: u64,
    },
}

/// An export failure as the user is told it: the kind decides the
/// advice; the detail (the `String` of [`Msg::ExportFailed`]) is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportFailureKind {
    NoStick,
    SeveralSticks,
    ReadOnly,
    Unusable,
    Full,
    /// Pulled out or broken while writing or flushing.
    Interrupted,
    /// The box itself failed (store, key, mount point).
    Box,
}

impl Msg {
    /// The message for `failure`.
    pub fn export_failed(failure: &ExportFailure) -> Msg {
        use ExportFailureKind as K;
        let kind = match failure {
            ExportFailure::Media(MediaError::NoStick) => K::NoStick,
            ExportFailure::Media(MediaError::SeveralSticks { .. }) => K::SeveralSticks,
            ExportFailure::Media(MediaError::ReadOnly { .. }) => K::ReadOnly,
            ExportFailure::Media(MediaError::Unusable { .. }) => K::Unusable,
            ExportFailure::Full { .. } => K::Full,
            ExportFailure::Media(MediaError::Flush { .. }) | ExportFailure::Write { .. } => {
                K::Interrupted
            }
            _ => K::Box,
        };
        Msg::ExportFailed(crate::logging::Causes(failure).to_string(), kind)
    }
}

/// The text of `msg` in `lang`.
pub fn text(lang: Lang, msg: &Msg) -> String {
    use Msg as M;
    let ja = lang == Lang::Ja;
    let pick = |j: String, e: String| if ja { j } else { e };
    match msg {
        M::Banner { name } => pick(
            format!("ifrelay 保守コンソール ({name})"),
            format!("ifrelay maintenance console ({name})"),
        ),
        M::FirstBoot => pick(
            "利用者がまだいません。最初のセキュリティ管理者をこのコンソールで作成します。".into(),
            "No user exists yet. Create the first security administrator at this console now."
                .into(),
        ),
        M::FirstIdPrompt => pick("新しい利用者ID: ".into(), "new user ID: ".into()),
        M::NewPasswordPrompt => pick("新しいパスワード: ".into(), "new password: ".into()),
        M::AgainPrompt => pick("もう一度: ".into(), "again: ".into()),
        M::PasswordsDiffer => pick(
            "2回の入力が一致しません。もう一度入力してください。".into(),
            "The two entries differ. Type the new password again.".into(),
        ),
        M::PasswordRefused(r) => password_refusal(ja, r),
        M::Enrolment { base32, uri } => pick(
            format!(
                "認証アプリにこの秘密鍵を登録してください（表示は今回だけです）:\r\n  {base32}\r\n  {uri}"
            ),
            format!(
                "Add this secret to the authenticator app (it is shown only now):\r\n  {base32}\r\n  {uri}"
            ),
        ),
        M::EnrolCodePrompt => pick(
            "アプリに表示された6桁のコード: ".into(),
            "6-digit code the app shows: ".into(),
        ),
        M::EnrolCodeWrong => pick(
            "コードが一致しません。秘密鍵の入力を確かめ、次のコードを入力してください。".into(),
            "The code does not match. Check the secret typed into the app and enter the next code."
                .into(),
        ),
        M::FirstCreated { id } => pick(
            format!("セキュリティ管理者 {id} を作成しました。ログインしてください。"),
            format!("Security administrator {id} created. Log in now."),
        ),
        M::IdPrompt => pick("利用者ID: ".into(), "user ID: ".into()),
        M::PasswordPrompt => pick("パスワード: ".into(), "password: ".into()),
        M::CodePrompt => pick("ワンタイムコード: ".into(), "one-time code: ".into()),
        M::LoginRefused(r) => login_refusal(ja, r),
        M::Welcome { id, role } => pick(
            format!("{id} さん（{}）としてログインしました。? で使えるコマンドを表示します。", role_ja(*role)),
            format!("Logged in as {id} ({}). Type ? for the commands you may use.", role.name()),
        ),
        M::ExpiresSoon { days } => pick(
            format!("パスワードの有効期限まで残り {days} 日です。passwd で変更してください。"),
            format!("Your password expires in {days} day(s). Change it with passwd."),
        ),
        M::MustChange => pick(
            "パスワードを変更してください（初回ログイン、初期化後、または期限切れ）。".into(),
            "Change your password now (first login, after a reset, or expired).".into(),
        ),
        M::PasswordChanged => pick("パスワードを変更しました。".into(), "Password changed.".into()),
        M::LoggedOut => pick("ログアウトしました。".into(), "Logged out.".into()),
        M::IdleLoggedOut { minutes } => pick(
            format!("{minutes} 分間操作がなかったため、ログアウトしました。"),
            format!("Logged out after {minutes} minutes without input."),
        ),
        M::UnknownCommand { word } => pick(
            format!("「{word}」というコマンドはありません。? で使えるコマンドを表示します。"),
            format!("There is no command \"{word}\". Type ? for the commands you may use."),
        ),
        M::NotAllowed { command, role } => pick(
            format!(
                "{command} は {} の権限では使えません。この作業の権限を持つ利用者に依頼してください。",
                role_ja(*role)
            ),
            format!(
                "{command} is not allowed for the {} role. Ask a user whose role does this work.",
                role.name()
            ),
        ),
        M::Usage { usage } => pick(format!("使い方: {usage}"), format!("usage: {usage}")),
        M::NoSuchUser { id } => pick(
            format!("利用者 {id} はいません。users で一覧を表示します。"),
            format!("There is no user {id}. Type users for the list."),
        ),
        M::UserExists { id } => pick(
            format!("利用者 {id} はすでにいます。別のIDを指定してください。"),
            format!("User {id} exists already. Choose another ID."),
        ),
        M::BadId => pick(
            "IDは英小文字・数字・- . _ の1〜32文字で、英小文字で始めてください。".into(),
            "An ID is 1 to 32 of a-z, 0-9, - . _, starting with a letter.".into(),
        ),
        M::UnknownRole { word } => pick(
            format!("役割「{word}」はありません。operator, auditor, security-admin, maintainer のいずれかです。"),
            format!("There is no role \"{word}\": use operator, auditor, security-admin or maintainer."),
        ),
        M::UserCreated { id, role } => pick(
            format!("利用者 {id}（{}）を作成しました。本人に仮パスワードと秘密鍵を渡してください。", role_ja(*role)),
            format!("User {id} ({}) created. Hand the temporary password and the secret to that person.", role.name()),
        ),
        M::Locked { id } => pick(format!("{id} をロックしました。"), format!("{id} is locked.")),
        M::RoleChanged { id, role } => pick(
            format!("{id} の役割を {} にしました。次回ログインから有効です。", role_ja(*role)),
            format!("{id} now has the {} role, from the next login.", role.name()),
        ),
        M::Unlocked { id } => pick(
            format!("{id} のロックを解除しました。"),
            format!("{id} is unlocked."),
        ),
        M::Reset { id } => pick(
            format!("{id} のパスワードを初期化しました。次回ログイン時に変更が必要です。"),
            format!("{id}'s password is reset; it must be changed at the next login."),
        ),
        M::Deleted { id } => pick(format!("{id} を削除しました。"), format!("{id} is deleted.")),
        M::NotYourself => pick(
            "自分自身には使えません。別のセキュリティ管理者に依頼してください。".into(),
            "Not on yourself: ask another security administrator.".into(),
        ),
        M::LangSet => pick("表示言語を日本語にしました。".into(), "Messages are now in English.".into()),
        M::StoreFailed { detail } => pick(
            format!("保存できませんでした（{detail}）。何も変わっていません。少し待ってからやり直してください。"),
            format!("Could not save ({detail}); nothing changed. Wait a moment and try again."),
        ),
        M::Noise => pick(
            "読めない入力（制御文字、不正な文字コード、長すぎる行など）を捨てました。入力を続けてください。".into(),
            "Unreadable input (control characters, invalid text, an overlong line) was dropped; go on typing."
                .into(),
        ),
        M::Interrupted => pick("中断しました。".into(), "Interrupted.".into()),
        M::HelpHeader => pick("使えるコマンド:".into(), "Commands you may use:".into()),
        M::NoMore => pick(
            "続きはありません。新しく search で検索してください。".into(),
            "Nothing more to show. Start a new search.".into(),
        ),
        M::NoSuchRecord { seq } => pick(
            format!("番号 {seq} の記録はありません（削除済みか、まだありません）。search で番号を確かめてください。"),
            format!("There is no record {seq} (deleted, or not yet). Find its number with search."),
        ),
        M::Shown { shown, more: true } => pick(
            format!("{shown} 件を表示しました。続きは next です。"),
            format!("{shown} shown. Type next for more."),
        ),
        M::Shown { shown, more: false } => pick(
            format!("{shown} 件を表示しました（以上）。"),
            format!("{shown} shown; that is all."),
        ),
        M::BadValue { key, value, detail } => pick(
            format!("{key} の値「{value}」は使えません（{detail}）。"),
            format!("{value:?} is not a {key} ({detail})."),
        ),
        M::UnknownKey { key, keys } => pick(
            format!("条件「{key}」はありません。使える条件: {keys}"),
            format!("There is no condition \"{key}\". Conditions: {keys}"),
        ),
        M::Matched { count, capped: false } => {
            pick(format!("{count} 件が該当します。"), format!("{count} match."))
        }
        M::Matched { count, capped: true } => pick(
            format!("{count} 件以上が該当します。条件を足して絞り込めます。"),
            format!("{count} or more match; add conditions to narrow the search."),
        ),
        M::ExportStarted => pick(
            "USBメモリに書き出しています。終わったと表示されるまで抜かないでください…".into(),
            "Writing to the USB stick. Do not remove it until told it is done…".into(),
        ),
        M::ExportDone(e) => {
            let sealed = |ja: bool| match (e.recipients, ja) {
                (0, true) => "暗号化なし".to_owned(),
                (0, false) => "not encrypted".to_owned(),
                (n, true) => format!("監査人 {n} 名あてに暗号化"),
                (n, false) => format!("encrypted to {n} auditor(s)"),
            };
            pick(
                format!(
                    "書き出しました: {}（記録 {} 件、アクセスログ {} 件、{}）。\r\nUSBメモリを抜いてかまいません。受け取った側は ifrelay verify-export で検証できます。",
                    e.name, e.records, e.access_entries, sealed(true)
                ),
                format!(
                    "Exported {} ({} records, {} access-log entries, {}).\r\nThe USB stick may be removed now. The receiver checks it with ifrelay verify-export.",
                    e.name, e.records, e.access_entries, sealed(false)
                ),
            )
        }
        M::InventoryExported { name } => pick(
            format!("アカウント一覧を {name} に書き出しました。USBメモリを抜いてかまいません。"),
            format!("The account inventory is written to {name}. The USB stick may be removed now."),
        ),
        M::ExportFailed(detail, kind) => export_failure(ja, detail, *kind),
        M::NothingToDelete { years, cutoff } => pick(
            format!(
                "保存期間（{years} 年）を過ぎた記録はありません（{} より前の記録が対象です）。何も削除しません。",
                jst_minute(*cutoff)
            ),
            format!(
                "No record is past its retention period ({years} years: records before {}). Nothing is deleted.",
                jst_minute(*cutoff)
            ),
        ),
        M::DeletePlan { count, oldest, newest, years, cutoff } => pick(
            format!(
                "保存期間（{years} 年、{} より前）を過ぎた記録 {count} 件を削除します（{} から {} までの記録）。\r\n削除は取り消せません。必要なら先に export で書き出してください。",
                jst_minute(*cutoff), jst_minute(*oldest), jst_minute(*newest)
            ),
            format!(
                "{count} records past their retention period ({years} years: before {}) will be deleted (records from {} to {}).\r\nThis cannot be undone: export them first if they may be needed.",
                jst_minute(*cutoff), jst_minute(*oldest), jst_minute(*newest)
            ),
        ),
        M::DeletePhrasePrompt { phrase } => pick(
            format!("よろしければ「{phrase}」と入力してください（やめるときは Enter）: "),
            format!("To confirm, type \"{phrase}\" (Enter alone cancels): "),
        ),
        M::DeleteNotConfirmed => pick(
            "確認の文字が一致しないため、削除しません。何も変わっていません。".into(),
            "Not confirmed: nothing is deleted.".into(),
        ),
        M::ApprovalNeeded => pick(
            "記録の削除には、もう一人（自分以外の監査人かセキュリティ管理者）の承認が必要です。承認する人がこのコンソールでログインしてください。".into(),
            "Deleting records needs a second person's approval: another auditor or a security administrator logs in here now."
                .into(),
        ),
        M::ApproverIdPrompt => pick("承認者の利用者ID: ".into(), "approver's user ID: ".into()),
        M::ApproverRefused { id } => pick(
            format!("{id} は承認できません（本人以外の監査人またはセキュリティ管理者だけが承認できます）。削除しません。"),
            format!("{id} cannot approve (only another auditor or a security administrator can). Nothing is deleted."),
        ),
        M::ApproverMustChange { id } => pick(
            format!("{id} は仮パスワードのままです。先に自分でログインしてパスワードを変えてから承認してください。削除しません。"),
            format!("{id} still has a temporary password: log in once to change it, then approve. Nothing is deleted."),
        ),
        M::DeletionConfirmed { count, minutes } => pick(
            format!("削除を確定しました。{count} 件を少しずつ削除します（約 {minutes} 分。中継は止まりません）。status で残りを確かめられます。"),
            format!("Deletion confirmed: {count} records are deleted in small steps (about {minutes} minutes; relaying goes on). status shows what is left."),
        ),
    }
}

fn export_failure(ja: bool, detail: &str, kind: ExportFailureKind) -> String {
    use ExportFailureKind as K;
    let advice = match (kind, ja) {
        (K::NoStick, true) => "USBメモリが見つかりません。差し込んでから、もう一度実行してください。",
        (K::NoStick, false) => "No USB stick was found. Insert one and run the command again.",
        (K::SeveralSticks, true) => "USBメモリが複数挿さっています。書き出し先の1本だけにして、もう一度実行してください。",
        (K::SeveralSticks, false) => "More than one USB stick is inserted. Leave only the one to write to and run the command again.",
        (K::ReadOnly, true) => "USBメモリが書き込み禁止です。書き込み禁止スイッチを戻すか別のUSBメモリで、もう一度実行してください。",
        (K::ReadOnly, false) => "The USB stick is write-protected. Slide its lock switch back, or use another stick, and run the command again.",
        (K::Unusable, true) => "このUSBメモリは使えません。PC で FAT32 か exFAT にフォーマットしたものを使ってください。",
        (K::Unusable, false) => "This USB stick cannot be used. Format it as FAT32 or exFAT on a PC, or use another one.",
        (K::Full, true) => "USBメモリの空きが足りません。書きかけのフォルダは検証に合格しません（PC で削除してかまいません）。空きのあるUSBメモリで、もう一度実行してください。",
        (K::Full, false) => "The USB stick is full. The unfinished folder will not pass verification (delete it on a PC). Use a stick with more room and run the command again.",
        (K::Interrupted, true) => "書き込みが完了しませんでした（途中で抜かれたか、USBメモリの故障）。書きかけのフォルダは検証に合格しません。差し直して、もう一度実行してください。",
        (K::Interrupted, false) => "Writing did not complete (the stick was removed, or failed). The unfinished folder will not pass verification. Insert it again and run the command again.",
        (K::Box, true) => "箱の内部で失敗しました。しばらくして、もう一度実行してください。続くときは保守業者に連絡してください。",
        (K::Box, false) => "The box itself failed. Try again in a moment; if it persists, call the maintenance contractor.",
    };
    if ja {
        format!("書き出せませんでした: {advice}\r\n（詳細: {detail}）")
    } else {
        format!("Nothing was exported: {advice}\r\n(detail: {detail})")
    }
}

fn role_ja(role: Role) -> &'static str {
    match role {
        Role::Operator => "運用者",
        Role::Auditor => "監査者",
        Role::SecurityAdmin => "セキュリティ管理者",
        Role::Maintainer => "保守者",
    }
}

fn password_refusal(ja: bool, r: &PasswordRefusal) -> String {
    let (j, e) = match r {
        PasswordRefusal::TooShort { min } => (
            format!("{min} 文字以上にしてください。"),
            format!("use at least {min} characters."),
        ),
        PasswordRefusal::TooFewClasses { min, .. } => (
            format!("英小文字・英大文字・数字・記号のうち {min} 種類以上を混ぜてください。"),
            format!("mix at least {min} of lower case, upper case, digits and symbols."),
        ),
        PasswordRefusal::ContainsId => (
            "利用者IDを含めないでください。".into(),
            "do not include the user ID.".into(),
        ),
        PasswordRefusal::Reused { history } => (
            format!("直近 {history} 回のパスワードは使えません。別のものにしてください。"),
            format!("the last {history} passwords cannot be used again; choose another."),
        ),
    };
    if ja {
        format!("このパスワードは使えません: {j}")
    } else {
        format!("This password is refused: {e}")
    }
}

fn login_refusal(ja: bool, r: &Refusal) -> String {
    match (r, ja) {
        (Refusal::Wrong, true) => {
            "ID、パスワード、コードのいずれかが違います。確かめてもう一度入力してください。".into()
        }
        (Refusal::Wrong, false) => {
            "The ID, the password or the code is wrong. Check them and try again.".into()
        }
        (Refusal::CodeUsed, true) => {
            "このコードは使用済みです。アプリに次のコードが出るのを待って入力してください。".into()
        }
        (Refusal::CodeUsed, false) => {
            "This code was used already. Wait for the app's next code and enter it.".into()
        }
        (Refusal::LockedUntil(until), true) => format!(
            "失敗が続いたため {} までロックされています。時間をおくか、セキュリティ管理者に解除を依頼してください。",
            crate::relay::jst::jst_minute(*until)
        ),
        (Refusal::LockedUntil(until), false) => format!(
            "Locked after repeated failures until {}. Wait, or ask a security administrator to unlock it.",
            crate::relay::jst::jst_minute(*until)
        ),
        (Refusal::Locked, true) => {
            "このアカウントはロックされています。セキュリティ管理者に解除を依頼してください。".into()
        }
        (Refusal::Locked, false) => {
            "This account is locked. Ask a security administrator to unlock it.".into()
        }
        (Refusal::ExpiredLocked, true) => {
            "パスワードの期限切れから90日が過ぎたためロックされています。セキュリティ管理者に初期化を依頼してください。".into()
        }
        (Refusal::ExpiredLocked, false) => {
            "The password expired more than 90 days ago; the account is locked. Ask a security administrator to reset it.".into()
        }
    }
}
