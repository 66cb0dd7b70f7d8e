//! Image updates end to end on this machine: `rigctl update` sends the signed command to real
//! rigd processes at work for a real coordinator; each rigd drains, fetches the bundle from a
//! local HTTPS server, checks it and has the real RAUC (on a private D-Bus, the image's
//! system.conf and boot backend, slots on files: [`rigd_harness::rauc`]) install it into slot
//! B; the test carries out the reboot rigd asks for (the slot the ESP boots next, as
//! systemd-boot picks it) and starts rigd again on it.
//!
//! - A to B: the rig comes back on slot B with the same identity and journal, marks it good,
//!   and every receipt from before and after the update is credited exactly once.
//! - Refused bundles (another key, another machine, another digest) change nothing on disk,
//!   and the rig goes back to work; a bundle whose slot never comes up rolls back to A after
//!   its boot tries, rigctl reports it with the reason, and a canary rollout stops there.
//!
//! The same flow on the real image, with real reboots, is `images/qemu-update.sh`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use rigd_harness::rauc::{self, RaucMachine};
use rigd_harness::tls::Pki;
use rigd_harness::{
    free_port, wait_job_done, wait_until, workspace_bin, Coordinator, Mosquitto, RigProcess,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const COMPATIBLE: &str = "rigd-rig-x86_64";

/// A static HTTPS server (Python's http.server behind TLS) for the bundles in `dir`.
struct BundleServer {
    child: Child,
    port: u16,
}

impl BundleServer {
    fn start(dir: &Path, pki: &Pki) -> Self {
        let (cert, key) = pki.server("bundles");
        let port = free_port();
        let script = "import functools, http.server, ssl, sys\n\
            port, root, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]\n\
            handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=root)\n\
            server = http.server.ThreadingHTTPServer(('127.0.0.1', port), handler)\n\
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)\n\
            ctx.load_cert_chain(cert, key)\n\
            server.socket = ctx.wrap_socket(server.socket, server_side=True)\n\
            server.serve_forever()\n";
        let child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .arg(cert)
            .arg(key)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        wait_until("the bundle server listening", 20, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        BundleServer { child, port }
    }

    fn url(&self, file: &Path) -> String {
        format!(
            "https://127.0.0.1:{}/{}",
            self.port,
            file.file_name().unwrap().to_string_lossy()
        )
    }
}

impl Drop for BundleServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rig at work with its RAUC machine.
struct Rig {
    machine: RaucMachine,
    process: RigProcess,
}

impl Rig {
    fn start(name: &str, port: u16, dir: &Path, operator: &str, pki: &Pki) -> Self {
        let machine = RaucMachine::create(&dir.join(format!("{name}-rauc")), "1.0.0");
        let extra = format!(
            "operator_keys = [\"{operator}\"]\nsim.gflops = 0.0002\n{}ca = \"{}\"\n",
            machine.rig_conf(),
            pki.ca_cert().display()
        );
        let env = machine.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = RigProcess::start_env(name, port, 2, &dir.join(name), &extra, &env);
        Rig { machine, process }
    }

    fn state(&self) -> PathBuf {
        self.process.dir.clone()
    }

    /// Waits for rigd's reboot request, stops rigd (SIGTERM: it drains and exits 0) and
    /// takes the request away, as the image's rigd-reboot.service does.
    fn wait_reboot_request(&mut self) {
        let request = self.state().join("update/reboot");
        wait_until("rigd's reboot request", 180, || request.exists());
        assert_eq!(
            self.process.terminate(),
            Some(0),
            "{}",
            self.process.state_report()
        );
        std::fs::remove_file(request).unwrap();
    }

    fn identity(&self) -> Vec<u8> {
        std::fs::read(self.state().join("rig-identity")).unwrap()
    }
}

/// The fleet side of a test: a broker, a coordinator with a job of `units` units, the fleet's
/// PKI (the bundle server's CA), an operator key and the folder the bundles are served from.
/// Fields drop in order: the coordinator stops before its folder goes, the broker last.
struct Fleet {
    coordinator: Coordinator,
    pki: Pki,
    key: PathBuf,
    operator: String,
    www: PathBuf,
    units: u64,
    dir: tempfile::TempDir,
    broker: Mosquitto,
}

impl Fleet {
    fn start(units: u64) -> Self {
        let broker = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::create();
        let coordinator = Coordinator::process_gemm(broker.port, dir.path(), units, 32, None);
        let key = dir.path().join("operator.key");
        let out = Command::new(workspace_bin("rigctl"))
            .arg("operator")
            .arg("keygen")
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        let operator = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let www = dir.path().join("www");
        std::fs::create_dir_all(&www).unwrap();
        Fleet {
            coordinator,
            pki,
            key,
            operator,
            www,
            units,
            dir,
            broker,
        }
    }

    fn rig(&self, name: &str) -> Rig {
        Rig::start(
            name,
            self.broker.port,
            self.dir.path(),
            &self.operator,
            &self.pki,
        )
    }

    /// Serves `bundles` (name, file) over HTTPS.
    fn serve(&self, bundles: &[(&str, PathBuf)]) -> BundleServer {
        for (name, file) in bundles {
            std::fs::copy(file, self.www.join(name)).unwrap();
        }
        BundleServer::start(&self.www, &self.pki)
    }

    /// `rigctl --json update ...` started in the background.
    fn update(&self, rigs: &[&str], bundle: &str, digest: &[&str]) -> Child {
        Command::new(workspace_bin("rigctl"))
            .args(["--broker", &format!("127.0.0.1:{}", self.broker.port)])
            .args(["--json", "update"])
            .args(rigs)
            .args(["--bundle", bundle, "--version", "2.0.0", "--operator-key"])
            .arg(&self.key)
            .args(["--timeout-ms", "180000", "--confirm-timeout-ms", "180000"])
            .args(digest)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `rigctl --json ARGS...`: its report (null when it printed none).
    fn rigctl(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(workspace_bin("rigctl"))
            .args(["--broker", &format!("127.0.0.1:{}", self.broker.port)])
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// `rigctl update-status RIG`: its row.
    fn update_status(&self, rig: &str) -> serde_json::Value {
        self.rigctl(&["update-status", rig])[0].clone()
    }

    /// Whether the rig says it is held, in `rigctl diag`.
    fn held(&self, rig: &str) -> serde_json::Value {
        let key = self.key.to_string_lossy();
        self.rigctl(&["diag", rig, "--operator-key", &key])[0]["rigs"][0]["diagnostics"]["held"]
            .clone()
    }
}

/// rigctl's exit status and its report, rig by rig.
fn finish(child: Child) -> (bool, Vec<serde_json::Value>) {
    let out = child.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rigctl printed no report ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (
        out.status.success(),
        report.as_array().cloned().unwrap_or_default(),
    )
}

fn skip() -> bool {
    if let Some(why) = rauc::unavailable() {
        eprintln!("SKIPPED: {why}");
        return true;
    }
    false
}

#[test]
fn an_update_from_a_to_b_keeps_identity_and_journal_and_credits_every_receipt_once() {
    if skip() {
        return;
    }
    let fleet = Fleet::start(40);
    let mut rig = fleet.rig("upd-ab");
    let server = fleet.serve(&[(
        "rig-2.0.0.raucb",
        rig.machine.bundle("2.0.0", COMPATIBLE, None),
    )]);
    let served = fleet.www.join("rig-2.0.0.raucb");
    wait_until("receipts credited before the update", 120, || {
        fleet.coordinator.credited().len() >= 4
    });
    let identity = rig.identity();
    let (seq_before, _) = rig.process.journal();
    assert_eq!(fleet.update_status("upd-ab")["version"], "1.0.0");
    assert_eq!(fleet.update_status("upd-ab")["slot"], "A");

    let rigctl = fleet.update(
        &["upd-ab"],
        &server.url(&served),
        &["--file", served.to_str().unwrap()],
    );
    rig.wait_reboot_request();
    assert!(
        rig.process
            .log()
            .contains("update installed; rebooting into it"),
        "{}",
        rig.process.state_report()
    );
    assert_eq!(rig.machine.entries(), ["rig-a.conf", "rig-b+3.conf"]);
    // The reboot: slot B boots on trial (systemd-boot takes a try off), rigd starts there.
    assert_eq!(rig.machine.reboot(), "B");
    rig.process.start_again();
    let (ok, report) = finish(rigctl);
    assert!(ok, "{report:?}{}", rig.process.state_report());
    assert_eq!(report[0]["outcome"], "updated", "{report:?}");
    assert_eq!(
        rig.machine.entries(),
        ["rig-a.conf", "rig-b.conf"],
        "B marked good"
    );
    let status = fleet.update_status("upd-ab");
    assert_eq!(
        (
            &status["version"],
            &status["slot"],
            &status["state"],
            &status["last"]
        ),
        (
            &serde_json::json!("2.0.0"),
            &serde_json::json!("B"),
            &serde_json::json!("idle"),
            &serde_json::json!("ok 2.0.0")
        ),
        "{status}"
    );
    // The same rig: its identity (the key it signs with), its journal going on from where it
    // was.
    assert_eq!(rig.identity(), identity);
    wait_job_done(&fleet.coordinator, fleet.units, &[&rig.process], 240);
    fleet
        .coordinator
        .assert_exactly_once(fleet.units, &[&rig.process]);
    assert!(
        rig.process.journal().0 > seq_before,
        "no receipt after the update"
    );
}

#[test]
fn refused_bundles_change_nothing_and_a_slot_that_never_comes_up_rolls_back_and_stops_the_canary() {
    if skip() {
        return;
    }
    let fleet = Fleet::start(40);
    let mut first = fleet.rig("upd-canary");
    let second = fleet.rig("upd-rest");
    let other_key = fleet.dir.path().join("other-key");
    let made = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/bundle.sh"))
        .arg("--new-key")
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(made.success());
    let bundles = [
        (
            "other-key.raucb",
            first.machine.bundle("2.0.0", COMPATIBLE, Some(&other_key)),
        ),
        (
            "other-machine.raucb",
            first.machine.bundle("2.0.0", "other-machine", None),
        ),
        (
            "good.raucb",
            first.machine.bundle("2.0.0", COMPATIBLE, None),
        ),
    ];
    let server = fleet.serve(&bundles);
    wait_until("receipts credited", 120, || {
        fleet.coordinator.credited().len() >= 2
    });
    let untouched = first.machine.fingerprint();
    let zeros = "0".repeat(64);
    for (name, digest, reason) in [
        ("other-key.raucb", None, "signature"),
        ("other-machine.raucb", None, "is for other-machine"),
        ("good.raucb", Some(zeros.as_str()), "SHA-256"),
    ] {
        let file = fleet.www.join(name);
        let args: Vec<&str> = match digest {
            Some(d) => vec!["--sha256", d],
            None => vec!["--file", file.to_str().unwrap()],
        };
        let (ok, report) = finish(fleet.update(&["upd-canary"], &server.url(&file), &args));
        assert!(!ok, "{name}: {report:?}");
        let detail = report[0]["detail"].as_str().unwrap_or_default().to_owned();
        assert_eq!(report[0]["outcome"], "failed", "{name}: {report:?}");
        assert!(detail.contains(reason), "{name}: {detail}");
        assert!(
            detail.contains("refused before anything was written"),
            "{name}: {detail}"
        );
        assert_eq!(
            first.machine.fingerprint(),
            untouched,
            "{name} changed slot B or the ESP"
        );
        let status = fleet.update_status("upd-canary");
        assert_eq!(status["last"], "failed 2.0.0", "{status}");
        assert_eq!(status["slot"], "A");
    }
    // Back to work after the refusals: the update's hold is gone.
    assert_eq!(fleet.held("upd-canary"), serde_json::json!(false));

    // The good bundle, to the canary first; its slot B never comes up.
    let good = fleet.www.join("good.raucb");
    let rigctl = fleet.update(
        &["upd-canary", "upd-rest", "--canary", "1"],
        &server.url(&good),
        &["--file", good.to_str().unwrap()],
    );
    first.wait_reboot_request();
    let state = first.state();
    first
        .machine
        .fail_boots(&state, "B", 3, "rigd: broken binary on slot B");
    assert_eq!(first.machine.entries(), ["rig-a.conf", "rig-b+0-3.conf"]);
    assert_eq!(
        first.machine.reboot(),
        "A",
        "out of tries, A boots again by itself"
    );
    first.process.start_again();
    let (ok, report) = finish(rigctl);
    assert!(!ok, "{report:?}");
    assert_eq!(report[0]["outcome"], "failed", "{report:?}");
    let detail = report[0]["detail"].as_str().unwrap_or_default();
    assert!(
        detail
            .starts_with("rolled back to slot A: slot B with 2.0.0 was not marked good in 3 tries")
            && detail.contains("broken binary on slot B"),
        "{detail}"
    );
    assert_eq!(
        report[1]["outcome"], "skipped",
        "the canary failed: {report:?}"
    );
    let status = fleet.update_status("upd-canary");
    assert_eq!(
        (&status["version"], &status["slot"], &status["last"]),
        (
            &serde_json::json!("1.0.0"),
            &serde_json::json!("A"),
            &serde_json::json!("failed 2.0.0")
        ),
        "{status}"
    );
    // The rest never heard of it.
    let rest = fleet.update_status("upd-rest");
    assert_eq!(rest["last"], serde_json::Value::Null, "{rest}");
    assert_eq!(second.machine.entries(), ["rig-a.conf"]);
    let rigs = [&first.process, &second.process];
    wait_job_done(&fleet.coordinator, fleet.units, &rigs, 240);
    fleet.coordinator.assert_exactly_once(fleet.units, &rigs);
}
