//! Exports from the console onto a USB stick (issue 10 item 6, R-REC-3):
//! real file-system images on loop devices stand in for sticks, linked
//! the way udev links USB disks. The stick is mounted nosuid,nodev,noexec
//! only while the export is written and unmounted before the user is
//! told to pull it; a full stick, a write-protected one, none or two get
//! their own answer, and a failed export never leaves a folder that
//! `verify-export` accepts.
//!
//! Loop devices need root: without them these tests say so and export to
//! a plain folder instead (`tests/console_records.rs` covers that path
//! through the session).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use ifrelay::console::export::{ExportFailure, ExportOrder, ExportSetup};
use ifrelay::console::media::{Media, MediaError};
use ifrelay::export::{verify_export, AccessSelection, ExpectedBox};
use ifrelay::identity::BoxKey;
use ifrelay_store::{RecordFilter, Store};
use ifrelay_testkit::stick::{mounted_at, Stick};

/// A store of `n` records and its export setup writing to `media`.
fn setup(dir: &Path, n: u32, media: Media) -> (Store, ExportSetup) {
    let path = dir.join("ifrelay.redb");
    let mut store = Store::open(&path, 4 << 20).unwrap();
    store.boot(ifrelay::net::now_millis()).unwrap();
    let mut b = store.begin().unwrap();
    for i in 1..=n {
        b.append_record(ifrelay::net::now_millis(), record(i))
            .unwrap();
    }
    b.commit().unwrap();
    let (key, _) = BoxKey::load_or_create(dir).unwrap();
    let export = ExportSetup {
        media,
        recipients: Vec::new(),
        key: Arc::new(key),
        roots: Vec::new(),
        party: "is/131016".into(),
        agency: "131016".into(),
        name: Some("box-131016".into()),
    };
    (store, export)
}

fn record(n: u32) -> ifrelay_store::Record {
    use ifrelay_proto::{
        AgencyCode, BusinessCode, InfoNameCode, ItemCode, PersonCode, Prefix, Serial,
    };
    let mut items = heapless::Vec::new();
    items.push(ItemCode::new("IT0001").unwrap()).unwrap();
    ifrelay_store::Record {
        kind: ifrelay_store::RecordKind::Query,
        side: ifrelay_store::Side::Requester,
        serial: Serial::new(&format!("131016-20261201-1-{n}")).unwrap(),
        prefix: Prefix {
            requester: AgencyCode::new("131016").unwrap(),
            business: BusinessCode::new("JM0010").unwrap(),
            provider: AgencyCode::new("271004").unwrap(),
            info_name: InfoNameCode::new("TK0001").unwrap(),
            items,
        },
        code: Some(PersonCode::new(&format!("CODE{n:06}")).unwrap()),
        permit_id: None,
        counterpart: Some(AgencyCode::new("271004").unwrap()),
        query_requested_at: 1_796_000_000_000,
        provision_at: None,
        clock_synced: false,
    }
}

fn everything() -> ExportOrder {
    ExportOrder::Chains {
        records: Some(Box::new(RecordFilter::default())),
        access: Some(AccessSelection::default()),
    }
}

fn expected(dir: &Path) -> ExpectedBox {
    ExpectedBox {
        public_key: Some(BoxKey::load(dir).unwrap().public_key()),
        box_id: Some("box-131016".into()),
    }
}

#[test]
fn an_export_lands_on_the_stick_verified_and_the_stick_is_unmounted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(stick) = Stick::new(dir.path(), "stick", 32, false) else {
        eprintln!("skipped: loop devices need root; exporting to a plain folder instead");
        let (store, export) = setup(dir.path(), 40, Media::Folder(dir.path().join("out")));
        let done = export.run(&store.reader(), &everything(), 0).unwrap();
        let folder = dir.path().join("out").join(&done.name);
        assert!(verify_export(&folder, &expected(dir.path()))
            .unwrap()
            .is_intact());
        return;
    };
    let devices = dir.path().join("by-id");
    stick.plug_into(&devices, "0001").unwrap();
    let point = dir.path().join("usb");
    let media = Media::Usb {
        devices: devices.clone(),
        mount_point: point.clone(),
    };

    // While open, the stick is mounted at the private point, no setuid,
    // no devices, no programs.
    let open = media.open().unwrap();
    let line = mounted_at(&point).expect("mounted while open");
    for option in ["nosuid", "nodev", "noexec"] {
        assert!(line.contains(option), "{option} missing: {line}");
    }
    use std::os::unix::fs::PermissionsExt;
    drop(open);
    assert!(mounted_at(&point).is_none(), "a dropped mount is detached");
    assert_eq!(
        std::fs::symlink_metadata(&point)
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700,
        "the mount point is root's alone"
    );

    let (store, export) = setup(dir.path(), 40, media);
    let done = export.run(&store.reader(), &everything(), 0).unwrap();
    assert_eq!(done.records, 40);
    assert_eq!(done.device, stick.device.display().to_string());
    assert!(mounted_at(&point).is_none(), "unmounted before 'remove it'");

    let look = stick.look(&dir.path().join("look")).unwrap();
    let folder = look.0.join(&done.name);
    let report = verify_export(&folder, &expected(dir.path())).unwrap();
    assert!(report.is_intact(), "{:?}", report.findings);
}

#[test]
fn a_full_stick_says_so_and_leaves_nothing_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    // 2 MiB of ext4 hold well under the ~4 MiB of 6,000 records.
    let Some(stick) = Stick::new(dir.path(), "small", 2, false) else {
        eprintln!("skipped: loop devices need root");
        return;
    };
    let devices = dir.path().join("by-id");
    stick.plug_into(&devices, "0002").unwrap();
    let point = dir.path().join("usb");
    let media = Media::Usb {
        devices,
        mount_point: point.clone(),
    };
    let (store, export) = setup(dir.path(), 6_000, media);
    let failure = export
        .run(&store.reader(), &everything(), 0)
        .expect_err("the stick is too small");
    let ExportFailure::Full { name } = &failure else {
        panic!("not told the stick is full: {failure:?}");
    };
    assert!(mounted_at(&point).is_none(), "unmounted after the failure");
    let look = stick.look(&dir.path().join("look")).unwrap();
    let folder = look.0.join(name);
    assert!(folder.is_dir(), "the incomplete folder stays as it is");
    let report = verify_export(&folder, &expected(dir.path())).unwrap();
    assert!(!report.is_intact(), "an incomplete export must not verify");
}

#[test]
fn a_write_protected_stick_none_or_two_are_each_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let point = dir.path().join("usb");
    let devices = dir.path().join("by-id");
    let media = Media::Usb {
        devices: devices.clone(),
        mount_point: point.clone(),
    };
    assert!(matches!(media.open(), Err(MediaError::NoStick)));
    let Some(locked) = Stick::new(dir.path(), "locked", 8, true) else {
        eprintln!("skipped: loop devices need root");
        return;
    };
    locked.plug_into(&devices, "0003").unwrap();
    assert!(
        matches!(media.open(), Err(MediaError::ReadOnly { .. })),
        "a read-only device"
    );
    assert!(mounted_at(&point).is_none());
    let second = Stick::new(dir.path(), "second", 8, false).unwrap();
    second.plug_into(&devices, "0004").unwrap();
    assert!(matches!(
        media.open(),
        Err(MediaError::SeveralSticks { count: 2 })
    ));
}
