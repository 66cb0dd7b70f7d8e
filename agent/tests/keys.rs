//! `rigd keys`: the receipt key as a rig owner manages it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

/// Writes a rig.conf naming `key` (none: the default key) in `dir` and returns a runner of
/// `rigd keys ACTION`.
fn keys_cli(dir: &Path, key: Option<&str>) -> impl Fn(&str) -> String {
    let key = key.map_or(String::new(), |key| format!("key = \"{key}\"\n"));
    let conf = dir.join("rig.conf");
    std::fs::write(
        &conf,
        format!(
            "rig_id = \"r\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"{}\"\nallow_software_key = true\n{key}",
            dir.display()
        ),
    )
    .unwrap();
    move |action: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rigd"))
            .args(["--config", conf.to_str().unwrap(), "keys", action])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

fn line(text: &str, what: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(what))
        .map(str::to_owned)
}

#[test]
#[cfg(feature = "tpm")]
fn rigd_keys_attest_shows_the_tpm_handle_name_and_that_the_key_cannot_leave_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tpm = rigd_harness::swtpm::Swtpm::start(state.path());
    let run = keys_cli(dir.path(), Some(&format!("tpm:{}", tpm.rest())));
    let show = run("show");
    let attest = run("attest");
    assert_eq!(
        line(&show, "public key"),
        line(&attest, "public key"),
        "{attest}"
    );
    assert!(
        line(&attest, "public key").unwrap().contains("p256:"),
        "{attest}"
    );
    assert_eq!(
        line(&attest, "handle:").as_deref(),
        Some("handle:     0x81010001 (persistent)"),
        "{attest}"
    );
    let name = line(&attest, "name:").unwrap();
    // SHA-256 name algorithm (0x000b) and a 32-byte digest.
    assert!(
        name.starts_with("name:       0x000b") && name.len() == 12 + 2 + 68,
        "{name}"
    );
    let attrs = line(&attest, "attributes:").unwrap();
    for a in ["fixedTPM", "fixedParent", "sensitiveDataOrigin", "sign"] {
        assert!(
            attrs.split_whitespace().any(|w| w == a),
            "{a} missing: {attrs}"
        );
    }
    assert!(
        !attrs.contains("decrypt") && !attrs.contains("restricted"),
        "{attrs}"
    );
    assert!(
        line(&attest, "exportable:").unwrap().contains("no:"),
        "{attest}"
    );
    assert_eq!(
        line(&run("attest"), "name:"),
        Some(name),
        "the same key, the same name"
    );
}

#[test]
fn rigd_keys_attest_of_a_software_key_attests_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let attest = keys_cli(dir.path(), Some("file:k"))("attest");
    assert!(attest.contains("attestation: none"), "{attest}");
    assert!(attest.contains("software, not hardware-held"), "{attest}");
}

#[test]
fn rigd_keys_init_creates_the_key_and_show_prints_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let run = keys_cli(dir.path(), None);
    let init = run("init");
    let show = run("show");
    assert!(
        init.contains("key ready") && init.contains("address:    0x"),
        "{init}"
    );
    assert_eq!(line(&init, "public key"), line(&show, "public key"));
    assert!(show.contains("software, not hardware-held"), "{show}");
}
