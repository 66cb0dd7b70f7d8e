//! A fleet PKI for tests: a CA made by rig-provisioner's code, client certificates, and
//! MQTT 5 clients that connect with them.

use rigd_client::{ClientIdentity, TlsFiles};
use rigd_provisioning::broker::{self, BrokerSettings};
use rigd_provisioning::ca::{Ca, P256Public, Role};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Writes the broker's configuration (mTLS, ACL with operator `alice`) into `dir`.
pub fn broker_config(ca_dir: &Path, port: u16, dir: &Path) -> PathBuf {
    let ca = Ca::load(ca_dir).expect("load CA");
    let settings = BrokerSettings {
        bind: "127.0.0.1".into(),
        port,
        hosts: vec!["127.0.0.1".into(), "localhost".into()],
        persistence_dir: None,
        run_as: "root".into(),
    };
    broker::write(&ca, &settings, &["alice".into()], dir).expect("broker config")
}

/// A CA in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
}

impl Pki {
    /// Creates the fleet CA in a fresh temporary directory.
    pub fn create() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::init(&dir.path().join("ca"), "test fleet CA").expect("CA");
        Pki { dir, ca }
    }

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.ca.cert_path()
    }

    /// A client certificate and key named `cn`, as files.
    pub fn client(&self, cn: &str) -> TlsFiles {
        let (cert, key) = self.issue_files(cn, Role::Client, &[], &cn.replace(':', "_"));
        TlsFiles {
            ca: self.ca_cert(),
            cert,
            key: Some(key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1 (the dashboard's HTTPS) and its
    /// key, as files.
    pub fn server(&self, cn: &str) -> (PathBuf, PathBuf) {
        let sans = ["localhost".to_owned(), "127.0.0.1".to_owned()];
        self.issue_files(cn, Role::Server, &sans, &format!("{cn}-server"))
    }

    /// Has the CA issue `cn` a certificate and key for `role`, written as `STEM.pem` and
    /// `STEM-key.pem`.
    fn issue_files(&self, cn: &str, role: Role, sans: &[String], stem: &str) -> (PathBuf, PathBuf) {
        let issued = self.ca.issue(cn, role, sans).expect("issue");
        let cert = self.dir.path().join(format!("{stem}.pem"));
        let key = self.dir.path().join(format!("{stem}-key.pem"));
        std::fs::write(&cert, issued.cert_pem).expect("write cert");
        std::fs::write(&key, issued.key_pem.expect("key")).expect("write key");
        (cert, key)
    }

    /// Creates rig `rig`'s P-256 TLS key in its key store under `state` (TLS has no
    /// secp256k1, the receipt key's curve), as `rigd keys init` would, has the CA certify it,
    /// and returns the rig.conf lines that connect with them.
    pub fn rig_tls_conf(&self, rig: &str, state: &Path) -> String {
        std::fs::create_dir_all(state).expect("state dir");
        let key = rigd::keys::open("file:tls-key?curve=p256", state, true).expect("TLS key");
        let rigd_protocol::PublicKey::P256(sec1) = key.public_key() else {
            panic!("P-256 key expected")
        };
        let cert = self.cert_for(rig, &sec1);
        format!(
            "tls_key = \"file:tls-key?curve=p256\"\n[tls]\nca = \"{}\"\ncert = \"{}\"\n",
            self.ca_cert().display(),
            cert.display()
        )
    }

    /// A certificate named `cn` for a P-256 public key (SEC1) held elsewhere.
    pub fn cert_for(&self, cn: &str, sec1: &[u8]) -> PathBuf {
        let key = P256Public::from_sec1(sec1).expect("P-256 key");
        let issued = self.ca.issue_for(cn, &key).expect("issue");
        let path = self.dir.path().join(format!("{cn}-store.pem"));
        std::fs::write(&path, issued.cert_pem).expect("write cert");
        path
    }
}

/// The `--tls-ca`, `--tls-cert` and `--tls-key` arguments of a fleet program connecting
/// with `files` (`--tls-key` only when `files` names a key file).
pub fn args(files: &TlsFiles) -> Vec<String> {
    let mut args = vec![
        "--tls-ca".into(),
        files.ca.display().to_string(),
        "--tls-cert".into(),
        files.cert.display().to_string(),
    ];
    if let Some(key) = &files.key {
        args.extend(["--tls-key".into(), key.display().to_string()]);
    }
    args
}

/// MQTT 5 options for a client of the broker on `port` using `files`.
pub fn options(id: &str, port: u16, files: &TlsFiles) -> MqttOptions {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(10));
    let config = rigd_client::client_config_from_files(files).expect("TLS config");
    opts.set_transport(rigd_client::transport(config));
    opts
}

/// MQTT 5 options with TLS that trusts `ca` but shows no client certificate.
pub fn options_without_cert(id: &str, port: u16, ca: &Path) -> MqttOptions {
    let mut roots = rustls::RootCertStore::empty();
    for c in rigd_client::load_certs(ca).expect("CA") {
        roots.add(c).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_transport(rigd_client::transport(Arc::new(config)));
    opts
}

/// TLS options that show a certificate whose key signs through `signer`.
pub fn options_with_signer(
    id: &str,
    port: u16,
    ca: &Path,
    cert: &Path,
    signer: Arc<dyn rigd_client::DigestSigner>,
) -> MqttOptions {
    let chain = rigd_client::load_certs(cert).expect("cert");
    let config = rigd_client::client_config(ca, ClientIdentity::Signer { chain, signer })
        .expect("TLS config");
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_transport(rigd_client::transport(config));
    opts
}

/// Connects; `Ok` once the broker sent CONNACK, `Err` with the failure otherwise.
pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let polled = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "no CONNACK within 5 s".to_string())?;
    polled.map(|()| (client, eventloop))
}

/// Polls until a packet matching `pick` arrives (or an error or 5 s pass).
pub async fn next<T>(
    eventloop: &mut EventLoop,
    mut pick: impl FnMut(&Packet) -> Option<T>,
) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(p)) => {
                    if let Some(t) = pick(&p) {
                        return Ok(t);
                    }
                }
                Ok(_) => continue,
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await
    .map_err(|_| "nothing within 5 s".to_string())?
}

/// A `rig-provisioner serve` process with its registry in `dir`.
pub struct ProvisionerProcess {
    pub dir: PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl ProvisionerProcess {
    /// Starts the provisioner against the broker on `port`, writing the CRL into the
    /// broker's directory and reloading it with SIGHUP to `broker_pid`.
    pub fn start(
        pki: &Pki,
        (port, broker_dir, broker_pid): (u16, &Path, u32),
        dir: &Path,
        domain: Option<rigd_protocol::Domain>,
    ) -> Self {
        let tls = pki.client("fleet:provisioner");
        std::fs::create_dir_all(dir).expect("dir");
        let mut args = vec![
            "serve".into(),
            "--ca".into(),
            pki.ca_dir().display().to_string(),
            "--db".into(),
            dir.join("registry.db").display().to_string(),
            "--broker".into(),
            format!("127.0.0.1:{port}"),
        ];
        args.extend(self::args(&tls));
        args.extend([
            "--crl".into(),
            broker_dir.join("crl.pem").display().to_string(),
            "--acl".into(),
            broker_dir.join("acl").display().to_string(),
            "--reload-command".into(),
            format!("kill -HUP {broker_pid}"),
            "--operator-key".into(),
            OPERATOR_KEY_HEX.into(),
        ]);
        if let Some(d) = domain {
            args.extend([
                "--chain-id".into(),
                d.chain_id.to_string(),
                "--settlement-contract".into(),
                d.contract().to_string(),
            ]);
        }
        let mut p = ProvisionerProcess {
            dir: dir.to_owned(),
            args,
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        self.spawn_env(&[]);
    }

    fn spawn_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = std::process::Command::new(super::workspace_bin("rig-provisioner"));
        cmd.args(&self.args).env("RUST_LOG", "info");
        cmd.envs(env.iter().copied());
        self.child = Some(super::spawn_logged(cmd, &self.dir.join("provisioner.log")));
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("provisioner.log")).unwrap_or_default()
    }

    /// Waits until it has connected (`n`-th time since the log began).
    pub fn wait_serving(&self, n: usize) {
        super::wait_until("provisioner serving", 20, || {
            self.log().matches("serving claims").count() >= n
        });
    }

    pub fn kill9(&mut self) {
        super::kill9(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.restart_env(&[]);
    }

    /// [`Self::restart`] with extra environment variables for this start only.
    pub fn restart_env(&mut self, env: &[(&str, &str)]) {
        self.kill9();
        self.spawn_env(env);
    }

    /// Waits up to `secs` for it to exit by itself; whether it did.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        super::wait_exit(&mut self.child, secs)
    }

    /// Rigs in the registry: (id, owner, state, serial).
    pub fn rigs(&self) -> Vec<(String, String, String, String)> {
        let Ok(db) = rusqlite::Connection::open_with_flags(
            self.dir.join("registry.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        ) else {
            return vec![];
        };
        let Ok(mut st) = db.prepare("SELECT id, owner, state, serial FROM rigs ORDER BY id") else {
            return vec![];
        };
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map(|rows| rows.flatten().collect())
            .unwrap_or_default()
    }
}

impl Drop for ProvisionerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The operator Ed25519 public key the test provisioner hands to rigs.
pub const OPERATOR_KEY_HEX: &str =
    "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// Runs rigctl as operator `alice` against the broker on `port`; returns (exit code, stdout).
pub fn rigctl(pki: &Pki, port: u16, args: &[&str]) -> (i32, String) {
    let op = pki.client("operator:alice");
    let out = std::process::Command::new(super::workspace_bin("rigctl"))
        .args(["--broker", &format!("127.0.0.1:{port}")])
        .args(["--tls-ca", &op.ca.display().to_string()])
        .args(["--tls-cert", &op.cert.display().to_string()])
        .args(["--tls-key", &op.key.expect("key").display().to_string()])
        .args(args)
        .output()
        .expect("run rigctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `[provision]` lines for rig.conf using the fleet claim certificate.
pub fn provision_conf(pki: &Pki, token: &str) -> String {
    let claim = pki.client("fleet:claim");
    format!(
        "key = \"file:receipt-key?curve=p256\"\n[provision]\nclaim = \"{token}\"\nca = \"{}\"\nclaim_cert = \"{}\"\nclaim_key = \"{}\"\ntimeout_ms = 2000\n",
        claim.ca.display(),
        claim.cert.display(),
        claim.key.expect("key").display()
    )
}

/// Adds `owner` through rigctl (payouts to a fixed test address); returns the generated
/// password, or `None` when the owner exists already.
pub fn add_owner(pki: &Pki, port: u16, owner: &str) -> Option<String> {
    let payout = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed";
    let (code, out) = rigctl(
        pki,
        port,
        &["--json", "owners", "add", owner, "--payout", payout],
    );
    if code != 0 && out.contains("exists already") {
        return None;
    }
    assert_eq!(code, 0, "rigctl owners add: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    Some(v["password"].as_str().expect("password").to_owned())
}

/// Creates a claim through rigctl for `owner`, adding the owner first where needed;
/// returns the token.
pub fn create_claim(pki: &Pki, port: u16, owner: &str, uses: u32) -> String {
    create_claim_expiring(pki, port, owner, uses, "1h")
}

/// Creates a claim through rigctl for `owner` (added first where needed), valid for `expires` (rigctl's syntax, e.g. `1s`).
pub fn create_claim_expiring(
    pki: &Pki,
    port: u16,
    owner: &str,
    uses: u32,
    expires: &str,
) -> String {
    add_owner(pki, port, owner);
    let (code, out) = rigctl(
        pki,
        port,
        &[
            "--json",
            "claims",
            "create",
            "--owner",
            owner,
            "--uses",
            &uses.to_string(),
            "--expires",
            expires,
        ],
    );
    assert_eq!(code, 0, "rigctl claims create: {out}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    v["token"].as_str().expect("token").to_owned()
}

/// The fleet side of a provisioning test: a PKI, a mutual-TLS mosquitto with the fleet ACL,
/// and `rig-provisioner serve` connected to it, all in `work`.
pub struct ProvisioningFleet {
    pub pki: Pki,
    pub broker: super::Mosquitto,
    pub provisioner: ProvisionerProcess,
    pub work: tempfile::TempDir,
}

impl ProvisioningFleet {
    /// The fleet, its provisioner granting the local development deployment.
    pub fn start() -> Self {
        Self::start_for(None)
    }

    /// The fleet, its provisioner granting `domain` (`None`: the local development one).
    pub fn start_for(domain: Option<rigd_protocol::Domain>) -> Self {
        let pki = Pki::create();
        let broker = super::mosquitto_tls(&pki.ca_dir());
        let work = tempfile::tempdir().expect("temp dir");
        let provisioner = ProvisionerProcess::start(
            &pki,
            (broker.port, broker.dir(), broker.pid()),
            &work.path().join("provisioner"),
            domain,
        );
        provisioner.wait_serving(1);
        Self {
            pki,
            broker,
            provisioner,
            work,
        }
    }

    /// The provisioner's registry database (the coordinator and the dashboard read it).
    pub fn registry(&self) -> PathBuf {
        self.provisioner.dir.join("registry.db")
    }

    /// The owners' dashboard over this fleet's registry and the ledger at `ledger`, on plain
    /// HTTP (the browser reaches it on loopback).
    pub fn dashboard(&self, ledger: &Path) -> crate::dashboard::DashboardProcess {
        crate::dashboard::DashboardProcess::start(
            &self.pki,
            self.broker.port,
            &self.registry(),
            ledger,
            &self.work.path().join("dashboard"),
            None,
        )
    }

    /// The same on HTTPS, with a server certificate from the fleet CA.
    pub fn dashboard_https(&self, ledger: &Path) -> crate::dashboard::DashboardProcess {
        crate::dashboard::DashboardProcess::start(
            &self.pki,
            self.broker.port,
            &self.registry(),
            ledger,
            &self.work.path().join("dashboard"),
            Some(self.pki.server("dashboard")),
        )
    }
}

/// Waits until `rig` is provisioned, names it by its rig id and returns that id.
pub fn wait_provisioned(rig: &mut super::RigProcess) -> String {
    super::wait_until("the rig is provisioned", 30, || {
        provisioned_id(&rig.dir).is_some()
    });
    rig.rig = provisioned_id(&rig.dir).expect("provisioned");
    rig.rig.clone()
}

/// The rig id a rig provisioned into `dir` was given, once it has been.
pub fn provisioned_id(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("provision.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(v["Provisioned"]["rig"].as_str()?.to_owned())
}
