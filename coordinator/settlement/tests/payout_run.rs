//! The coordinator's payout run against a real JSON-RPC chain (`rigd-devchain`), killed with
//! SIGKILL at each point where the ledger and the chain could part (epoch built and nothing
//! signed; post signed and recorded, not sent; post mined, ledger not told) and run again:
//! every epoch lands once, the ledger and the chain agree, and each owner claims exactly what
//! the ledger credited its rigs, once. And the run's dispute duties: it signs each rig's credit
//! statement, answers the disputes opened with them (in full: refused; in part: the bond pays
//! the rest), and counts what a dispute paid as paid.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod chain;

use alloy_primitives::{Address, U256};
use alloy_sol_types::SolCall;
use chain::{signed_batch, RigKey};
use rigd_coordinator::chain::{Chain, ChainError};
use rigd_coordinator::ledger::{BatchRecord, Entry, ReceiptState};
use rigd_coordinator::payout_run::epoch_of;
use rigd_coordinator::statement::StatementKey;
use rigd_coordinator::Ledger;
use rigd_harness::workspace_bin;
use rigd_protocol::claim::Inventory;
use rigd_protocol::{Domain, EthAddress, PublicKey, Receipt, RigId};
use rigd_provisioning::registry::Registry;
use rigd_settlement::{
    open_dispute_call, register_rig, DisputeTerms, RigKeyRegistry, RigdPayoutToken, RigdSettlement,
};
use rigd_testkit::fixtures;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The network's account (a well-known development key; funded by the dev chain).
const NETWORK_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const NETWORK: &str = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266";
/// The network's statement key (the second well-known development key).
const STATEMENT_KEY: &str = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const PRICE: u64 = 3;
const CHAIN_ID: u64 = 31337;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rigd-devchain` on a free port; returns it and its URL.
fn devchain() -> (Killed, String) {
    let mut child = Command::new(workspace_bin("rigd-devchain"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--chain-id",
            "31337",
            "--fund",
            NETWORK,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("devchain said {line:?}"))
        .to_owned();
    (Killed(child), url)
}

struct Fleet {
    dir: tempfile::TempDir,
    url: String,
    settlement: Address,
    token: Address,
    /// The rig key registry.
    keys: Address,
    /// Whether runs sign credit statements.
    statements: bool,
}

impl Fleet {
    fn ledger(&self) -> PathBuf {
        self.dir.path().join("ledger.db")
    }
    fn registry(&self) -> PathBuf {
        self.dir.path().join("registry.db")
    }
    fn key(&self) -> PathBuf {
        self.dir.path().join("network.key")
    }

    fn payouts(&self, hold: Option<&str>) -> Command {
        let mut cmd = Command::new(workspace_bin("coordinator"));
        cmd.arg("payouts")
            .arg("--db")
            .arg(self.ledger())
            .arg("--registry")
            .arg(self.registry())
            .arg("--key-file")
            .arg(self.key())
            .args(["--rpc", &self.url, "--chain-id", "31337"])
            .args(["--settlement-contract", &self.settlement.to_string()]);
        if let Some(hold) = hold {
            cmd.args(["--hold-at", hold]);
        }
        if self.statements {
            cmd.arg("--statement-key")
                .arg(self.dir.path().join("statement.key"));
        }
        cmd
    }

    /// A run held at `hold`, SIGKILLed once it says it got there.
    fn run_killed_at(&self, hold: &str) {
        let mut child = self
            .payouts(Some(hold))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let said = format!("payout run held at {hold}");
        let mut log = Vec::new();
        for line in stderr.lines() {
            let line = line.unwrap();
            let there = line.contains(&said);
            log.push(line);
            if there {
                break;
            }
        }
        assert!(
            log.last().is_some_and(|l| l.contains(&said)),
            "the run ended before {hold}:\n{}",
            log.join("\n")
        );
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    /// A run to the end; its JSON lines.
    fn run(&self) -> Vec<serde_json::Value> {
        self.run_with(&[])
    }

    /// A run to the end with `extra` arguments; its JSON lines.
    fn run_with(&self, extra: &[&str]) -> Vec<serde_json::Value> {
        let out = self.payouts(None).args(extra).output().unwrap();
        assert!(
            out.status.success(),
            "payout run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn owners() -> [(&'static str, EthAddress); 3] {
    [
        ("alice", EthAddress([0xa1; 20])),
        ("bob", EthAddress([0xb2; 20])),
        ("carol", EthAddress([0xc3; 20])),
    ]
}

/// Five rigs of three owners claimed into a new registry at `path`.
fn registry(path: &Path) -> Vec<(RigId, EthAddress)> {
    let mut registry = Registry::open(path).unwrap();
    let mut rigs = Vec::new();
    for (i, (name, payout)) in owners().into_iter().enumerate() {
        registry.add_owner(name, &payout, 1).unwrap();
        let claim = registry.create_claim(name, 10, u64::MAX / 2).unwrap();
        for k in 0..[2, 2, 1][i] {
            let inventory = Inventory {
                cards: vec![],
                driver: "sim".into(),
                agent_version: "0.1.0".into(),
                receipt_key: PublicKey::P256(vec![2; 33]),
            };
            let tls = format!("tls key of {name} {k}");
            let claimed = registry
                .claim(&claim.token, tls.as_bytes(), &inventory, None, 2, |rig| {
                    Ok::<_, std::convert::Infallible>((format!("cert {rig}"), format!("s {rig}")))
                })
                .unwrap()
                .unwrap();
            rigs.push((claimed.record.rig, payout));
        }
    }
    rigs
}

/// Credits `count` receipts of `rig` from `first` on, at `at_ms`.
fn credit(ledger: &mut Ledger, rig: &RigId, first: u64, count: u64, at_ms: u64) {
    let receipts: Vec<Receipt> = (first..first + count)
        .map(|s| fixtures::receipt(rig.as_str(), s, "job", s, 0))
        .collect();
    let record = BatchRecord {
        entries: receipts
            .iter()
            .map(|r| Entry {
                receipt: r,
                state: ReceiptState::Credited,
                reason: None,
                micros: 1_000 + r.seq,
            })
            .collect(),
        ..BatchRecord::default()
    };
    ledger.record_batch(rig, &record, at_ms).unwrap();
}

fn call<C: SolCall>(rt: &tokio::runtime::Runtime, chain: &Chain, to: Address, c: C) -> C::Return {
    let out = rt.block_on(chain.call(to, c.abi_encode())).unwrap();
    C::abi_decode_returns(&out).unwrap()
}

/// A dev chain with the token, the key registry and the settlement deployed by the network
/// (disputes due at once, answered within a day), the network funded; a fleet directory
/// with the network's account and statement keys.
fn start(rt: &tokio::runtime::Runtime) -> (Killed, Chain, Fleet) {
    let (devchain, url) = devchain();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("network.key");
    std::fs::write(&key, NETWORK_KEY).unwrap();
    std::fs::write(dir.path().join("statement.key"), STATEMENT_KEY).unwrap();
    let statements = StatementKey::open(&dir.path().join("statement.key")).unwrap();
    let chain = rt
        .block_on(Chain::connect(&url, &key, Some(CHAIN_ID)))
        .unwrap();
    assert_eq!(chain.address().to_string(), NETWORK);
    let deploy = |code: Vec<u8>| {
        rt.block_on(chain.send(None, code))
            .unwrap()
            .contract
            .unwrap()
    };
    let token = deploy(RigdPayoutToken::BYTECODE.to_vec());
    let keys = deploy(RigKeyRegistry::BYTECODE.to_vec());
    let settlement = deploy(rigd_settlement::settlement_creation(
        EthAddress(token.into_array()),
        EthAddress(keys.into_array()),
        DisputeTerms {
            statement_signer: statements.address(),
            maturity_s: 0,
            answer_window_s: 86_400,
        },
    ));
    let mint = RigdPayoutToken::mintCall {
        to: chain.address(),
        amount: U256::from(1_000_000_000u64),
    };
    rt.block_on(chain.send(Some(token), mint.abi_encode()))
        .unwrap();
    let fleet = Fleet {
        dir,
        url,
        settlement,
        token,
        keys,
        statements: false,
    };
    (devchain, chain, fleet)
}

#[test]
fn a_payout_run_killed_at_any_step_neither_pays_twice_nor_forgets() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_devchain, chain, fleet) = start(&rt);
    let settlement = fleet.settlement;
    let rigs = registry(&fleet.registry());
    let stranger = RigId::new("rig-not-in-the-registry").unwrap();
    let mut ledger = Ledger::create(&fleet.ledger(), PRICE).unwrap();
    let next_epoch = || call(&rt, &chain, settlement, RigdSettlement::nextEpochCall {});

    // Round 1: killed once the post is mined and before the ledger hears of it.
    for (i, (rig, _)) in rigs.iter().enumerate() {
        credit(&mut ledger, rig, 1, 2 + i as u64, 1_000);
    }
    credit(&mut ledger, &stranger, 1, 4, 1_000);
    fleet.run_killed_at("sent");
    assert_eq!(next_epoch(), 1, "the chain holds epoch 0");
    let open = ledger
        .unposted_epoch()
        .unwrap()
        .expect("epoch 0 stays built");
    let sent = open
        .sent
        .clone()
        .expect("its post was recorded before it was sent");
    let out = fleet.run();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0]["posted"], 0);
    assert_eq!(out[0]["recovered"], true);
    assert_eq!(out[0]["tx"], sent.tx.as_str());
    assert_eq!(ledger.epoch(0).unwrap().unwrap().posted, Some(sent.tx));
    assert_eq!(next_epoch(), 1, "the rerun posted nothing again");

    // Round 2: killed after the epoch is built, before anything is signed.
    credit(&mut ledger, &rigs[0].0, 10, 3, 2_000);
    credit(&mut ledger, &rigs[4].0, 10, 1, 2_000);
    fleet.run_killed_at("built");
    assert_eq!(next_epoch(), 1);
    assert!(ledger.unposted_epoch().unwrap().unwrap().sent.is_none());
    let out = fleet.run();
    assert_eq!((out.len(), &out[0]["posted"]), (1, &1.into()), "{out:?}");
    assert_eq!(next_epoch(), 2);

    // Round 3: killed with the post signed and recorded but never sent.
    credit(&mut ledger, &rigs[2].0, 10, 5, 3_000);
    fleet.run_killed_at("signed");
    assert_eq!(next_epoch(), 2, "an unsent post changes nothing on chain");
    let out = fleet.run();
    assert_eq!((out.len(), &out[0]["posted"]), (1, &2.into()), "{out:?}");
    assert_eq!(next_epoch(), 3);

    // Nothing new: a run posts nothing.
    let out = fleet.run();
    assert_eq!(out, vec![serde_json::json!({"posted": null})]);
    assert_eq!(next_epoch(), 3);
    assert_eq!(ledger.unposted_epoch().unwrap(), None);

    // Each owner claims every epoch and holds exactly what the ledger credited its rigs.
    let mut credited: BTreeMap<EthAddress, u64> = BTreeMap::new();
    for (rig, owner) in &rigs {
        let e = ledger.earnings(rig).unwrap();
        let total: u64 = e.cards.iter().map(|c| c.credited_micros).sum();
        assert_eq!(ledger.paid(rig).unwrap(), total, "{rig} paid in full");
        *credited.entry(*owner).or_default() += total;
    }
    for n in 0..3 {
        let epoch = epoch_of(&ledger, n).unwrap().unwrap();
        assert_eq!(epoch.root(), ledger.epoch(n).unwrap().unwrap().root);
        for (owner, _) in &epoch.payouts {
            let claim = epoch.claim_call(*owner).unwrap();
            rt.block_on(chain.send(Some(settlement), claim)).unwrap();
        }
    }
    for (owner, total) in &credited {
        let held = call(
            &rt,
            &chain,
            fleet.token,
            RigdPayoutToken::balanceOfCall {
                account: Address::from(owner.0),
            },
        );
        assert_eq!(held, U256::from(*total), "{owner}");
    }
    let left = call(
        &rt,
        &chain,
        fleet.token,
        RigdPayoutToken::balanceOfCall {
            account: settlement,
        },
    );
    assert_eq!(left, U256::ZERO, "every epoch was claimed to the last unit");
    // A second claim is refused before it is signed.
    let again = epoch_of(&ledger, 0)
        .unwrap()
        .unwrap()
        .claim_call(owners()[0].1)
        .unwrap();
    assert!(matches!(
        rt.block_on(chain.send(Some(settlement), again)),
        Err(ChainError::Reverted(_))
    ));
    // The rig with no owner in the registry was paid nothing and is still owed all of it.
    assert_eq!(ledger.paid(&stranger).unwrap(), 0);
    assert_eq!(
        ledger.payable(i64::MAX as u64).unwrap().get(&stranger),
        Some(&(1_001 + 1_002 + 1_003 + 1_004))
    );
}

#[test]
fn a_payout_run_signs_statements_answers_disputes_and_counts_lost_ones_as_paid() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_devchain, chain, mut fleet) = start(&rt);
    fleet.statements = true;
    let rigs = registry(&fleet.registry());
    let mut ledger = Ledger::create(&fleet.ledger(), PRICE).unwrap();
    for (i, (rig, _)) in rigs.iter().enumerate() {
        credit(&mut ledger, rig, 1, 2 + i as u64, 1_000);
    }
    // Rig 0's receipt key, in rigd's own key store, as the network registers it on chain.
    let (rig, owner) = rigs[0].clone();
    let key = RigKey::file("secp256k1");
    let register = register_rig(&rig, &key.public(), owner).unwrap();
    rt.block_on(chain.send(Some(fleet.keys), register)).unwrap();

    let out = fleet.run();
    assert_eq!(out[0]["posted"], 0, "{out:?}");
    assert!(
        out.contains(&serde_json::json!({"statements": 5})),
        "{out:?}"
    );
    let signed = ledger.statement(&rig).unwrap().expect("rig 0's statement");
    let domain = Domain::new(CHAIN_ID, EthAddress(fleet.settlement.into_array()));
    assert_eq!(signed.domain, domain);
    assert_eq!(signed.statement.last_seq, 2);
    assert_eq!(signed.statement.credited_total, ledger.paid(&rig).unwrap());

    // Rig 0's owner disputes the epoch with the statement and the rig's signed batch.
    let (header, sig, _) = signed_batch(&rig, &key, domain, 1, 2, 1);
    let open = open_dispute_call(&signed.statement, &signed.signature, &header, &sig.0);
    rt.block_on(chain.send(Some(fleet.settlement), open))
        .unwrap();
    let id = signed.statement.signing_digest(&domain);
    let state = || {
        call(
            &rt,
            &chain,
            fleet.settlement,
            RigdSettlement::disputesCall(id.into()),
        )
        .state
    };
    assert_eq!(state(), 1, "open");

    // The next run answers it with the rig's leaf, which pays it all: refused.
    let out = fleet.run();
    let answered = serde_json::json!({"answered": format!("0x{}", hex::encode(id)),
        "rig": rig.to_string(), "epoch": 0, "refused": true});
    assert!(out.contains(&answered), "{out:?}");
    assert_eq!(state(), 2, "refused");
    // And the run after answers nothing again.
    let out = fleet.run();
    assert!(!out.iter().any(|l| l.get("answered").is_some()), "{out:?}");

    // Rig 0 is credited more, and its owner disputes the network's statement of it before
    // any epoch pays it (an epoch slower than the contract's maturity: here the run still
    // holds the new credit inside its audit window). The run answers with the rig's leaf,
    // which pays only part; the window passes; the bond pays the owner the rest.
    let balance = |who: Address| {
        call(
            &rt,
            &chain,
            fleet.token,
            RigdPayoutToken::balanceOfCall { account: who },
        )
    };
    let bond = 1_000_000u64;
    let approve = RigdPayoutToken::approveCall {
        spender: fleet.settlement,
        value: U256::from(bond),
    };
    rt.block_on(chain.send(Some(fleet.token), approve.abi_encode()))
        .unwrap();
    let fund = RigdSettlement::fundBondCall {
        amount: U256::from(bond),
    };
    rt.block_on(chain.send(Some(fleet.settlement), fund.abi_encode()))
        .unwrap();
    credit(&mut ledger, &rig, 3, 2, 2_000);
    let statements = StatementKey::open(&fleet.dir.path().join("statement.key")).unwrap();
    let later = statements
        .statement(&ledger, &rig, 3_000, &domain)
        .unwrap()
        .unwrap();
    assert_eq!(later.statement.last_seq, 4);
    let (header, sig, _) = signed_batch(&rig, &key, domain, 3, 2, 1);
    let open = open_dispute_call(&later.statement, &later.signature, &header, &sig.0);
    rt.block_on(chain.send(Some(fleet.settlement), open))
        .unwrap();
    let later_id = later.statement.signing_digest(&domain);
    let out = fleet.run_with(&["--audit-window-ms", "100000000000000"]);
    assert!(
        out.contains(&serde_json::json!({"posted": null})),
        "{out:?}"
    );
    let answered = serde_json::json!({"answered": format!("0x{}", hex::encode(later_id)),
        "rig": rig.to_string(), "epoch": 0, "refused": false});
    assert!(out.contains(&answered), "{out:?}");
    // Past the answer window: the dev chain stamps blocks a second apart at least, so its
    // clock runs ahead of the wall clock by at most the blocks this test mines (under 100).
    increase_time(&fleet.url, 86_400 + 1_000);
    let owner_address = Address::from(owner.0);
    let before = balance(owner_address);
    let settle = RigdSettlement::settleDisputeCall {
        id: later_id.into(),
    };
    rt.block_on(chain.send(Some(fleet.settlement), settle.abi_encode()))
        .unwrap();
    let new_credit = (1_000 + 3) + (1_000 + 4);
    assert_eq!(balance(owner_address) - before, U256::from(new_credit));

    // The next run learns what the dispute paid, and no epoch pays it again.
    let out = fleet.run();
    assert!(
        out.contains(&serde_json::json!({"posted": null})),
        "{out:?}"
    );
    assert_eq!(ledger.made_good(&rig).unwrap(), new_credit);
    assert_eq!(ledger.payable(i64::MAX as u64).unwrap().get(&rig), None);
    let credited: u64 = ledger
        .earnings(&rig)
        .unwrap()
        .cards
        .iter()
        .map(|c| c.credited_micros)
        .sum();
    assert_eq!(ledger.paid(&rig).unwrap(), credited, "paid once, in full");
}

/// Moves the dev chain at `url` (`http://HOST:PORT`) `secs` seconds forward.
fn increase_time(url: &str, secs: u64) {
    use std::io::{Read, Write};
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let body =
        format!(r#"{{"jsonrpc":"2.0","id":1,"method":"evm_increaseTime","params":[{secs}]}}"#);
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.contains(r#""result""#), "{answer}");
}
