//! Loading TLS material from PEM files (R-SEC-5): the development PKI
//! writes files that load back, key files are private (0600), and every
//! broken file is refused with an error naming that file.

use std::fs;
use std::path::{Path, PathBuf};

use ifrelay_devpki::DevPki;
use ifrelay_proto::{AgencyCode, Party};
use ifrelay_tls::{load_certified_key, load_roots, TlsError, TlsMaterial};

struct Files {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    pki: DevPki,
}

fn files() -> Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = DevPki::new().expect("CA");
    let ca = pki.write_ca(dir.path()).expect("CA file");
    let party = Party::is(AgencyCode::new("131016").expect("code"));
    let (cert, key) = pki
        .issue(&party)
        .expect("cert")
        .write(dir.path(), "is-131016")
        .expect("write");
    Files {
        dir: dir.path().to_owned(),
        _dir: dir,
        ca,
        cert,
        key,
        pki,
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).expect("write");
    path
}

#[test]
fn written_files_load_back() {
    let f = files();
    let material = TlsMaterial::from_files(&f.ca, &f.cert, &f.key).expect("load");
    assert_eq!(material.roots.len(), 1);
    assert_eq!(material.chain.len(), 1);
    material.server_config().expect("server config");
    material.client_config().expect("client config");
    material
        .verify_own_identity(&Party::is(AgencyCode::new("131016").expect("code")))
        .expect("own identity");
}

#[cfg(unix)]
#[test]
fn key_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let f = files();
    let mode = fs::metadata(&f.key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Rewriting over a world-readable file tightens it.
    fs::set_permissions(&f.key, fs::Permissions::from_mode(0o644)).expect("chmod");
    f.pki
        .issue_with_names(&["core.link.invalid"])
        .expect("cert")
        .write(&f.dir, "is-131016")
        .expect("rewrite");
    let mode = fs::metadata(&f.key).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn missing_file_is_named() {
    let f = files();
    let missing = f.dir.join("nope.pem");
    let err = TlsMaterial::from_files(&f.ca, &missing, &f.key).expect_err("missing");
    assert!(matches!(&err, TlsError::Missing { path, .. } if path == &missing));
    assert!(err.to_string().contains("nope.pem"), "{err}");
    assert!(matches!(
        load_roots(&missing),
        Err(TlsError::Missing {
            what: "CA certificate",
            ..
        })
    ));
    assert!(matches!(
        load_certified_key(&f.cert, &missing),
        Err(TlsError::Missing { what: "key", .. })
    ));
}

#[test]
fn unreadable_path_is_reported() {
    let f = files();
    // A directory opens but cannot be read as a file.
    let err = load_roots(&f.dir).expect_err("directory");
    assert!(
        matches!(err, TlsError::Unreadable { .. } | TlsError::BadPem { .. }),
        "{err:?}"
    );
}

#[test]
fn file_without_certificate_is_refused() {
    let f = files();
    // The key file given where the certificate belongs.
    let err = load_certified_key(&f.key, &f.key).expect_err("no cert");
    assert!(matches!(&err, TlsError::NoCertificate { path, .. } if path == &f.key));
    let empty = write(&f.dir, "empty.pem", "");
    assert!(matches!(
        load_roots(&empty),
        Err(TlsError::NoCertificate { .. })
    ));
}

#[test]
fn file_without_key_is_refused() {
    let f = files();
    let err = load_certified_key(&f.cert, &f.cert).expect_err("no key");
    assert!(matches!(&err, TlsError::NoKey { path } if path == &f.cert));
    assert!(err.to_string().contains("holds no private key"), "{err}");
}

#[test]
fn broken_pem_is_refused() {
    let f = files();
    let broken = write(
        &f.dir,
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n",
    );
    assert!(matches!(load_roots(&broken), Err(TlsError::BadPem { .. })));
}

#[test]
fn key_of_another_certificate_is_refused() {
    let f = files();
    let (_, other_key) = f
        .pki
        .issue(&Party::core())
        .expect("cert")
        .write(&f.dir, "core")
        .expect("write");
    let err = load_certified_key(&f.cert, &other_key).expect_err("mismatch");
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    assert!(err.to_string().contains("core.key"), "{err}");
}
