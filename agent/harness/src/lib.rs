//! The process harness of rigd's integration tests and benches: real rigd processes beside
//! a real mosquitto per test on a free loopback port ([`RigProcess`]), the coordinator in
//! or out of process ([`Coordinator`]), the fleet PKI and a mutual-TLS broker ([`tls`]), a
//! rogue rig ([`rogue`]), a rig's RAUC on files ([`rauc`]), and polling with deadlines instead
//! of sleeps. Dev-only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod coordinator;
pub mod dashboard;
pub mod rauc;
pub mod rogue;
pub mod tls;

pub use coordinator::{ledger_arg, wait_job_done, Coordinator};
pub use rigd_testkit::{free_port, softhsm, swtpm, wait_until, Mosquitto};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Starts a broker with mutual TLS and the fleet ACL written by `rig-provisioner
/// broker-config` for the CA in `ca_dir`.
pub fn mosquitto_tls(ca_dir: &Path) -> Mosquitto {
    let ca = ca_dir.to_owned();
    Mosquitto::start_configured(Arc::new(move |port, dir| {
        tls::broker_config(&ca, port, dir)
    }))
}

/// A binary of the workspace built beside this test (cargo builds every binary of the
/// workspace for `cargo test --workspace` / nextest).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build --workspace --bins` first",
        bin.display()
    );
    bin
}

/// The rig's row of `rigctl --json status` (`Null` while it has none): what an operator sees.
pub fn status_row(port: u16, rig: &str) -> serde_json::Value {
    let out = Command::new(workspace_bin("rigctl"))
        .args(["--broker", &format!("127.0.0.1:{port}"), "--json", "status"])
        .output()
        .expect("run rigctl");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    json["rigs"]
        .as_array()
        .and_then(|rigs| rigs.iter().find(|r| r["rig"] == rig))
        .cloned()
        .unwrap_or_default()
}

/// Waits until rigd has published `count` more status reports (each from a later turn of its
/// main loop) and checks `each` on every one seen; the way to show that something does *not*
/// happen over a stretch of rigd's own work, instead of sleeping.
pub fn watch_statuses(
    port: u16,
    rig: &str,
    count: usize,
    secs: u64,
    mut each: impl FnMut(&serde_json::Value),
) {
    let mut seen = std::collections::BTreeSet::new();
    let first = status_row(port, rig)["last_seen_ms"].as_u64().unwrap_or(0);
    wait_until(&format!("{count} status reports of {rig}"), secs, || {
        let row = status_row(port, rig);
        if let Some(at) = row["last_seen_ms"].as_u64().filter(|at| *at > first) {
            if seen.insert(at) {
                each(&row);
            }
        }
        seen.len() >= count
    });
}

/// Spawns `cmd` with its stderr appended to `log` and its stdout discarded.
pub fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn a workspace binary")
}

/// Deletes every receipt key file in a rig's state directory, as a replaced key store would.
pub fn remove_receipt_keys(state_dir: &Path) {
    for entry in std::fs::read_dir(state_dir).expect("read the state dir") {
        let path = entry.expect("a state dir entry").path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("receipt-key"))
        {
            std::fs::remove_file(path).expect("remove a receipt key");
        }
    }
}

/// SIGKILLs the child, if any, and reaps it.
pub fn kill9(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Waits up to `secs` for the child to exit by itself and reaps it; whether it did.
pub fn wait_exit(child: &mut Option<Child>, secs: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        match child.as_mut().map(|c| c.try_wait()) {
            None => return true,
            Some(Ok(Some(_))) => {
                *child = None;
                return true;
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    false
}

/// A rigd process with its own state directory.
pub struct RigProcess {
    pub rig: String,
    pub dir: PathBuf,
    pub conf: PathBuf,
    child: Option<Child>,
    /// Environment variables of every start.
    env: Vec<(String, String)>,
}

impl RigProcess {
    /// [`Self::start`] with environment variables that every start of this rigd gets.
    pub fn start_env(
        rig: &str,
        port: u16,
        gpus: u32,
        dir: &Path,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let text = format!(
            "rig_id = \"{rig}\"\n{}",
            Self::base_conf(port, gpus, dir, extra)
        );
        let mut p = Self::new(rig, dir, &text);
        p.env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        p.spawn();
        p
    }

    /// Writes rig.conf (plus `extra` lines) under `dir` and starts rigd.
    pub fn start(rig: &str, port: u16, gpus: u32, dir: &Path, extra: &str) -> Self {
        Self::start_conf(
            rig,
            dir,
            &format!(
                "rig_id = \"{rig}\"\n{}",
                Self::base_conf(port, gpus, dir, extra)
            ),
        )
    }

    /// rig.conf without `rig_id` (for rigs that provision themselves).
    pub fn base_conf(port: u16, gpus: u32, dir: &Path, extra: &str) -> String {
        format!(
            "broker = \"127.0.0.1:{port}\"\nstate_dir = \"{}\"\nallow_software_key = true\ngpu = \"sim\"\nsim.gpus = {gpus}\ntelemetry_interval_ms = 200\nresend_interval_ms = 500\n{extra}",
            dir.display()
        )
    }

    /// Writes `text` as rig.conf under `dir` and starts rigd; `rig` names it in the test.
    pub fn start_conf(rig: &str, dir: &Path, text: &str) -> Self {
        Self::start_conf_env(rig, dir, text, &[])
    }

    /// [`Self::start_conf`] with extra environment variables for this first start only.
    pub fn start_conf_env(rig: &str, dir: &Path, text: &str, env: &[(&str, &str)]) -> Self {
        let mut p = Self::new(rig, dir, text);
        p.spawn_env(env);
        p
    }

    /// Writes `text` as rig.conf under `dir`; starts nothing.
    fn new(rig: &str, dir: &Path, text: &str) -> Self {
        std::fs::create_dir_all(dir).expect("state dir");
        let conf = dir.join("rig.conf");
        std::fs::write(&conf, text).expect("write rig.conf");
        RigProcess {
            rig: rig.into(),
            dir: dir.to_owned(),
            conf,
            child: None,
            env: vec![],
        }
    }

    fn spawn(&mut self) {
        self.spawn_env(&[]);
    }

    fn spawn_env(&mut self, env: &[(&str, &str)]) {
        let mut cmd = Command::new(workspace_bin("rigd"));
        cmd.arg("--config").arg(&self.conf).env(
            "RUST_LOG",
            std::env::var("RIGD_TEST_LOG").unwrap_or_else(|_| "rigd=info".into()),
        );
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd.envs(env.iter().copied());
        self.child = Some(spawn_logged(cmd, &self.dir.join("rigd.log")));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then wait for it.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts rigd again after [`Self::kill9`] or [`Self::terminate`].
    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// Starts rigd again with extra environment variables for this start only.
    pub fn start_again_env(&mut self, env: &[(&str, &str)]) {
        self.spawn_env(env);
    }

    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        c.wait().ok().and_then(|s| s.code())
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits up to `secs` for rigd to exit by itself; whether it did.
    pub fn wait_exit(&mut self, secs: u64) -> bool {
        wait_exit(&mut self.child, secs)
    }

    /// Waits up to `secs` for rigd to exit by itself; its exit code (`None`: still running
    /// or killed by a signal).
    pub fn exit_code(&mut self, secs: u64) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.as_mut()?.try_wait() {
                self.child = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("rigd.log")).unwrap_or_default()
    }

    /// Its journal counts and the end of its log, for a failed test's message.
    pub fn state_report(&self) -> String {
        let log = self.log();
        let mut tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.reverse();
        format!(
            "\n{}: journal (last seq, unacked) {:?}, (unsigned, unacked batches) {:?}; its log ends:\n{}",
            self.rig,
            self.journal(),
            self.unsigned_and_unacked(),
            tail.join("\n")
        )
    }

    /// (highest journaled seq, receipts not acknowledged), read from the journal.
    pub fn journal(&self) -> (u64, u64) {
        self.read_journal(|db| {
            let last = scalar(db, "SELECT COALESCE(MAX(seq), 0) FROM receipts");
            let acked = scalar(
                db,
                "SELECT COALESCE(SUM(count), 0) FROM batches WHERE acked = 1",
            );
            // Receipts at or below the floor were recorded before this journal (a lost one).
            let floor = scalar(db, "SELECT COALESCE((SELECT seq FROM floor), 0)");
            (last as u64, (last - floor - acked).max(0) as u64)
        })
    }

    /// Receipts journaled but in no signed batch yet, and signed batches not acknowledged yet
    /// (read from the journal, as a kill left it).
    pub fn unsigned_and_unacked(&self) -> (u64, u64) {
        self.read_journal(|db| {
            (
                scalar(db, "SELECT COUNT(*) FROM receipts WHERE batch IS NULL") as u64,
                scalar(db, "SELECT COUNT(*) FROM batches WHERE acked = 0") as u64,
            )
        })
    }

    /// Signed batches the network refused for good, and their receipts (from the journal).
    pub fn refused_batches(&self) -> (u64, u64) {
        self.read_journal(|db| {
            (
                scalar(db, "SELECT COUNT(*) FROM batches WHERE acked = 2") as u64,
                scalar(
                    db,
                    "SELECT COALESCE(SUM(count), 0) FROM batches WHERE acked = 2",
                ) as u64,
            )
        })
    }

    /// `read` over the journal opened read-only; (0, 0) while there is no journal yet.
    fn read_journal(&self, read: impl FnOnce(&rusqlite::Connection) -> (u64, u64)) -> (u64, u64) {
        rusqlite::Connection::open_with_flags(
            self.dir.join("journal.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .map_or((0, 0), |db| read(&db))
    }

    /// Worker processes of this rigd (children in /proc).
    pub fn worker_pids(&self) -> Vec<u32> {
        let me = self.pid().to_string();
        let mut out = vec![];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for e in entries.flatten() {
                let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let fields: Vec<&str> = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                if fields.get(1) == Some(&me.as_str()) && fields.first() != Some(&"Z") {
                    if let Ok(pid) = e.file_name().to_string_lossy().parse() {
                        out.push(pid);
                    }
                }
            }
        }
        out
    }
}

impl Drop for RigProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Unit `n` of job "bench": a 64x64x64 int8 GEMM (benches).
pub fn bench_unit(n: u64) -> rigd_protocol::WorkUnit {
    rigd_protocol::WorkUnit {
        job: rigd_protocol::JobId::new("bench").unwrap(),
        unit: n,
        attempt: 0,
        kind: rigd_protocol::UnitKind::GemmI8 {
            seed: n,
            m: 64,
            n: 64,
            k: 64,
        },
    }
}

/// `unit` finished on card SIM-bench-0, as the supervisor journals it (benches).
pub fn bench_completion(unit: &rigd_protocol::WorkUnit) -> rigd::journal::Completion {
    rigd::journal::Completion {
        unit: unit.clone(),
        card: rigd_protocol::GpuUuid::new("SIM-bench-0").unwrap(),
        output: rigd_protocol::UnitOutput::GemmI8 {
            c_digest: [unit.unit as u8; 32],
        },
        work: 524_288,
        started_ms: 1,
        finished_ms: 2,
        governor_level: 0,
    }
}

/// The one integer `sql` returns; 0 when the query fails (a journal still being created).
fn scalar(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}
