//! Where an export from the console goes: the one seam between the
//! console and removable media (R-REC-3).
//!
//! On the box that is a USB stick: udev names every USB disk and
//! partition under `/dev/disk/by-id/usb-…`; the stick is mounted with
//! `nosuid,nodev,noexec` at a mount point only root can enter, only for
//! the export, then synced and unmounted before the user is told to pull
//! it. Where no stick can be mounted (tests without loop devices, the
//! demo) the same export goes into a configured folder.
//!
//! Invariants:
//! - A stick is mounted only inside [`Media::open`] .. [`Mounted::finish`]
//!   (or the drop of [`Mounted`], which detaches it); a mount left behind
//!   by a crash is detached before the next one.
//! - Nothing here deletes or overwrites a file: the export writes a new
//!   folder, and a folder whose export failed stays as it is, without the
//!   signature that would make it verify.
//! - Exactly one stick: with two inserted nobody can say which one the
//!   records went to, so that is refused.

use std::io;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

/// Where exports go (configured in `[console]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Media {
    /// A USB stick: the device links in `devices` whose names start with
    /// `usb-` (udev's `/dev/disk/by-id`), mounted at `mount_point`.
    Usb {
        devices: PathBuf,
        mount_point: PathBuf,
    },
    /// A folder, used as it is.
    Folder(PathBuf),
}

/// File systems tried, in order, when mounting a stick: what sticks come
/// formatted with, then Linux's own (that is also what tests use).
const FILESYSTEMS: &[(&str, &str)] = &[("vfat", "utf8,flush"), ("exfat", ""), ("ext4", "")];

/// Why the media cannot take an export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    #[error("no USB stick is inserted")]
    NoStick,
    #[error("{count} USB sticks are inserted")]
    SeveralSticks { count: usize },
    #[error("the USB stick {device} is write-protected")]
    ReadOnly { device: String },
    #[error("the USB stick {device} has no file system this box can write (FAT32, exFAT or ext4): {why}")]
    Unusable { device: String, why: String },
    #[error("the mount point {path} cannot be prepared: {source}")]
    MountPoint { path: PathBuf, source: io::Error },
    #[error("the devices folder {path} cannot be read: {source}")]
    Devices { path: PathBuf, source: io::Error },
    #[error("writing to {device} could not be completed: {source}")]
    Flush { device: String, source: io::Error },
    #[error("the export folder {path} cannot be used: {source}")]
    Folder { path: PathBuf, source: io::Error },
}

/// Media ready to be written: a mounted stick or a folder.
#[derive(Debug)]
pub struct Mounted {
    folder: PathBuf,
    device: String,
    /// Set while a stick is mounted there.
    mount_point: Option<PathBuf>,
}

impl Media {
    /// Finds the stick and mounts it (or checks the folder).
    ///
    /// # Errors
    /// [`MediaError`]: no stick, several, write-protected, no usable file
    /// system, or a folder that cannot be used.
    pub fn open(&self) -> Result<Mounted, MediaError> {
        match self {
            Media::Folder(path) => {
                std::fs::create_dir_all(path).map_err(|source| MediaError::Folder {
                    path: path.clone(),
                    source,
                })?;
                Ok(Mounted {
                    folder: path.clone(),
                    device: path.display().to_string(),
                    mount_point: None,
                })
            }
            Media::Usb {
                devices,
                mount_point,
            } => {
                let device = find_stick(devices)?;
                prepare_mount_point(mount_point)?;
                mount_stick(&device, mount_point)?;
                Ok(Mounted {
                    folder: mount_point.clone(),
                    device: device.display().to_string(),
                    mount_point: Some(mount_point.clone()),
                })
            }
        }
    }
}

impl Mounted {
    /// The folder to write the export into.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The device (or folder) written to, for messages and the log.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// Writes everything out to the stick and unmounts it: after `Ok`
    /// the stick may be pulled out.
    ///
    /// # Errors
    /// [`MediaError::Flush`] when the data did not reach the stick (it
    /// was pulled out, or failed): what is on it is incomplete.
    pub fn finish(mut self) -> Result<(), MediaError> {
        let flushed = sync_folder(&self.folder);
        let unmounted = match self.mount_point.take() {
            Some(point) => umount2(&point, MntFlags::empty()).map_err(|e| {
                // Pulled out or busy: never leave it mounted.
                let _ = umount2(&point, MntFlags::MNT_DETACH);
                io::Error::from(e)
            }),
            None => Ok(()),
        };
        flushed.and(unmounted).map_err(|source| MediaError::Flush {
            device: self.device.clone(),
            source,
        })
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(point) = self.mount_point.take() {
            let _ = umount2(&point, MntFlags::MNT_DETACH);
        }
    }
}

fn sync_folder(folder: &Path) -> io::Result<()> {
    let dir = std::fs::File::open(folder)?;
    nix::unistd::syncfs(&dir).map_err(io::Error::from)
}

/// The one stick's device: its first partition, or the whole disk when
/// it has no partition table.
fn find_stick(devices: &Path) -> Result<PathBuf, MediaError> {
    let entries = match std::fs::read_dir(devices) {
        Ok(entries) => entries,
        // udev creates the folder with the first disk it names.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MediaError::NoStick),
        Err(source) => {
            return Err(MediaError::Devices {
                path: devices.to_owned(),
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("usb-"))
        .collect();
    names.sort();
    let disks: Vec<&String> = names.iter().filter(|n| !n.contains("-part")).collect();
    let disk = match disks.as_slice() {
        [] => return Err(MediaError::NoStick),
        [disk] => *disk,
        several => {
            return Err(MediaError::SeveralSticks {
                count: several.len(),
            })
        }
    };
    let first_partition = names
        .iter()
        .filter_map(|n| {
            let number = n.strip_prefix(disk.as_str())?.strip_prefix("-part")?;
            number.parse::<u32>().ok().map(|k| (k, n))
        })
        .min();
    let name = first_partition.map_or(disk, |(_, n)| n);
    std::fs::canonicalize(devices.join(name)).map_err(|source| MediaError::Devices {
        path: devices.join(name),
        source,
    })
}

/// Creates the mount point (root only) and detaches whatever a crash
/// left mounted there.
fn prepare_mount_point(point: &Path) -> Result<(), MediaError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let failed = |source| MediaError::MountPoint {
        path: point.to_owned(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(point)
        .map_err(failed)?;
    std::fs::set_permissions(point, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    if is_mount_point(point) {
        umount2(point, MntFlags::MNT_DETACH).map_err(|e| failed(e.into()))?;
    }
    Ok(())
}

fn is_mount_point(point: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let point = point.to_string_lossy();
    // Field 5 is the mount point (spaces escaped as \040).
    mounts.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|m| m.replace("\\040", " ") == point)
    })
}

/// Whether the kernel marks the block device read-only (a stick's
/// write-protect switch, a read-only loop device).
fn marked_read_only(device: &Path) -> bool {
    let Some(name) = device.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    std::fs::read_to_string(format!("/sys/class/block/{name}/ro")).is_ok_and(|s| s.trim() == "1")
}

fn mount_stick(device: &Path, point: &Path) -> Result<(), MediaError> {
    let shown = device.display().to_string();
    if marked_read_only(device) {
        return Err(MediaError::ReadOnly { device: shown });
    }
    let known = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let mut tried = Vec::new();
    for &(fs, options) in FILESYSTEMS {
        if !known
            .lines()
            .any(|l| l.split_whitespace().last() == Some(fs))
        {
            continue;
        }
        let data = (!options.is_empty()).then_some(options);
        match mount(Some(device), point, Some(fs), flags, data) {
            Ok(()) => return Ok(()),
            Err(Errno::EROFS | Errno::EACCES) => {
                return Err(MediaError::ReadOnly { device: shown })
            }
            Err(e) => tried.push(format!("{fs}: {}", e.desc())),
        }
    }
    Err(MediaError::Unusable {
        device: shown,
        why: if tried.is_empty() {
            "the kernel knows none of them".to_owned()
        } else {
            tried.join("; ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links(names: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in names {
            std::os::unix::fs::symlink("/dev/null", dir.path().join(n)).expect("link");
        }
        dir
    }

    #[test]
    fn no_usb_entry_means_no_stick() {
        let dir = links(&["ata-disk0", "nvme-disk1-part1"]);
        assert!(matches!(find_stick(dir.path()), Err(MediaError::NoStick)));
        let missing = dir.path().join("absent");
        assert!(matches!(find_stick(&missing), Err(MediaError::NoStick)));
    }

    #[test]
    fn two_sticks_are_refused() {
        let dir = links(&["usb-A_1-0:0", "usb-A_1-0:0-part1", "usb-B_2-0:0"]);
        assert!(matches!(
            find_stick(dir.path()),
            Err(MediaError::SeveralSticks { count: 2 })
        ));
    }

    #[test]
    fn the_first_partition_is_chosen_else_the_disk() {
        let dir = links(&["usb-A_1-0:0"]);
        assert_eq!(
            find_stick(dir.path()).expect("disk"),
            PathBuf::from("/dev/null")
        );
        let target = tempfile::tempdir().expect("tempdir");
        for p in ["part1", "part2"] {
            std::fs::write(target.path().join(p), b"").expect("file");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let link = |name: &str, to: &str| {
            std::os::unix::fs::symlink(target.path().join(to), dir.path().join(name))
                .expect("link");
        };
        link("usb-A_1-0:0", "part2");
        link("usb-A_1-0:0-part2", "part2");
        link("usb-A_1-0:0-part1", "part1");
        let chosen = find_stick(dir.path()).expect("partition");
        assert_eq!(chosen.file_name().and_then(|n| n.to_str()), Some("part1"));
    }

    #[test]
    fn a_folder_is_created_and_used_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("exports");
        let mounted = Media::Folder(path.clone()).open().expect("folder");
        assert_eq!(mounted.folder(), path);
        assert!(path.is_dir());
        mounted.finish().expect("sync");
    }
}
