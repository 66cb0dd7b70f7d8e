//! Files of the state directory, written one way: whole or not at all, and durable once
//! written.
//!
//! [`write_atomic`] writes a sibling temporary file, fsyncs it, renames it over the target
//! and fsyncs the directory, so that after a crash or a power cut at any instant the file
//! holds either its old or its new content, and a write that returned survives.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The provisioning state (claimed identity, certificate, operator keys).
pub const PROVISIONING: &str = "provision.json";
/// The last nonce each operator's command used.
pub const NONCES: &str = "operator-nonces";
/// The public key the rig's receipts were last signed with.
pub const IDENTITY: &str = "rig-identity";
/// Operator drains and pauses, kept across restarts.
pub const HOLDS: &str = "operator-holds.json";

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
