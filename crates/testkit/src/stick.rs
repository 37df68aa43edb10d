//! USB sticks for tests: real file-system images on loop devices, linked
//! the way udev links USB disks (`/dev/disk/by-id/usb-…`), for the
//! console's exports (`[console] usb_devices`). Loop devices need root;
//! [`Stick::new`] says `None` where they cannot be used, and callers
//! export to a plain folder instead.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file-system image attached to a loop device; detached on drop.
pub struct Stick {
    pub device: PathBuf,
    pub image: PathBuf,
}

impl Stick {
    /// An ext4 image of `mib` MiB (the kernels of these machines have no
    /// FAT driver; the box tries FAT32 and exFAT first), attached
    /// read-only when `read_only`. `None` when loop devices cannot be used.
    pub fn new(dir: &Path, name: &str, mib: u64, read_only: bool) -> Option<Stick> {
        if !nix::unistd::geteuid().is_root() {
            return None;
        }
        let image = dir.join(format!("{name}.img"));
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(mib << 20))
            .ok()?;
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(&image)
            .status()
            .ok()?;
        if !made.success() {
            return None;
        }
        let mut losetup = Command::new("losetup");
        losetup.args(["-f", "--show"]);
        if read_only {
            losetup.arg("-r");
        }
        let out = losetup.arg(&image).output().ok()?;
        if !out.status.success() {
            eprintln!(
                "losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let device = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        Some(Stick { device, image })
    }

    /// Links the stick as udev would: `usb-<vendor>_<model>_<serial>-0:0`.
    ///
    /// # Errors
    /// When the link cannot be made.
    pub fn plug_into(&self, devices: &Path, serial: &str) -> std::io::Result<()> {
        std::fs::create_dir_all(devices)?;
        std::os::unix::fs::symlink(
            &self.device,
            devices.join(format!("usb-Test_Stick_{serial}-0:0")),
        )
    }

    /// Mounts the image read-only at `at` to look at what was written.
    ///
    /// # Errors
    /// When it cannot be mounted.
    pub fn look(&self, at: &Path) -> std::io::Result<Mounted> {
        std::fs::create_dir_all(at)?;
        let ok = Command::new("mount")
            .args(["-o", "ro,loop"])
            .arg(&self.image)
            .arg(at)
            .status()?;
        if !ok.success() {
            return Err(std::io::Error::other("mount failed"));
        }
        Ok(Mounted(at.to_owned()))
    }
}

impl Drop for Stick {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

/// An image mounted read-only to look at; unmounted on drop.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The `/proc/self/mountinfo` line of what is mounted at `point`.
pub fn mounted_at(point: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let point = point.to_string_lossy();
    mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&point))
        .map(str::to_owned)
}
