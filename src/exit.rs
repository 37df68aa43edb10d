//! Exit codes of the `ifrelay` binary (sysexits.h where one fits), so the
//! service manager, scripts and staff can tell failures apart.
//! `docs/config.md` lists them.

/// Done: the command succeeded, or the box stopped on SIGTERM/SIGINT.
pub const OK: u8 = 0;
/// Any other failure (printed once with its cause chain).
pub const FAILURE: u8 = 1;
/// The command line is wrong.
pub const USAGE: u8 = 2;
/// The store file is damaged (`EX_DATAERR`): its pages or header do not
/// match their checksums. `verify-store` says CORRUPT; `run` refuses to
/// start on it and leaves it untouched. A restart finds the same damage,
/// so the service manager should not restart on it
/// (`RestartPreventExitStatus=65`); README, "When the store is damaged".
pub const DAMAGED: u8 = 65;
/// A critical task of the running box died (`EX_SOFTWARE`): the service
/// manager restarts the box.
pub const SOFTWARE: u8 = 70;
/// The store, its directory or the box's signing key file cannot be
/// opened, read or created (`EX_IOERR`).
pub const IO: u8 = 74;
/// The box's signing key file is refused (`EX_NOPERM`, the nearest): it is
/// open to group or others, belongs to another user, or is not a key. A
/// restart finds the same, so the service manager should not restart on it
/// (`RestartPreventExitStatus=77`); docs/operations.md, "The box's signing
/// key".
pub const KEY_REFUSED: u8 = 77;
/// The configuration is refused (`EX_CONFIG`).
pub const CONFIG: u8 = 78;

// `ifrelay verify-export` (docs/export.md, "Exit codes"): the code of the
// first finding printed; the checks run in this order.

/// The export's manifest is missing, unreadable or of another format.
pub const EXPORT_BAD_MANIFEST: u8 = 10;
/// The manifest's signature does not verify with the key it names.
pub const EXPORT_BAD_SIGNATURE: u8 = 11;
/// The export was signed by another box than the one expected.
pub const EXPORT_WRONG_BOX: u8 = 12;
/// A file the manifest lists is missing (or the signature file).
pub const EXPORT_MISSING_FILE: u8 = 13;
/// The folder holds a file the manifest does not list.
pub const EXPORT_EXTRA_FILE: u8 = 14;
/// A file's SHA-256 is not the one in the manifest.
pub const EXPORT_EDITED_FILE: u8 = 15;
/// The entries of a CBOR file do not form the chain the manifest claims.
pub const EXPORT_BROKEN_CHAIN: u8 = 16;
/// An entry of a CBOR file is not selected by the manifest's selection.
pub const EXPORT_OUTSIDE_SELECTION: u8 = 17;
/// `ifrelay export` refused its target: not an empty folder
/// (`EX_CANTCREAT`).
pub const CANNOT_CREATE: u8 = 73;
