use super::*;

const GOOD: &str = "rig_id = \"rig-1\"\nbroker = \"127.0.0.1:1883\"\nstate_dir = \"/tmp/x\"\nallow_software_key = true\nkey_timeout_ms = 5000\n";

#[test]
fn a_minimal_config_parses_with_defaults() {
    let c = RigConfig::parse(Path::new("rig.conf"), GOOD);
    let c = c.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (c.settings.gpu, c.settings.sim.as_ref()),
        (GpuBackend::Nvml, None),
        "simulated cards only when asked for"
    );
    assert!(
        matches!(&c.identity, Identity::Fixed(Assigned { rig, tls: None }) if rig.as_str() == "rig-1"),
        "{:?}",
        c.identity
    );
    assert_eq!(c.settings.broker_addr(), Some(("127.0.0.1", 1883)));
    assert!(c.settings.operator_keys().is_empty() && c.settings.allowed_commands.is_none());
}

#[test]
fn operator_keys_granted_at_provisioning_join_rig_conf_ones_once() {
    let key = "ab".repeat(32);
    let text = format!("{GOOD}operator_keys = [\"{key}\"]\n");
    let mut c = RigConfig::parse(Path::new("rig.conf"), &text).unwrap_or_else(|e| panic!("{e}"));
    c.settings.trust(crate::claim::Granted {
        operator_keys: vec![[0xab; 32], [0xcd; 32], [0xcd; 32]],
        domain: None,
    });
    assert_eq!(c.settings.operator_keys(), vec![[0xab; 32], [0xcd; 32]]);
    assert_eq!(c.settings.domain(), Domain::LOCAL);
}

#[test]
fn the_receipt_domain_comes_from_rig_conf_or_the_grant_and_bad_ones_are_named() {
    let contract = "0xfB6916095ca1df60bB79Ce92cE3Ea74c37c5d359";
    let text = format!("{GOOD}\n[receipt_domain]\nchain_id = 8453\ncontract = \"{contract}\"\n");
    let mut c = RigConfig::parse(Path::new("rig.conf"), &text).unwrap_or_else(|e| panic!("{e}"));
    let configured = Domain::new(
        8453,
        EthAddress::parse(contract).unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(c.settings.domain(), configured);
    let granted = Domain::new(1, EthAddress([7; 20]));
    c.settings.trust(crate::claim::Granted {
        operator_keys: vec![],
        domain: Some(granted),
    });
    assert_eq!(c.settings.domain(), granted);
    for (bad, says) in [
        ("chain_id = 1\ncontract = \"0x1234\"\n", "contract"),
        (
            "chain_id = 0\ncontract = \"0x5FbDB2315678afecb367f032d93F642f64180aa3\"\n",
            "chain_id 0",
        ),
        (
            "chain_id = 1\ncontract = \"0xFB6916095ca1df60bB79Ce92cE3Ea74c37c5d359\"\n",
            "checksum",
        ),
        ("chain_id = 1\n", "contract"),
    ] {
        let text = format!("{GOOD}\n[receipt_domain]\n{bad}");
        let err = match RigConfig::parse(Path::new("rig.conf"), &text) {
            Ok(_) => panic!("{bad:?} was taken"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{bad:?}: {err}");
    }
}

#[test]
fn operator_keys_and_allowed_commands_parse_and_bad_ones_are_named() {
    let key = "ab".repeat(32);
    let text =
        format!("{GOOD}operator_keys = [\"{key}\"]\nallowed_commands = [\"drain\", \"resume\"]\n");
    let c = RigConfig::parse(Path::new("rig.conf"), &text).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.settings.operator_keys(), vec![[0xab; 32]]);
    assert_eq!(
        c.settings.allowed_commands,
        Some(vec![ActionKind::Drain, ActionKind::Resume])
    );
    for bad in [
        "operator_keys = [\"abcd\"]\n",
        "allowed_commands = [\"reboot\"]\n",
    ] {
        assert!(
            matches!(
                RigConfig::parse(Path::new("rig.conf"), &format!("{GOOD}{bad}")),
                Err(ConfigError::Parse { line: 6, .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn an_unknown_key_is_refused_with_its_line() {
    let text = format!("{GOOD}sim_gpu = 3\n");
    match RigConfig::parse(Path::new("rig.conf"), &text) {
        Err(ConfigError::Parse { line, message, .. }) => {
            assert_eq!(line, 6);
            assert!(message.contains("sim_gpu"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn a_bad_rig_id_and_a_bad_broker_are_refused() {
    let text = GOOD.replace("rig-1", "rig/1");
    assert!(matches!(
        RigConfig::parse(Path::new("rig.conf"), &text),
        Err(ConfigError::Parse { line: 1, .. })
    ));
    let text = GOOD.replace("127.0.0.1:1883", "nowhere");
    assert!(matches!(
        RigConfig::parse(Path::new("rig.conf"), &text),
        Err(ConfigError::Value { key: "broker", .. })
    ));
}

#[test]
fn a_rig_has_either_a_fixed_id_or_a_claim() {
    let parse = |t: &str| RigConfig::parse(Path::new("rig.conf"), t);
    let base = GOOD.replace("rig_id = \"rig-1\"\n", "");
    assert!(matches!(
        parse(&base),
        Err(ConfigError::Value { key: "rig_id", .. })
    ));
    let provision =
        "[provision]\nclaim = \"rc_x\"\nca = \"/c\"\nclaim_cert = \"/a\"\nclaim_key = \"/b\"\n";
    let c = parse(&format!("{base}{provision}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(c.identity, Identity::Claim(p) if p.timeout_ms == 5000));
    assert!(matches!(
        parse(&format!("{GOOD}{provision}")),
        Err(ConfigError::Value { key: "rig_id", .. })
    ));
    assert!(matches!(
        parse(&format!(
            "{base}tls_key = \"file:t?curve=p256\"\n[tls]\nca = \"/c\"\ncert = \"/r\"\n{provision}"
        )),
        Err(ConfigError::Value { key: "tls", .. })
    ));
}

#[test]
fn simulated_cards_are_asked_for_with_gpu_sim_and_described_in_their_own_section() {
    let parse = |t: &str| RigConfig::parse(Path::new("rig.conf"), &format!("{GOOD}{t}"));
    let table = "gpu = \"sim\"\n[sim]\ngpus = 3\ngflops = 0.5\n[[sim.fault]]\ncard = 2\nfault = \"crash\"\n";
    let c = parse(table).unwrap_or_else(|e| panic!("{e}"));
    let sim = c.settings.sim.unwrap_or_else(|| panic!("no [sim]"));
    assert_eq!((sim.gpus, sim.gflops, sim.fault.len()), (3, 0.5, 1));
    let dotted = parse("gpu = \"sim\"\nsim.gpus = 2\n").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        dotted.settings.sim.map(|s| (s.gpus, s.ambient_c)),
        Some((2, 25.0))
    );
    for (bad, key) in [
        ("sim.gpus = 2\n", "sim"),
        ("gpu = \"sim\"\nsim.gpus = 0\n", "sim.gpus"),
        ("gpu = \"sim\"\nsim.gflops = -1.0\n", "sim.gflops"),
        (
            "gpu = \"sim\"\n[sim]\ngpus = 1\n[[sim.fault]]\ncard = 1\nfault = \"hang\"\n",
            "sim.fault",
        ),
    ] {
        match parse(bad) {
            Err(ConfigError::Value { key: got, .. }) => assert_eq!(got, key, "{bad}"),
            other => panic!("{bad}: expected a refusal of {key}, got {other:?}"),
        }
    }
}

/// Key URIs are parsed when rig.conf is loaded: a mistake in one is refused with its line
/// and reason before any key store is touched; good ones of every scheme load.
#[test]
fn key_uris_are_parsed_at_load_and_bad_ones_refused_with_their_line() {
    for bad in [
        "key = \"file:k?curve=ed448\"",
        "key = \"tpm://0x1234\"",
        "key = \"yubihsm://usb\"",
        "key = \"pkcs11:token=t?pin-value=secret-1234\"",
        "key = \"nfc:card\"",
        "tls_key = \"file://relative\"",
    ] {
        let text = format!("{GOOD}{bad}\n");
        match RigConfig::parse(Path::new("rig.conf"), &text) {
            Err(ConfigError::Parse {
                line: 6, message, ..
            }) => {
                assert!(
                    !message.contains("secret-1234"),
                    "{bad}: the PIN is shown: {message}"
                );
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    for good in [
        "key = \"file:k?curve=p256&sign_delay_ms=5\"",
        "key = \"file:///var/lib/rigd/k\"",
        "key = \"tpm://0x81000001?tcti=swtpm:host=127.0.0.1,port=2321\"",
        "key = \"yubihsm://usb?key=0x0100&password-file=/etc/rigd/hsm.pass\"",
        "key = \"pkcs11:token=rig;object=receipt?module-path=/usr/lib/p11.so&pin-source=/etc/pin\"",
    ] {
        let text = format!("{GOOD}{good}\n");
        let c = RigConfig::parse(Path::new("rig.conf"), &text)
            .unwrap_or_else(|e| panic!("{good}: {e}"));
        assert_eq!(
            c.settings.key.is_software(),
            good.contains("file:"),
            "{good}"
        );
    }
}

#[test]
fn a_batch_window_of_up_to_an_hour_is_taken_and_a_longer_one_refused() {
    let c = RigConfig::parse(
        Path::new("rig.conf"),
        &format!("{GOOD}batch_window_ms = 60000\n"),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.settings.batch_window_ms, 60_000);
    let err = match RigConfig::parse(
        Path::new("rig.conf"),
        &format!("{GOOD}batch_window_ms = 3600001\n"),
    ) {
        Ok(_) => panic!("a window over an hour was taken"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("batch_window_ms") && err.contains("over an hour"),
        "{err}"
    );
}
