//! `rigd keys`: the receipt key as a rig owner manages it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[test]
fn rigd_keys_init_creates_the_key_and_show_prints_the_same_identity() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("rig.conf");
    std::fs::write(
        &conf,
        format!(
            "rig_id = \"r\"\nbroker = \"127.0.0.1:1\"\nstate_dir = \"{}\"\nallow_software_key = true\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let run = |action: &str| {
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
    };
    let init = run("init");
    let show = run("show");
    assert!(
        init.contains("key ready") && init.contains("address:    0x"),
        "{init}"
    );
    let line = |text: &str, what: &str| {
        text.lines()
            .find(|l| l.starts_with(what))
            .map(str::to_owned)
    };
    assert_eq!(line(&init, "public key"), line(&show, "public key"));
    assert!(show.contains("software, not hardware-held"), "{show}");
}
