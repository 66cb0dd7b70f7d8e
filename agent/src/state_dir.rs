//! The state directory ([`StateDir`]) and its files ([`StateFile`]), written one way: whole
//! or not at all, and durable once written.
//!
//! [`write_atomic`] writes a sibling temporary file, fsyncs it, renames it over the target
//! and fsyncs the directory, so that after a crash or a power cut at any instant the file
//! holds either its old or its new content, and a write that returned survives.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The files rigd keeps in its state directory, each with its name and who may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    /// The provisioning state (claimed identity, certificate, operator keys).
    Provisioning,
    /// The certificate chain a claim was answered with.
    Certificate,
    /// The last nonce each operator's command used.
    Nonces,
    /// The public key the rig's receipts were last signed with.
    Identity,
    /// Operator drains and pauses, kept across restarts.
    Holds,
    /// The journal (SQLite: inbox, receipts, batches), written by SQLite itself.
    Journal,
    /// The update installed and not yet confirmed: the version and the slots it goes from
    /// and to ([`crate::update`]).
    UpdatePending,
    /// How the last update ended.
    UpdateLast,
    /// Why each boot of an updated slot failed, written by the image's rig-trial (root).
    UpdateTrials,
    /// A reboot request: the image's rigd-reboot.path reboots when it appears.
    UpdateReboot,
    /// Where a bundle is downloaded to.
    UpdateBundle,
}

impl StateFile {
    /// The file's name in the state directory.
    pub fn name(self) -> &'static str {
        match self {
            StateFile::Provisioning => "provision.json",
            StateFile::Certificate => "rig-cert.pem",
            StateFile::Nonces => "operator-nonces",
            StateFile::Identity => "rig-identity",
            StateFile::Holds => "operator-holds.json",
            StateFile::Journal => "journal.db",
            StateFile::UpdatePending => "update/pending.json",
            StateFile::UpdateLast => "update/last.json",
            StateFile::UpdateTrials => "update/trial.log",
            StateFile::UpdateReboot => "update/reboot",
            StateFile::UpdateBundle => "update/bundle.raucb",
        }
    }

    /// Who may read it: the nonces only rigd (they say which commands it takes next).
    fn mode(self) -> u32 {
        match self {
            StateFile::Nonces => 0o600,
            _ => 0o644,
        }
    }
}

/// The state directory: every file of [`StateFile`] is read and written through it, written
/// whole and durably by [`write_atomic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    path: PathBuf,
}

impl StateDir {
    /// The state directory at `path` (created on the first write).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateDir { path: path.into() }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where `file` lives.
    pub fn file(&self, file: StateFile) -> PathBuf {
        self.path.join(file.name())
    }

    /// Reads `file`; `None` when it does not exist.
    pub fn read(&self, file: StateFile) -> std::io::Result<Option<Vec<u8>>> {
        read_optional(&self.file(file))
    }

    /// Replaces `file` with `data`, atomically and durably.
    pub fn write(&self, file: StateFile, data: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.file(file), data, file.mode())
    }
}

/// Writes `data` to `path` atomically and durably, the file readable by `mode` (0o600 for
/// secrets). The directory is created if missing.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = dir.join(name);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Reads `path`; `None` when it does not exist.
pub fn read_optional(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_write_replaces_the_whole_file_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f");
        assert_eq!(read_optional(&path).unwrap(), None);
        write_atomic(&path, b"first, longer", 0o600).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(
            read_optional(&path).unwrap().as_deref(),
            Some(&b"second"[..])
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f")]);
    }
}
