//! A real PostgreSQL server (Debian `postgresql`) per test: `initdb` into a temporary
//! directory and `postgres` on a free loopback port, run as an unprivileged user when the
//! test runs as root (PostgreSQL refuses root). Killed and removed when dropped.

use crate::free_port;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The uid and gid of `nobody`, which runs the server when the test is root.
const NOBODY: u32 = 65534;

/// A PostgreSQL server owned by the test.
pub struct Postgres {
    /// The loopback port it listens on.
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// The directory of PostgreSQL's server binaries (`initdb`, `postgres`, `pg_isready`), the
/// newest version installed; `None` when there is none.
pub fn bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// `program` with its arguments, as `nobody` when this process is root.
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if running_as_root() {
        cmd.uid(NOBODY).gid(NOBODY);
    }
    cmd
}

impl Postgres {
    /// Creates a database cluster and starts its server; returns once it takes connections.
    pub fn start() -> Self {
        let bin = bin_dir().expect("PostgreSQL is not installed: run ./test.sh, which installs it");
        let dir = tempfile::tempdir().expect("tempdir");
        if running_as_root() {
            std::os::unix::fs::chown(dir.path(), Some(NOBODY), Some(NOBODY))
                .expect("hand the server's directory to nobody");
        }
        let data = dir.path().join("data");
        let status = command(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "rigd", "--no-sync", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run initdb");
        assert!(status.success(), "initdb failed");
        for _ in 0..5 {
            let port = free_port();
            let log = std::fs::File::create(dir.path().join("postgres.log")).expect("log");
            if running_as_root() {
                std::os::unix::fs::chown(
                    dir.path().join("postgres.log"),
                    Some(NOBODY),
                    Some(NOBODY),
                )
                .expect("chown the log");
            }
            let mut child = command(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-k")
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn postgres");
            if ready(&bin, port, &mut child) {
                return Postgres {
                    port,
                    dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("postgres did not start");
    }

    /// The URL of database `postgres` as user `rigd` (no password: trust on loopback).
    pub fn url(&self) -> String {
        format!("postgresql://rigd@127.0.0.1:{}/postgres", self.port)
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Waits until the server on `port` takes connections; `false` if `child` exits first or
/// 30 s pass.
fn ready(bin: &Path, port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let up = Command::new(bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if up {
            return true;
        }
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
