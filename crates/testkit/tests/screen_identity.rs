//! The personal-data screen over real TLS on loopback (docs/protocol.md
//! §6): a peer whose certificate names a My Number
//! (`is-123456789018.link.invalid`) is refused at the identity check with
//! `E_MY_NUMBER`, and neither the box's access log nor its log (captured
//! here at every level, debug included) holds the number; a
//! `process_error` whose free text writes a My Number in any of its
//! written forms (4-4-4 with spaces or hyphens, full-width, Arabic-Indic or
//! mathematical digits, split by a zero-width space) is refused
//! `E_MY_NUMBER` and relayed nowhere, while ordinary numbers pass the
//! screen.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use ifrelay::net::Link;
use ifrelay_devpki::DevPki;
use ifrelay_proto::{Body, Frame, MessageId, Party, ProcessError, Reason, Serial};
use ifrelay_store::Direction;
use ifrelay_testkit::testbed::{agencies, Testbed};

/// The My Number of the tests, and the name that carries it.
const MY_NUMBER: &str = "123456789018";
const ROGUE_NAME: &str = "is-123456789018.link.invalid";

/// Everything the process logs, at every level, from the first test on.
fn captured_log() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .try_init()
            .expect("the only subscriber of this test binary");
        log
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_text() -> String {
    let log = captured_log()
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    String::from_utf8_lossy(&log).into_owned()
}

/// A testbed whose boxes also trust `rogue`'s CA, as if the network CA had
/// issued the rogue certificate: the name is all that is wrong with it.
async fn bed_trusting(dir: &Path, rogue: &DevPki) -> (Testbed, std::path::PathBuf) {
    let bundle = dir.join("ca-bundle.pem");
    let bed = {
        let bundle = bundle.clone();
        let rogue_ca = rogue.ca_pem().to_owned();
        Testbed::start_with(dir, move |file| {
            let mut pem = std::fs::read_to_string(&file.tls.ca).expect("the testbed CA");
            pem.push_str(&rogue_ca);
            std::fs::write(&bundle, pem).expect("write the CA bundle");
            file.tls.ca = bundle.clone();
        })
        .await
        .expect("testbed starts")
    };
    (bed, bundle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_naming_a_my_number_is_refused_and_never_logged_in_clear() {
    captured_log();
    let dir = tempfile::tempdir().expect("temp dir");
    let rogue = DevPki::new().expect("CA");
    let (bed, bundle) = bed_trusting(dir.path(), &rogue).await;
    let (a, _) = agencies();
    let node = &bed.nodes[0];
    let reader = node.running().reader().clone();

    let issued = rogue.issue_with_names(&[ROGUE_NAME]).expect("cert");
    let (cert, key) = issued.write(dir.path(), "rogue").expect("write");
    let tls = ifrelay_tls::client_config(&bundle, &cert, &key).expect("client config");
    // A peer box dials the core side, where peer boxes are allowed.
    let link = Link::connect(
        node.running().core_side,
        &Party::is(a.clone()),
        tls,
        Duration::from_secs(5),
        Duration::from_secs(10),
        ifrelay_proto::frame::DEFAULT_MAX_FRAME,
    )
    .await
    .expect("the handshake completes; the identity check follows it");
    let (mut replies, _writer) = link.into_split();
    let refusal = replies.next_reply().await.expect("the box says why");
    let Body::Refused(refused) = &refusal.body else {
        panic!("not a refusal: {refusal:?}");
    };
    assert_eq!(refused.reason, Reason::MyNumber, "{refused:?}");
    assert_eq!(refused.in_reply_to, None);
    assert!(!refused.text.contains(MY_NUMBER), "{}", refused.text);
    assert!(
        replies.next_reply().await.is_err(),
        "the box closes the connection"
    );

    // The access log says what happened, without the name.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let entry = loop {
        let log = reader.access_log(0, 100_000).expect("access log");
        if let Some(e) = log.into_iter().find(|e| {
            e.entry.direction == Direction::Connection && e.entry.outcome == "E_MY_NUMBER"
        }) {
            break e;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no access-log entry"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(entry.entry.operation, "connect");
    assert_eq!(entry.entry.party, "unauthenticated");
    assert_eq!(entry.entry.agency, None);
    for e in reader.access_log(0, 100_000).expect("access log") {
        let printed = format!("{e:?}");
        assert!(!printed.contains(MY_NUMBER), "{printed}");
    }

    // Nor does the box's log, at any level, though it logged the refusal.
    let log = log_text();
    assert!(log.contains("holds a My Number"), "the refusal is logged");
    assert!(!log.contains(MY_NUMBER), "the log holds the number:\n{log}");
    bed.shutdown().await;
}

/// `123456789018` as people write it in free text.
const WRITTEN_FORMS: &[&str] = &[
    "1234 5678 9018",
    "1234-5678-9018",
    "１２３４　５６７８　９０１８",
    "１２３４－５６７８－９０１８",
    "1234ー5678ー9018",
    "\u{661}\u{662}\u{663}\u{664}\u{665}\u{666}\u{667}\u{668}\u{669}\u{660}\u{661}\u{668}",
    "\u{1D7CF}\u{1D7D0}\u{1D7D1}\u{1D7D2}\u{1D7D3}\u{1D7D4}\u{1D7D5}\u{1D7D6}\u{1D7D7}\u{1D7CE}\u{1D7CF}\u{1D7D6}",
    "123456\u{200B}789018",
    "123456789018",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_my_number_written_in_free_text_is_refused_and_relayed_nowhere() {
    captured_log();
    let dir = tempfile::tempdir().expect("temp dir");
    let bed = Testbed::start(dir.path()).await.expect("testbed starts");
    let (a, _) = agencies();
    let node = &bed.nodes[0];
    let ims = Party::ims(a.clone());
    let mut link = bed
        .pki
        .link(&ims, &Party::is(a.clone()), node.running().agency_side)
        .await
        .expect("link");
    let serial = Serial::new(&format!("{a}-20260401-1795300000-1")).expect("serial");
    let frame = |n: usize, text: &str| {
        Frame::new(
            MessageId::new(format!("pe-{n}")).expect("id"),
            ims.clone(),
            0,
            Body::ProcessError(ProcessError {
                serial: serial.clone(),
                reason: Reason::Timeout,
                text: format!("the record of {text} could not be found"),
            }),
        )
    };
    for (n, form) in WRITTEN_FORMS.iter().enumerate() {
        let sent = frame(n, form);
        let reply = link.request(&sent).await.expect("answered");
        let Body::Refused(refused) = &reply.body else {
            panic!("{form:?} got {reply:?}");
        };
        assert_eq!(refused.reason, Reason::MyNumber, "{form:?}: {refused:?}");
        assert_eq!(refused.in_reply_to.as_ref(), Some(&sent.header.id));
        assert_eq!(
            refused.text, "field text holds a My Number; it must never pass an interface system",
            "{form:?}"
        );
    }
    // Ordinary numbers pass the screen (the frame is then judged by the
    // process rules: this serial was never issued).
    for (n, text) in [
        "call 03-1234-5678 before 2026-12-01",
        "1234 5678 9012 is not one (check digit)",
        "corporate number 1234567890183",
        "card 1234-5678-9018-3456",
    ]
    .into_iter()
    .enumerate()
    {
        let reply = link.request(&frame(100 + n, text)).await.expect("answered");
        let Body::Refused(refused) = &reply.body else {
            panic!("{text:?} got {reply:?}");
        };
        assert_eq!(
            refused.reason,
            Reason::UnknownSerial,
            "{text:?}: {refused:?}"
        );
    }

    // Refused, logged as such, relayed to nobody, and never in the log.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let access = node.running().reader().access_log(0, 100_000).expect("log");
    // A frame the screen refuses is logged before its type is read.
    let refused = access
        .iter()
        .filter(|e| e.entry.direction == Direction::In && e.entry.outcome == "E_MY_NUMBER")
        .count();
    assert_eq!(refused, WRITTEN_FORMS.len());
    assert!(!access
        .iter()
        .any(|e| e.entry.operation == "process_error" && e.entry.direction == Direction::Out));
    let log = log_text();
    for form in WRITTEN_FORMS {
        assert!(!log.contains(form), "the log holds {form:?}");
    }
    bed.shutdown().await;
}
