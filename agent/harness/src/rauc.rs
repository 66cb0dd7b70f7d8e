//! A rig's update machinery on files, for tests: the real RAUC service on a private D-Bus,
//! configured by the image's `images/rauc/system.conf` with its two root slots on ext4 files
//! and the image's boot backend (`images/rauc/rig-boot`) on an ESP folder; signed bundles
//! made by `images/bundle.sh`; and the reboot: the slot the ESP's entries boot next (as
//! systemd-boot picks it, taking a try off an entry on trial), its `/etc/rigd-image` for
//! rigd, and the RAUC service started again as booted from it.
//!
//! What this machine lacks: device-mapper, so the bundles are RAUC's plain format here (the
//! image takes verity bundles only; that install runs under QEMU, `images/qemu-update.sh`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why this machine cannot run the fixture, if it cannot.
pub fn unavailable() -> Option<String> {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !root {
        return Some("needs root (loop mounts of the slots)".into());
    }
    for tool in ["rauc", "dbus-daemon", "mksquashfs", "mkfs.ext4", "debugfs"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("{tool} is missing"));
        }
    }
    None
}

fn images_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The update machinery of one rig.
pub struct RaucMachine {
    pub dir: PathBuf,
    /// The ESP folder.
    pub esp: PathBuf,
    /// The slots: `root-a`, `root-b`.
    pub devices: PathBuf,
    /// The fleet's update key (`key.pem`, `cert.pem`).
    pub key: PathBuf,
    /// `/etc/rigd-image` of the booted slot, for rig.conf's `image_release`.
    pub release: PathBuf,
    conf: PathBuf,
    cmdline: PathBuf,
    bus: String,
    dbus: Child,
    service: Option<Child>,
    /// The booted slot.
    pub booted: String,
}

impl RaucMachine {
    /// Slot A holds a root of version `version`, slot B nothing; A boots.
    pub fn create(dir: &Path, version: &str) -> Self {
        let dir = dir.to_owned();
        let (esp, devices, key) = (dir.join("esp"), dir.join("dev"), dir.join("update-key"));
        std::fs::create_dir_all(esp.join("loader/entries")).unwrap();
        std::fs::create_dir_all(&devices).unwrap();
        std::fs::create_dir_all(dir.join("mnt")).unwrap();
        run(Command::new(images_dir().join("bundle.sh"))
            .arg("--new-key")
            .arg(&key));
        let a = Self::root_image(&dir, version);
        std::fs::copy(&a, devices.join("root-a")).unwrap();
        run(Command::new("truncate")
            .args(["-s", "48M"])
            .arg(devices.join("root-a")));
        run(Command::new("truncate")
            .args(["-s", "48M"])
            .arg(devices.join("root-b")));
        let conf = dir.join("system.conf");
        let system = std::fs::read_to_string(images_dir().join("rauc/system.conf")).unwrap();
        let system = system
            .replace(
                "/dev/disk/by-partlabel/",
                &format!("{}/", devices.display()),
            )
            .replace(
                "path=/etc/rauc/keyring.pem",
                &format!("path={}", key.join("cert.pem").display()),
            )
            .replace(
                "bootloader-custom-backend=/usr/lib/rigd/rig-boot",
                &format!(
                    "bootloader-custom-backend={}",
                    images_dir().join("rauc/rig-boot").display()
                ),
            )
            .replace("bundle-formats=-plain\n", "");
        std::fs::write(&conf, system).unwrap();
        let entry =
            run(Command::new(images_dir().join("rauc/rig-boot")).args(["entry", "A", "rig-1"]));
        std::fs::write(esp.join("loader/entries/rig-a.conf"), entry).unwrap();
        let mut dbus = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon");
        let mut line = String::new();
        {
            use std::io::BufRead;
            let out = dbus.stdout.take().expect("dbus-daemon stdout");
            std::io::BufReader::new(out).read_line(&mut line).unwrap();
        }
        let mut m = RaucMachine {
            release: dir.join("rigd-image"),
            cmdline: dir.join("cmdline"),
            dir,
            esp,
            devices,
            key,
            conf,
            bus: line.trim().to_owned(),
            dbus,
            service: None,
            booted: String::new(),
        };
        m.boot("A");
        m
    }

    /// A root file system of `version`: a kernel, an initrd and `/etc/rigd-image`.
    fn root_image(dir: &Path, version: &str) -> PathBuf {
        let root = dir.join(format!("root-{version}"));
        std::fs::create_dir_all(root.join("boot")).unwrap();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(
            root.join("etc/rigd-image"),
            format!("RIGD_IMAGE_VERSION={version}\n"),
        )
        .unwrap();
        std::fs::write(root.join("boot/vmlinuz-6.1.0"), format!("kernel {version}")).unwrap();
        std::fs::write(
            root.join("boot/initrd.img-6.1.0"),
            format!("initrd {version}"),
        )
        .unwrap();
        // Enough bytes that the bundle's squashfs is more than one block.
        let filler: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(root.join("etc/filler"), filler).unwrap();
        let image = dir.join(format!("root-{version}.ext4"));
        run(Command::new("truncate").args(["-s", "24M"]).arg(&image));
        run(Command::new("mkfs.ext4")
            .args(["-q", "-L", "rigroot", "-d"])
            .arg(&root)
            .arg(&image));
        image
    }

    /// A bundle of a root of `version` for `compatible`, signed with `key` (a folder with
    /// `key.pem` and `cert.pem`; default the fleet's update key).
    pub fn bundle(&self, version: &str, compatible: &str, key: Option<&Path>) -> PathBuf {
        let image = Self::root_image(&self.dir, version);
        let key = key.unwrap_or(&self.key);
        let out = self.dir.join(format!(
            "rig-{version}-{compatible}-{}.raucb",
            key.file_name().unwrap().to_string_lossy()
        ));
        run(Command::new(images_dir().join("bundle.sh"))
            .arg("--root")
            .arg(&image)
            .arg("--cert")
            .arg(key.join("cert.pem"))
            .arg("--key")
            .arg(key.join("key.pem"))
            .args(["--format", "plain", "--compatible", compatible, "--out"])
            .arg(&out));
        out
    }

    /// The environment rigd needs to reach this RAUC.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("DBUS_SESSION_BUS_ADDRESS".into(), self.bus.clone()),
            ("DBUS_STARTER_BUS_TYPE".into(), "session".into()),
        ]
    }

    /// rig.conf's `[update]` for this machine.
    pub fn rig_conf(&self) -> String {
        format!(
            "[update]\nrauc_conf = \"{}\"\nimage_release = \"{}\"\n",
            self.conf.display(),
            self.release.display()
        )
    }

    /// The ESP's entries, sorted.
    pub fn entries(&self) -> Vec<String> {
        let mut e: Vec<String> = std::fs::read_dir(self.esp.join("loader/entries"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".conf"))
            .collect();
        e.sort();
        e
    }

    /// SHA-256 of slot B's bytes and of the ESP's files: what an install would change.
    pub fn fingerprint(&self) -> String {
        run(Command::new("sh").arg("-c").arg(format!(
            "sha256sum {}/root-b | cut -c1-16; cd {} && find . -type f -exec sha256sum {{}} + | sort | sha256sum | cut -c1-16",
            self.devices.display(),
            self.esp.display()
        )))
    }

    fn backend(&self) -> Command {
        let mut cmd = Command::new(images_dir().join("rauc/rig-boot"));
        cmd.env("RIG_BOOT_ESP", &self.esp)
            .env("RIG_BOOT_DEVICES", &self.devices)
            .env("RIG_BOOT_CMDLINE", &self.cmdline);
        cmd
    }

    /// The power cycle: systemd-boot boots the slot whose entry sorts first, taking a try
    /// off it first if it is on trial; that slot's `/etc/rigd-image` becomes rigd's, and
    /// RAUC starts again as booted from it. Returns the slot.
    pub fn reboot(&mut self) -> String {
        let slot = run(self.backend().arg("get-primary")).trim().to_owned();
        let letter = slot.to_lowercase();
        for name in self.entries() {
            let Some(counter) = name
                .strip_prefix(&format!("rig-{letter}+"))
                .and_then(|c| c.strip_suffix(".conf"))
            else {
                continue;
            };
            let (left, done) = counter.split_once('-').unwrap_or((counter, "0"));
            let (left, done): (u32, u32) = (left.parse().unwrap(), done.parse().unwrap());
            if left > 0 {
                let entries = self.esp.join("loader/entries");
                std::fs::rename(
                    entries.join(&name),
                    entries.join(format!("rig-{letter}+{}-{}.conf", left - 1, done + 1)),
                )
                .unwrap();
            }
        }
        self.boot(&slot);
        slot
    }

    /// Starts RAUC as booted from `slot`, with its release file for rigd.
    fn boot(&mut self, slot: &str) {
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let device = self.devices.join(format!("root-{}", slot.to_lowercase()));
        let release = run(Command::new("debugfs")
            .args(["-R", "cat /etc/rigd-image"])
            .arg(&device)
            .stderr(Stdio::null()));
        std::fs::write(&self.release, release).unwrap();
        std::fs::write(&self.cmdline, format!("rauc.slot={slot}\n")).unwrap();
        let mut cmd = Command::new("rauc");
        cmd.arg(format!("--override-boot-slot={slot}"))
            .arg(format!("--conf={}", self.conf.display()))
            .arg(format!("--mount={}", self.dir.join("mnt").display()))
            .arg("service")
            .env("RIG_BOOT_ESP", &self.esp)
            .env("RIG_BOOT_DEVICES", &self.devices)
            .env("RIG_BOOT_CMDLINE", &self.cmdline)
            .envs(self.env());
        self.service = Some(crate::spawn_logged(
            cmd,
            &self.dir.join(format!("rauc-{slot}.log")),
        ));
        self.booted = slot.to_owned();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = Command::new("rauc")
                .arg(format!("--conf={}", self.conf.display()))
                .args(["status", "--output-format=json"])
                .envs(self.env())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if up {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the RAUC service did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Slot `slot` fails `tries` boots in a row, the way the image's rig-trial records them
    /// (its trial log in rigd's state directory `state`), and its counter runs out.
    pub fn fail_boots(&mut self, state: &Path, slot: &str, tries: u32, why: &str) {
        let log = state.join("update/trial.log");
        std::fs::create_dir_all(log.parent().unwrap()).unwrap();
        let mut text = std::fs::read_to_string(&log).unwrap_or_default();
        for i in 0..tries {
            let booted = self.reboot();
            assert_eq!(booted, slot, "try {i} booted {booted}");
            text.push_str(&format!(
                "try boot-{i} slot={slot} reason=failed uptime_s=30 ActiveState=failed Result=exit-code ExecMainStatus=1 last=\"{why}\"\n"
            ));
        }
        std::fs::write(&log, text).unwrap();
    }
}

impl Drop for RaucMachine {
    fn drop(&mut self) {
        if let Some(mut s) = self.service.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        let _ = self.dbus.kill();
        let _ = self.dbus.wait();
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "umount -q {}/mnt/* 2>/dev/null",
                self.dir.display()
            ))
            .status();
    }
}
