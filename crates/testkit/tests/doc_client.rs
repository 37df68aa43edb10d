//! An intermediate server (IMS) for agency 131016 written from
//! `docs/protocol.md` alone: no type, codec or helper of the box's
//! implementation is used for the protocol. Frames are hand-built
//! `ciborium::Value` maps (every key spelled here from the document),
//! framed with a 4-byte big-endian length (§2), over TLS 1.3 sockets of
//! our own with `tokio-rustls` (§1). Only the infrastructure comes from the
//! crate: the testbed (core simulator, boxes 131016 and 271004, the IMS
//! simulator of 271004 playing the provider side), the development PKI
//! for our certificate, `server_name`/`connection_party` for the TLS names,
//! and `ConfigFile` to point box 131016's `[ims] address` at our listener.
//!
//! The flow (requester side, §8.1, §10 item 8): `serial_request` →
//! `serial_issued` (R-SER-1, R-SER-2) → `prefix_check` → `prefix_result`
//! OK (R-PFX-1, R-PFX-2) → `permit_request` → `accepted` (R-PRM-1) →
//! `permit` delivered to our listener and checked (R-PRM-2) → `query` with
//! our X25519 public key (R-QRY-1, R-QRY-6) → `query_accepted` (R-QRY-4)
//! and `provision` (R-PRV-1) delivered to our listener, in either order →
//! body decrypted with the scheme §4.3 names → `provision_received`
//! (R-PRV-2) → `provision_complete` (R-PRV-3) → `query_complete`
//! (R-QRY-5, closes the process). Every hop over mutual TLS with the
//! party names of §1 (R-SEC-5), one wire format on every link (R-CONV-1).
//!
//! Beyond the flow, from the document: one refusal (`E_NO_BINDING`, §9.3,
//! R-PRM-1) after which the connection stays usable (§2); a resend of a
//! `permit_request` with the same id after pretending its reply was lost
//! (§5.3, §10 item 10); two frames pipelined on one connection, answered
//! in order (§1); a `distribution` relayed to us, whose chain (root →
//! distribution key → signed fields) we verify from the root key file and
//! §4.5 alone (R-DST-1, R-SEC-6).
//!
//! How the box is made to deliver to us: the testbed's box 131016 dials
//! the testbed's IMS simulator. We bind our own TLS listener, rewrite the
//! box's configuration file (`[ims] address` = our listener, via
//! `ConfigFile::parse`/`to_toml_string`), and restart the box with
//! `Testbed::stop_box(0)`/`start_box(0)` (same ports, same store). The
//! 131016 simulator keeps running but is never dialled again.
//!
//! Where the document was not enough (details in the comments below):
//! - §5.3/§10 item 10 say a resend with the same id is refused
//!   `E_OUT_OF_SEQUENCE` (no duplicate suppression yet); the box answers
//!   `accepted` again and relays nothing twice. We assert what the box does.
//! - §4.2 says the box does not send `box_status` yet, and §10 item 3 does
//!   not list it; the restarted box delivers `box_status` `started` to us.
//! - §4.3 gives the provision body scheme only as what the simulators do;
//!   the HKDF input key material, key length and associated data are not
//!   stated (guessed: raw X25519 shared secret, 32 bytes, none), nor what
//!   the plaintext is (we only check it opens and is non-empty).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ciborium::Value;
use hkdf::Hkdf;
use ifrelay::config::ConfigFile;
use ifrelay_proto::Party;
use ifrelay_testkit::testbed::Testbed;
use ifrelay_tls::identity::{connection_party, server_name};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::ServerName;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use x25519_dalek::{PublicKey, StaticSecret};

type R<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Our agency and the provider's (`testbed::prefix_list` doc comment).
const AGENCY: &str = "131016";
const PROVIDER: &str = "271004";
/// How long we wait for any reply or delivery.
const WAIT: Duration = Duration::from_secs(30);
/// §2: default maximum body; we refuse to read more.
const MAX_BODY: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------- CBOR --

fn text(s: &str) -> Value {
    Value::Text(s.to_owned())
}

fn int(i: i64) -> Value {
    Value::Integer(i.into())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    Value::Map(pairs.into_iter().map(|(k, v)| (text(k), v)).collect())
}

fn get<'a>(m: &'a Value, key: &str) -> Option<&'a Value> {
    m.as_map()?
        .iter()
        .find(|(k, _)| k.as_text() == Some(key))
        .map(|(_, v)| v)
}

fn get_text<'a>(m: &'a Value, key: &str) -> Option<&'a str> {
    get(m, key)?.as_text()
}

fn get_bytes<'a>(m: &'a Value, key: &str) -> Option<&'a [u8]> {
    get(m, key)?.as_bytes().map(Vec::as_slice)
}

/// The Ed25519 root of `trust.distribution_roots` (docs/config.md): the
/// 32 key bytes after the 12-byte SubjectPublicKeyInfo prefix of RFC 8410.
fn root_key(path: &std::path::Path) -> R<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::SubjectPublicKeyInfoDer::from_pem_file(path)?;
    let der = der.as_ref();
    if der.len() != 44 {
        return Err(format!("root key is {} bytes of DER, not 44", der.len()).into());
    }
    Ok(der[12..].to_vec())
}

/// Ed25519 over `context || signed` (§4.1, §4.5).
fn verify_ed25519(key: &[u8], context: &[u8], signed: &[u8], sig: &[u8]) -> R<()> {
    let mut input = context.to_vec();
    input.extend_from_slice(signed);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, key)
        .verify(&input, sig)
        .map_err(|_| "signature does not verify".into())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// §3 `from` / §4.1 Party.
fn party(role: &str, agency: &str) -> Value {
    map(vec![("role", text(role)), ("agency", text(agency))])
}

/// §4.1 Prefix: JM010 / TK001 / I01, I02 from 131016 to 271004.
fn our_prefix() -> Value {
    map(vec![
        ("requester", text(AGENCY)),
        ("business", text("JM010")),
        ("provider", text(PROVIDER)),
        ("info_name", text("TK001")),
        ("items", Value::Array(vec![text("I01"), text("I02")])),
    ])
}

/// Message ids (§3, §3.1, §10 item 5): `imsdoc-131016-<start time and a
/// random part as letters>-<n>`, so the only digit runs are the agency code
/// and the counter.
struct Ids {
    stem: String,
    n: AtomicU64,
}

impl Ids {
    fn new() -> R<Ids> {
        let mut letters = String::new();
        let mut t = u64::try_from(now_ms()).unwrap_or(0);
        while t > 0 {
            letters.push(char::from(b'A' + (t % 26) as u8));
            t /= 26;
        }
        let mut random = [0u8; 6];
        SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| "no randomness")?;
        letters.extend(random.iter().map(|b| char::from(b'a' + b % 26)));
        Ok(Ids {
            stem: format!("imsdoc-{AGENCY}-{letters}"),
            n: AtomicU64::new(1),
        })
    }

    fn next(&self) -> String {
        format!("{}-{}", self.stem, self.n.fetch_add(1, Ordering::Relaxed))
    }
}

/// A frame of `ty` with the five header keys of §3 first, then `fields`.
/// Returns its id and the map.
fn frame(ids: &Ids, ty: &str, fields: Vec<(&str, Value)>) -> (String, Value) {
    let id = ids.next();
    let mut pairs = vec![
        ("v", int(1)),
        ("id", text(&id)),
        ("type", text(ty)),
        ("sent_at", int(now_ms())),
        ("from", party("ims", AGENCY)),
    ];
    pairs.extend(fields);
    (id, map(pairs))
}

// ------------------------------------------------------------- framing --

/// §2: u32 big-endian body length, then one CBOR map.
fn encode(v: &Value) -> R<Vec<u8>> {
    let mut body = Vec::new();
    ciborium::into_writer(v, &mut body)?;
    let mut out = u32::try_from(body.len())?.to_be_bytes().to_vec();
    out.extend(body);
    Ok(out)
}

/// One frame, or `None` on a clean end of stream before a frame starts.
async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> R<Option<Value>> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let n = usize::try_from(u32::from_be_bytes(len))?;
    if n > MAX_BODY {
        return Err(format!("frame of {n} bytes announced").into());
    }
    let mut body = vec![0u8; n];
    s.read_exact(&mut body).await?;
    Ok(Some(ciborium::from_reader(body.as_slice())?))
}

// -------------------------------------------------------------- client --

/// Dials the box's agency-side listener (§10 item 2).
struct Dialer {
    addr: SocketAddr,
    connector: TlsConnector,
    name: ServerName<'static>,
}

struct Conn(tokio_rustls::client::TlsStream<TcpStream>);

impl Dialer {
    async fn dial(&self) -> R<Conn> {
        let tcp = TcpStream::connect(self.addr).await?;
        let tls = self.connector.connect(self.name.clone(), tcp).await?;
        Ok(Conn(tls))
    }
}

impl Conn {
    async fn send(&mut self, f: &Value) -> R<()> {
        self.0.write_all(&encode(f)?).await?;
        self.0.flush().await?;
        Ok(())
    }

    async fn recv(&mut self) -> R<Value> {
        tokio::time::timeout(WAIT, read_frame(&mut self.0))
            .await??
            .ok_or_else(|| "the box closed the connection without a reply".into())
    }

    async fn call(&mut self, f: &Value) -> R<Value> {
        self.send(f).await?;
        self.recv().await
    }
}

/// What every reply from the box must carry (§3, §4.3): version 1, an id,
/// the given type, `from` = the box, `in_reply_to` = our frame.
fn check_reply(reply: &Value, ty: &str, in_reply_to: &str) {
    assert_eq!(get(reply, "v"), Some(&int(1)), "v of {reply:?}");
    assert!(get_text(reply, "id").is_some_and(|id| !id.is_empty()));
    assert!(matches!(get(reply, "sent_at"), Some(Value::Integer(_))));
    assert_eq!(get_text(reply, "type"), Some(ty), "reply {reply:?}");
    let from = get(reply, "from").expect("from");
    assert_eq!(get_text(from, "role"), Some("is"));
    assert_eq!(get_text(from, "agency"), Some(AGENCY));
    assert_eq!(get_text(reply, "in_reply_to"), Some(in_reply_to));
}

fn check_refused(reply: &Value, in_reply_to: &str, reason: &str) {
    check_reply(reply, "refused", in_reply_to);
    assert_eq!(get_text(reply, "reason"), Some(reason), "refusal {reply:?}");
    assert!(get_text(reply, "text").is_some(), "refused has a text");
}

// ------------------------------------------------------------ listener --

/// What the box delivered to our listener, deduplicated by (sender, id)
/// (§10 item 11), kept until the test takes it.
struct Inbox {
    rx: mpsc::UnboundedReceiver<Value>,
    seen: std::collections::HashSet<(String, String)>,
    kept: Vec<Value>,
}

impl Inbox {
    /// The first delivered frame of type `ty` for `serial` (`""`: a type
    /// without a serial).
    async fn take(&mut self, ty: &str, serial: &str) -> R<Value> {
        loop {
            let found = self.kept.iter().position(|f| {
                get_text(f, "type") == Some(ty)
                    && (serial.is_empty() || get_text(f, "serial") == Some(serial))
            });
            if let Some(i) = found {
                return Ok(self.kept.remove(i));
            }
            let f = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .map_err(|_| format!("no {ty} for {serial} delivered; got {:?}", self.kept))?
                .ok_or("listener stopped")?;
            let from = format!("{:?}", get(&f, "from"));
            let id = get_text(&f, "id").unwrap_or_default().to_owned();
            if self.seen.insert((from, id)) {
                eprintln!(
                    "delivered to us: {:?} {:?}",
                    get_text(&f, "type"),
                    get_text(&f, "serial")
                );
                self.kept.push(f);
            }
        }
    }
}

/// Our listener (§10 item 3): TLS 1.3 with a client certificate required,
/// only `is-131016.link.invalid` admitted, every frame answered with one
/// `accepted` naming it (or a `refused`).
async fn listen(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    the_box: Party,
    ids: Arc<Ids>,
    tx: mpsc::UnboundedSender<Value>,
) {
    while let Ok((tcp, _)) = listener.accept().await {
        let (acceptor, the_box, ids, tx) =
            (acceptor.clone(), the_box.clone(), ids.clone(), tx.clone());
        tokio::spawn(async move {
            if let Err(e) = serve(tcp, acceptor, the_box, &ids, tx).await {
                eprintln!("doc_client listener: {e}");
            }
        });
    }
}

async fn serve(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    the_box: Party,
    ids: &Ids,
    tx: mpsc::UnboundedSender<Value>,
) -> R<()> {
    let mut tls = acceptor.accept(tcp).await?;
    if connection_party(tls.get_ref().1).ok() != Some(the_box) {
        let (_, refusal) = frame(
            ids,
            "refused",
            vec![
                ("reason", text("E_ROLE")),
                ("text", text("only is-131016 delivers here")),
            ],
        );
        tls.write_all(&encode(&refusal)?).await?;
        return Ok(());
    }
    while let Some(f) = read_frame(&mut tls).await? {
        let reply = match get_text(&f, "id") {
            None => {
                frame(
                    ids,
                    "refused",
                    vec![("reason", text("E_MALFORMED")), ("text", text("no id"))],
                )
                .1
            }
            Some(id) => {
                let from = get(&f, "from");
                let is_box = from.is_some_and(|p| {
                    get_text(p, "role") == Some("is") && get_text(p, "agency") == Some(AGENCY)
                });
                if is_box {
                    frame(ids, "accepted", vec![("in_reply_to", text(id))]).1
                } else {
                    let t = text("from is not the certificate's party");
                    frame(
                        ids,
                        "refused",
                        vec![
                            ("in_reply_to", text(id)),
                            ("reason", text("E_IDENTITY")),
                            ("text", t),
                        ],
                    )
                    .1
                }
            }
        };
        tls.write_all(&encode(&reply)?).await?;
        tls.flush().await?;
        if get_text(&reply, "type") == Some("accepted") {
            tx.send(f)?;
        }
    }
    Ok(())
}

// -------------------------------------------------------------- crypto --

/// §4.3, `provision`: ephemeral-static X25519, HKDF-SHA256 (salt =
/// ephemeral public ‖ requester public, info = `ifrelay-provision-v1`),
/// ChaCha20-Poly1305; body = eph_pub(32) ‖ nonce(12) ‖ ciphertext+tag.
/// Guessed where the document is silent: the HKDF input key material is
/// the raw X25519 shared secret, 32 bytes are expanded as the key, and
/// there is no associated data.
fn open_body(secret: &StaticSecret, our_public: &PublicKey, body: &[u8]) -> R<Vec<u8>> {
    if body.len() < 32 + 12 + 16 {
        return Err(format!("body of {} bytes is too short", body.len()).into());
    }
    let (eph, rest) = body.split_at(32);
    let (nonce, sealed) = rest.split_at(12);
    let eph: [u8; 32] = eph.try_into()?;
    let shared = secret.diffie_hellman(&PublicKey::from(eph));
    let mut salt = eph.to_vec();
    salt.extend_from_slice(our_public.as_bytes());
    let mut key = [0u8; 32];
    Hkdf::<Sha256>::new(Some(&salt), shared.as_bytes())
        .expand(b"ifrelay-provision-v1", &mut key)
        .map_err(|e| e.to_string())?;
    ChaCha20Poly1305::new(Key::from_slice(&key))
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| "the provision body does not open with the scheme of §4.3".into())
}

// ---------------------------------------------------------------- test --

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requester_flow_written_from_the_protocol_document() -> R<()> {
    let dir = tempfile::tempdir()?;
    let mut bed = Testbed::start(dir.path()).await?;
    let the_box = bed.nodes[0].party();
    let me = Party::ims(bed.nodes[0].agency.clone());
    let material = bed.pki.material(&me)?;
    let ids = Arc::new(Ids::new()?);

    // Our listener, then the box restarted to dial it.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let our_addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(material.server_config()?);
    tokio::spawn(listen(listener, acceptor, the_box.clone(), ids.clone(), tx));
    let mut inbox = Inbox {
        rx,
        seen: Default::default(),
        kept: Vec::new(),
    };

    let path = bed.nodes[0].config_path.clone();
    let mut file = ConfigFile::parse(&std::fs::read_to_string(&path)?)?;
    file.ims.address = our_addr.to_string();
    bed.stop_box(0).await;
    std::fs::write(&path, file.to_toml_string()?)?;
    bed.start_box(0).await?;

    let dialer = Dialer {
        addr: bed.nodes[0].config.listen.agency_side,
        connector: TlsConnector::from(material.client_config()?),
        name: server_name(&the_box)?,
    };
    let mut c = dialer.dial().await?;

    // serial_request → serial_issued (§4.3, §9.1).
    let (id, req) = frame(&ids, "serial_request", vec![("purpose", text("query"))]);
    let reply = c.call(&req).await?;
    check_reply(&reply, "serial_issued", &id);
    let serial = get_text(&reply, "serial").expect("serial").to_owned();
    let parts: Vec<&str> = serial.split('-').collect();
    assert_eq!(
        parts.len(),
        4,
        "serial {serial} is <agency>-<yyyymmdd>-<epoch>-<counter> (§9.4)"
    );
    assert_eq!(parts[0], AGENCY);
    assert_eq!(parts[1].len(), 8);
    assert!(parts[1..]
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())));

    // One refusal (§9.3): permit_request on a serial never prefix-checked
    // gets E_NO_BINDING; the connection stays open (§2) and the same serial
    // can then be checked (§8.1, "A refusal").
    let (id, req) = frame(&ids, "serial_request", vec![("purpose", text("query"))]);
    let reply = c.call(&req).await?;
    check_reply(&reply, "serial_issued", &id);
    let second = get_text(&reply, "serial").expect("serial").to_owned();
    assert_ne!(second, serial);
    let (id, req) = frame(
        &ids,
        "permit_request",
        vec![("serial", text(&second)), ("prefix", our_prefix())],
    );
    check_refused(&c.call(&req).await?, &id, "E_NO_BINDING");
    let (id, req) = frame(
        &ids,
        "prefix_check",
        vec![("serial", text(&second)), ("prefix", our_prefix())],
    );
    let reply = c.call(&req).await?;
    check_reply(&reply, "prefix_result", &id);
    assert_eq!(get(&reply, "ok"), Some(&Value::Bool(true)));

    // prefix_check → prefix_result OK (§4.3, §9.2).
    let (id, req) = frame(
        &ids,
        "prefix_check",
        vec![("serial", text(&serial)), ("prefix", our_prefix())],
    );
    let reply = c.call(&req).await?;
    check_reply(&reply, "prefix_result", &id);
    assert_eq!(get_text(&reply, "serial"), Some(serial.as_str()));
    assert_eq!(get(&reply, "ok"), Some(&Value::Bool(true)));
    assert_eq!(get(&reply, "reason"), None, "reason only when ok is false");

    // permit_request → accepted (§4.2).
    let (id, req) = frame(
        &ids,
        "permit_request",
        vec![("serial", text(&serial)), ("prefix", our_prefix())],
    );
    let first = c.call(&req).await?;
    check_reply(&first, "accepted", &id);

    // Pretend that reply was lost: the same frame again, same id, on a new
    // connection (§1, §10 item 10). DOCUMENT GAP: §5.3 and §10 item 10 say
    // there is no duplicate suppression yet and the resend is refused
    // E_OUT_OF_SEQUENCE (the process has moved on). The box answers
    // `accepted` again, naming the same id (a fresh reply id), and relays
    // nothing twice (checked at the end: one permit only). We assert what
    // the box does; either answer tells us the first copy got through.
    let mut again = dialer.dial().await?;
    check_reply(&again.call(&req).await?, "accepted", &id);

    // The permit, delivered to our listener (§4.3, §4.1 SignedPermit).
    let permit_frame = inbox.take("permit", &serial).await?;
    let permit = get(&permit_frame, "permit").expect("permit").clone();
    let signed = get_bytes(&permit, "signed").expect("signed bytes");
    assert_eq!(
        get_bytes(&permit, "sig").map(<[u8]>::len),
        Some(64),
        "Ed25519 signature"
    );
    let fields: Value = ciborium::from_reader(signed)?;
    assert!(get_text(&fields, "permit_id").is_some_and(|p| !p.is_empty() && p.len() <= 48));
    assert_eq!(
        get(&fields, "issuer").and_then(|p| get_text(p, "role")),
        Some("core")
    );
    assert_eq!(get_text(&fields, "serial"), Some(serial.as_str()));
    assert_eq!(get(&fields, "prefix"), Some(&our_prefix()));
    let route = get(&fields, "route").expect("route");
    assert_eq!(get_text(route, "agency"), Some(AGENCY));
    assert!(get_text(route, "endpoint").is_some_and(|e| e.parse::<SocketAddr>().is_ok()));
    let provider_route = get(&fields, "provider_route").expect("provider_route");
    assert_eq!(get_text(provider_route, "agency"), Some(PROVIDER));
    assert!(get_text(provider_route, "endpoint").is_some_and(|e| e.parse::<SocketAddr>().is_ok()));
    assert!(matches!(get(&fields, "issued_at"), Some(Value::Integer(_))));
    assert!(matches!(
        get(&fields, "expires_at"),
        Some(Value::Integer(_))
    ));

    // query with the permit exactly as received and our X25519 key.
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| "no randomness")?;
    let secret = StaticSecret::from(seed);
    let public = PublicKey::from(&secret);
    let mut c = dialer.dial().await?;
    let (id, req) = frame(
        &ids,
        "query",
        vec![
            ("serial", text(&serial)),
            ("prefix", our_prefix()),
            ("permit", permit.clone()),
            ("public_key", Value::Bytes(public.as_bytes().to_vec())),
            ("code", text("doc-person-A")),
        ],
    );
    check_reply(&c.call(&req).await?, "accepted", &id);

    // query_accepted and provision, in either order (§8.2).
    let accepted = inbox.take("query_accepted", &serial).await?;
    assert_eq!(get(&accepted, "v"), Some(&int(1)));
    let provision = inbox.take("provision", &serial).await?;
    assert_eq!(get(&provision, "prefix"), Some(&our_prefix()));
    assert_eq!(
        get(&provision, "permit"),
        Some(&permit),
        "the permit travels byte-identical"
    );
    let body = get_bytes(&provision, "body").expect("body bytes");
    assert!(!body.is_empty());
    let plain = open_body(&secret, &public, body)?;
    assert!(!plain.is_empty());
    eprintln!(
        "provision body: {} bytes, opens to {} bytes: {:?}",
        body.len(),
        plain.len(),
        String::from_utf8_lossy(&plain)
    );

    // provision_received and provision_complete pipelined on one
    // connection: §1 says the box handles pipelined frames in order.
    let mut c = dialer.dial().await?;
    let (id1, received) = frame(&ids, "provision_received", vec![("serial", text(&serial))]);
    let (id2, complete) = frame(&ids, "provision_complete", vec![("serial", text(&serial))]);
    let mut both = encode(&received)?;
    both.extend(encode(&complete)?);
    c.0.write_all(&both).await?;
    c.0.flush().await?;
    check_reply(&c.recv().await?, "accepted", &id1);
    check_reply(&c.recv().await?, "accepted", &id2);

    // query_complete last: it closes the process (§8.2).
    let (id, req) = frame(&ids, "query_complete", vec![("serial", text(&serial))]);
    check_reply(&c.call(&req).await?, "accepted", &id);
    let (id, req) = frame(&ids, "query_complete", vec![("serial", text(&serial))]);
    check_refused(&c.call(&req).await?, &id, "E_UNKNOWN_SERIAL");

    // A distribution from the core reaches us as the operator signed it
    // (§4.3, §4.5): we check the chain ourselves, from the root key file.
    bed.core
        .distribute(
            7,
            ifrelay_testkit::testbed::prefix_list(),
            ifrelay_testkit::testbed::masters(),
        )
        .await?;
    let d = inbox.take("distribution", "").await?;
    let root = root_key(bed.pki.roots_path())?;
    let signer = get(&d, "signer").expect("signer (§4.5)");
    let cert_signed = get_bytes(signer, "signed").expect("signer.signed");
    verify_ed25519(
        &root,
        b"ifrelay-distribution-key-v1\0",
        cert_signed,
        get_bytes(signer, "sig").expect("signer.sig"),
    )?;
    let cert: Value = ciborium::from_reader(cert_signed)?;
    let online = get_bytes(&cert, "key").expect("certified key");
    assert_eq!(online.len(), 32);
    let not_before = get(&cert, "not_before").and_then(Value::as_integer);
    let not_after = get(&cert, "not_after").and_then(Value::as_integer);
    assert!(not_before.is_some_and(|t| i128::from(t) <= i128::from(now_ms())));
    assert!(not_after.is_some_and(|t| i128::from(t) > i128::from(now_ms())));
    let signed = get_bytes(&d, "signed").expect("signed");
    verify_ed25519(
        online,
        b"ifrelay-distribution-v1\0",
        signed,
        get_bytes(&d, "sig").expect("sig"),
    )?;
    let fields: Value = ciborium::from_reader(signed)?;
    assert_eq!(
        get(&fields, "version").and_then(Value::as_integer),
        Some(7.into())
    );
    assert!(get(&fields, "not_after")
        .and_then(Value::as_integer)
        .is_some_and(|t| i128::from(t) > i128::from(now_ms())));
    let keys = get(&fields, "core_keys")
        .and_then(Value::as_array)
        .expect("core_keys");
    assert!(!keys.is_empty());
    assert!(keys
        .iter()
        .all(|k| get_bytes(k, "key").map(<[u8]>::len) == Some(32)));
    assert!(get(&fields, "prefixes")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty()));
    // One altered byte and the signature no longer holds.
    let mut altered = signed.to_vec();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(verify_ed25519(
        online,
        b"ifrelay-distribution-v1\0",
        &altered,
        get_bytes(&d, "sig").expect("sig")
    )
    .is_err());

    // The resent permit_request was not relayed twice: no second permit.
    // Whatever else came is a `box_status` (§4.3); DOCUMENT GAP: §4.2 says
    // the box does not send `box_status` yet and §10 item 3 does not list
    // it, but the restarted box delivered `box_status` `started` to us.
    tokio::time::sleep(Duration::from_millis(500)).await;
    while let Ok(f) = inbox.rx.try_recv() {
        inbox.kept.push(f);
    }
    for f in &inbox.kept {
        assert_eq!(
            get_text(f, "type"),
            Some("box_status"),
            "unexpected delivery {f:?}"
        );
        assert!(matches!(get_text(f, "event"), Some("started" | "stopping")));
    }

    bed.shutdown().await;
    Ok(())
}
