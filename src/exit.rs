//! Exit codes of the `ifrelay` binary (sysexits.h where one fits), so the
//! service manager, scripts and staff can tell failures apart.
//! `docs/config.md` lists them.

/// Done: the command succeeded, or the box stopped on SIGTERM/SIGINT.
pub const OK: u8 = 0;
/// Any other failure (printed once with its cause chain).
pub const FAILURE: u8 = 1;
/// The command line is wrong.
pub const USAGE: u8 = 2;
/// A critical task of the running box died (`EX_SOFTWARE`): the service
/// manager restarts the box.
pub const SOFTWARE: u8 = 70;
/// The store or its directory cannot be opened or created (`EX_IOERR`).
pub const IO: u8 = 74;
/// The configuration is refused (`EX_CONFIG`).
pub const CONFIG: u8 = 78;
