//! The `ifrelay` binary as staff and CI use it: a bad configuration is
//! refused with the field named and exit code 78 before anything is bound;
//! usage errors exit 2. (`verify-store` on a real box's store, and the
//! demo, are tested in `crates/testkit/tests/demo.rs`.)

use std::process::Command;


fn ifrelay(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ifrelay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn an_invalid_configuration_names_the_field_and_exits_78() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        r#"
[box]
agency = "13 10 16"
[listen]
core_side = "127.0.0.1:7443"
agency_side = "127.0.0.1:7444"
[tls]
ca = "ca.pem"
cert = "cert.pem"
key = "key.pem"
[store]
path = "ifrelay.redb"
[core]
address = "127.0.0.1:7000"
allow = ["127.0.0.1/32"]
[ims]
address = "127.0.0.1:7100"
allow = ["127.0.0.1/32"]
"#,
    )
    .expect("write");
    let file = file.to_string_lossy().into_owned();
    for args in [
        vec!["check-config", file.as_str()],
        vec!["run", "--config", file.as_str()],
    ] {
        let out = ifrelay(&args);
        assert_eq!(
            out.status.code(),
            Some(78),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("box.agency"),
            "{}",
            text(&out.stderr)
        );
    }
    let out = ifrelay(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
}
