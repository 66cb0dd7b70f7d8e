//! Owners end to end: real mosquitto with mutual TLS, the provisioner, the coordinator, rigd
//! processes provisioned with each owner's claim, the dashboard, and headless Chromium
//! logging each owner in. Each sees exactly their rigs and their earnings as the ledger has
//! them, to the micro-credit; the screenshots stay in the test's target directory.
//!
//! Needs the workspace's binaries (`cargo build --workspace --bins`) and the e2e driver's
//! npm package (`npm ci --prefix coordinator/dashboard/e2e`), as `./test.sh` does.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rigd_harness::dashboard::browse_as;
use rigd_harness::tls::{
    add_owner, connect, create_claim, options_without_cert, provision_conf, wait_provisioned,
    ProvisioningFleet,
};
use rigd_harness::{wait_job_done, Coordinator, RigProcess};
use rigd_protocol::RigId;
use std::collections::BTreeSet;
use std::path::Path;

/// Micro-credits as the page prints them.
fn credits(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn cells(v: &serde_json::Value, table: &str, column: usize) -> Vec<String> {
    v[table]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[column].as_str().unwrap().to_owned())
        .collect()
}

/// `rigctl --json earnings --owner NAME --dashboard URL` with the password in the
/// environment; (exit code, stdout and stderr).
fn owner_earnings(url: &str, name: &str, password: &str) -> (i32, String) {
    let out = std::process::Command::new(rigd_harness::workspace_bin("rigctl"))
        .args(["--json", "earnings", "--owner", name, "--dashboard", url])
        .env("RIGD_OWNER_PASSWORD", password)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn two_owners_each_see_exactly_their_rigs_and_earnings_in_the_browser() {
    let fleet = ProvisioningFleet::start();
    let (pki, broker, work) = (&fleet.pki, &fleet.broker, &fleet.work);

    let mut passwords = Vec::new();
    let mut tokens = Vec::new();
    for owner in ["alice", "bob"] {
        passwords.push(add_owner(pki, broker.port, owner).unwrap());
        tokens.push(create_claim(pki, broker.port, owner, 2));
    }

    let coordinator_tls = pki.client("fleet:coordinator");
    let coord = Coordinator::gemm(broker.port, work.path(), 24, 16, |c| {
        c.tls = Some(coordinator_tls.clone());
    });
    let mut rigs = Vec::new();
    for (name, owner) in [("a1", 0), ("a2", 0), ("b1", 1)] {
        let dir = work.path().join(name);
        let conf =
            RigProcess::base_conf(broker.port, 1, &dir, &provision_conf(pki, &tokens[owner]));
        rigs.push((owner, RigProcess::start_conf_env(name, &dir, &conf, &[])));
    }
    for (_, rig) in &mut rigs {
        wait_provisioned(rig);
    }
    let all: Vec<&RigProcess> = rigs.iter().map(|(_, r)| r).collect();
    wait_job_done(&coord, 24, &all, 90);

    let ledger = coord.ledger().unwrap();
    let dashboard = fleet.dashboard(&coord.db);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    for (owner, name) in ["alice", "bob"].iter().enumerate() {
        let mine: Vec<&RigProcess> = rigs
            .iter()
            .filter(|(o, _)| *o == owner)
            .map(|(_, r)| r)
            .collect();
        let theirs = rigs
            .iter()
            .find(|(o, _)| *o != owner)
            .map(|(_, r)| r)
            .unwrap();
        let page = browse_as(
            &dashboard.url(),
            name,
            &passwords[owner],
            &shots,
            Some(&theirs.rig),
        );
        assert_eq!(page["failures"], serde_json::json!([]), "{name}: {page}");
        assert!(page["who"].as_str().unwrap().starts_with(name), "{page}");

        let shown: BTreeSet<String> = cells(&page, "rigs", 0).into_iter().collect();
        let expected: BTreeSet<String> = mine.iter().map(|r| r.rig.clone()).collect();
        assert_eq!(shown, expected, "{name} sees exactly their rigs: {page}");
        assert!(
            cells(&page, "rigs", 1).iter().all(|s| s == "online"),
            "{name}: {page}"
        );

        let (mut credited, mut pending, mut rejected) = (0, 0, 0);
        let mut per_card = BTreeSet::new();
        for rig in &mine {
            let e = ledger
                .earnings(&RigId::new(rig.rig.clone()).unwrap())
                .unwrap();
            for c in &e.cards {
                let card = c.card.as_ref().map(|u| u.to_string()).unwrap_or_default();
                per_card.insert((rig.rig.clone(), card, credits(c.credited_micros)));
            }
            let t = e.total();
            credited += t.credited_micros;
            pending += t.pending_micros;
            rejected += t.rejected_units;
        }
        assert!(credited > 0, "{name} earned nothing");
        let totals = &page["totals"];
        assert_eq!(totals["credited"], credits(credited), "{name}: {page}");
        assert_eq!(totals["pending"], credits(pending), "{name}: {page}");
        assert_eq!(totals["payable"], credits(credited), "{name}: {page}");
        assert_eq!(totals["paid"], credits(0), "{name}: {page}");
        assert_eq!(totals["rejected"], rejected.to_string(), "{name}: {page}");
        let rows: BTreeSet<(String, String, String)> = page["cards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let c = |i: usize| r[i].as_str().unwrap().to_owned();
                (c(0), c(1), c(2))
            })
            .collect();
        assert_eq!(rows, per_card, "{name}'s cards: {page}");
        assert!(page["bars"].as_u64().unwrap() >= 1, "{page}");
        assert_eq!(
            page["phoneOverflow"], false,
            "{name}: the page is wider than a phone"
        );
        assert_eq!(page["refreshed"], true);
        assert_eq!(
            page["foreignStatus"], 404,
            "{name} reads another owner's rig"
        );
        for shot in ["desktop", "phone"] {
            assert!(shots.join(format!("{name}-{shot}.png")).exists());
        }

        // The same earnings at a terminal: `rigctl earnings --owner`, from the dashboard's API.
        let (code, out) = owner_earnings(&dashboard.url(), name, &passwords[owner]);
        assert_eq!(code, 0, "{out}");
        let cli: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(cli["total"]["credited_micros"], credited, "{name}: {cli}");
        assert_eq!(cli["total"]["pending_micros"], pending, "{name}: {cli}");
        assert_eq!(cli["total"]["payable_micros"], credited, "{name}: {cli}");
        let cli_rigs: BTreeSet<String> = cli["cards"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["rig"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(cli_rigs, expected, "{name}: {cli}");
    }

    let (code, out) = owner_earnings(&dashboard.url(), "alice", "not her password");
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("wrong name or password"), "{out}");

    // An owner's password is no broker identity: without a fleet certificate the broker
    // refuses the connection however the owner names themselves.
    let mut opts = options_without_cert("owner-alice", broker.port, &pki.ca_cert());
    opts.set_credentials("alice", &passwords[0]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert!(
        rt.block_on(connect(opts)).is_err(),
        "the broker let an owner in"
    );
    assert!(dashboard.log().contains("owner logged in"));
}
