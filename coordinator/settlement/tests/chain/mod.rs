//! A local chain on revm (Osaka rules: P256VERIFY at 0x100) with the settlement contracts
//! deployed from their committed artifacts, and rigs that sign batches with rigd's own key
//! stores.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use alloy_primitives::{Address, U256};
use alloy_sol_types::{SolCall, SolInterface};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{Context, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::handler::{MainnetContext, MainnetEvm};
use revm::primitives::hardfork::SpecId;
use revm::primitives::{Bytes, TxKind};
use revm::{ExecuteCommitEvm, MainBuilder, MainContext};
use rigd::keys::KeyStore;
use rigd_coordinator::statement::StatementKey;
use rigd_coordinator::Ledger;
use rigd_protocol::{
    BatchHeader, Domain, EthAddress, GpuUuid, JobId, PublicKey, Receipt, ReceiptItem, RigId,
    Signature, UnitOutput,
};
use rigd_settlement::{
    DisputeTerms, Epoch, RigKeyRegistry, RigTree, RigdPayoutToken, RigdSettlement,
};
use rigd_testkit::swtpm::Swtpm;
use std::collections::{BTreeMap, HashMap};

pub const CHAIN_ID: u64 = 31337;

/// What a call did: its output or revert data, and the gas it used.
pub struct Outcome {
    pub ok: bool,
    pub output: Vec<u8>,
    pub gas: u64,
}

impl Outcome {
    /// The custom error of `RigdSettlement` the call reverted with.
    pub fn settlement_error(&self) -> RigdSettlement::RigdSettlementErrors {
        assert!(!self.ok, "the call succeeded");
        RigdSettlement::RigdSettlementErrors::abi_decode(&self.output).unwrap_or_else(|e| {
            panic!(
                "not a settlement error ({e}): 0x{}",
                hex::encode(&self.output)
            )
        })
    }
}

/// Seconds after a statement's instant before it can be disputed, in these deployments.
pub const MATURITY_S: u64 = 3_600;
/// Seconds the network has to answer a dispute, in these deployments.
pub const ANSWER_WINDOW_S: u64 = 600;

pub struct Chain {
    evm: MainnetEvm<MainnetContext<CacheDB<EmptyDB>>>,
    nonces: HashMap<Address, u64>,
    pub network: Address,
    pub token: Address,
    pub registry: Address,
    pub settlement: Address,
    /// The network's credit statement key, the one the settlement is deployed with.
    pub statements: StatementKey,
    _dir: tempfile::TempDir,
}

impl Chain {
    /// A chain with the token, the registry and the settlement deployed by the network's
    /// account, which holds `funds` of the token.
    pub fn deploy(funds: u128) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("statement-key");
        std::fs::write(&key_file, format!("0x{}\n", "5a".repeat(32))).unwrap();
        let statements = StatementKey::open(&key_file).unwrap();
        let evm = Context::mainnet()
            .modify_cfg_chained(|c| {
                c.set_spec_and_mainnet_gas_params(SpecId::OSAKA);
                c.chain_id = CHAIN_ID;
            })
            .modify_block_chained(|b| {
                b.gas_limit = 100_000_000;
                b.basefee = 0;
            })
            .with_db(CacheDB::<EmptyDB>::default())
            .build_mainnet();
        let network = Address::repeat_byte(0x0e);
        let mut chain = Self {
            evm,
            nonces: HashMap::new(),
            network,
            token: Address::ZERO,
            registry: Address::ZERO,
            settlement: Address::ZERO,
            statements,
            _dir: dir,
        };
        let terms = DisputeTerms {
            statement_signer: chain.statements.address(),
            maturity_s: MATURITY_S,
            answer_window_s: ANSWER_WINDOW_S,
        };
        chain.token = chain.create(network, RigdPayoutToken::BYTECODE.to_vec());
        chain.registry = chain.create(network, RigKeyRegistry::BYTECODE.to_vec());
        chain.settlement = chain.create(
            network,
            rigd_settlement::settlement_creation(eth(chain.token), eth(chain.registry), terms),
        );
        let mint = RigdPayoutToken::mintCall {
            to: network,
            amount: U256::from(funds),
        }
        .abi_encode();
        assert!(chain.call(network, chain.token, mint).ok);
        chain
    }

    /// Sets the time of the blocks that follow (Unix seconds).
    pub fn set_time(&mut self, secs: u64) {
        self.evm.ctx.block.timestamp = U256::from(secs);
    }

    /// The deployment rigs sign for.
    pub fn domain(&self) -> Domain {
        Domain::new(CHAIN_ID, eth(self.settlement))
    }

    fn tx(&mut self, from: Address, kind: TxKind, data: Vec<u8>) -> ExecutionResult {
        let nonce = self.nonces.entry(from).or_insert(0);
        let tx = TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(Bytes::from(data))
            .nonce(*nonce)
            .chain_id(Some(CHAIN_ID))
            .gas_price(0)
            .build()
            .unwrap();
        *nonce += 1;
        self.evm.transact_commit(tx).unwrap()
    }

    pub fn create(&mut self, from: Address, code: Vec<u8>) -> Address {
        match self.tx(from, TxKind::Create, code) {
            ExecutionResult::Success {
                output: Output::Create(_, Some(address)),
                ..
            } => address,
            other => panic!("deployment failed: {other:?}"),
        }
    }

    pub fn call(&mut self, from: Address, to: Address, data: Vec<u8>) -> Outcome {
        let result = self.tx(from, TxKind::Call(to), data);
        let gas = result.tx_gas_used();
        match result {
            ExecutionResult::Success { output, .. } => Outcome {
                ok: true,
                output: output.into_data().to_vec(),
                gas,
            },
            ExecutionResult::Revert { output, .. } => Outcome {
                ok: false,
                output: output.to_vec(),
                gas,
            },
            ExecutionResult::Halt { reason, .. } => panic!("halted: {reason:?}"),
        }
    }

    pub fn balance(&mut self, who: Address) -> u128 {
        let out = self.call(
            self.network,
            self.token,
            RigdPayoutToken::balanceOfCall { account: who }.abi_encode(),
        );
        let v = RigdPayoutToken::balanceOfCall::abi_decode_returns(&out.output).unwrap();
        v.to::<u128>()
    }

    /// `verifyReceipt` of `item` in `batch`, and its gas.
    pub fn verify(
        &mut self,
        item: &ReceiptItem,
        header: &BatchHeader,
        sig: &Signature,
    ) -> (bool, u64) {
        let data = rigd_settlement::verify_receipt_call(&item.receipt, &item.proof, header, &sig.0);
        let out = self.call(self.network, self.settlement, data);
        assert!(out.ok, "verifyReceipt reverted");
        let ok = RigdSettlement::verifyReceiptCall::abi_decode_returns(&out.output).unwrap();
        (ok, out.gas)
    }
}

pub fn eth(a: Address) -> EthAddress {
    EthAddress(a.into_array())
}

pub fn addr(a: EthAddress) -> Address {
    Address::from(a.0)
}

/// A rig's receipt key in one of rigd's own key stores: a software file (secp256k1 or
/// P-256) or a TPM 2.0 (swtpm, P-256).
pub struct RigKey {
    pub store: Box<dyn KeyStore>,
    _tpm: Option<Swtpm>,
    _dir: tempfile::TempDir,
}

impl RigKey {
    /// A new software key on `curve` (`secp256k1` or `p256`).
    pub fn file(curve: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store =
            rigd::keys::open(&format!("file:receipt-key?curve={curve}"), dir.path(), true).unwrap();
        Self {
            store,
            _tpm: None,
            _dir: dir,
        }
    }

    /// A new key created inside a freshly started swtpm.
    pub fn tpm() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("tpm");
        std::fs::create_dir_all(&state).unwrap();
        let tpm = Swtpm::start(&state);
        let store = rigd::keys::open(&format!("tpm:{}", tpm.rest()), dir.path(), false).unwrap();
        Self {
            store,
            _tpm: Some(tpm),
            _dir: dir,
        }
    }

    pub fn public(&self) -> PublicKey {
        self.store.public_key()
    }
}

/// `count` GEMM receipts of `rig` from `first_seq`, each of `work` FLOPs, signed as one
/// batch for `domain`.
pub fn signed_batch(
    rig: &RigId,
    key: &RigKey,
    domain: Domain,
    first_seq: u64,
    count: u64,
    work: u64,
) -> (BatchHeader, Signature, Vec<ReceiptItem>) {
    let items: Vec<(Receipt, UnitOutput)> = (0..count)
        .map(|i| {
            let output = UnitOutput::GemmI8 {
                c_digest: [u8::try_from(i % 251).unwrap(); 32],
            };
            let receipt = Receipt {
                rig: rig.clone(),
                seq: first_seq + i,
                card: GpuUuid::new(format!("GPU-{i}")).unwrap(),
                job: JobId::new("gemm-settle").unwrap(),
                unit: 100 + i,
                attempt: 0,
                work,
                input_digest: [7; 32],
                output_digest: output.digest(),
                started_ms: 1_750_000_000_000 + i,
                finished_ms: 1_750_000_060_000 + i,
                governor_level: 0,
            };
            (receipt, output)
        })
        .collect();
    let receipts: Vec<Receipt> = items.iter().map(|(r, _)| r.clone()).collect();
    let header = BatchHeader::over(rig, domain, &receipts).unwrap();
    let signature = key.store.sign_digest(&header.signing_digest()).unwrap();
    (header, signature, ReceiptItem::with_proofs(items))
}

/// Micro-credits per MFLOP, as the coordinator prices work.
pub const PRICE: u64 = 10;
/// FLOPs per receipt.
pub const WORK: u64 = 2_000_000_000;

/// A registered rig: its id, receipt key and owner.
pub struct Rig {
    pub id: RigId,
    pub key: RigKey,
    pub owner: EthAddress,
}

/// Epoch 0 of `owed`, each rig paid to its owner among `rigs`, built in `ledger` with
/// cutoff `cutoff_ms`, and the epoch's rig tree as the ledger then has it.
pub fn build_epoch_0(
    ledger: &mut Ledger,
    rigs: &[Rig],
    cutoff_ms: u64,
    owed: &BTreeMap<RigId, u64>,
) -> (Epoch, RigTree) {
    let owner_of: BTreeMap<RigId, EthAddress> =
        rigs.iter().map(|r| (r.id.clone(), r.owner)).collect();
    let (epoch, paid) = Epoch::for_rigs(0, owed, |rig| owner_of.get(rig).copied()).unwrap();
    ledger
        .build_epoch(0, cutoff_ms, epoch.root(), &paid, &epoch.payouts)
        .unwrap();
    let tree = RigTree::new(0, &ledger.paid_through(0).unwrap());
    (epoch, tree)
}

/// The three owners' payout addresses.
pub fn owners() -> [EthAddress; 3] {
    [
        EthAddress([0xa1; 20]),
        EthAddress([0xb2; 20]),
        EthAddress([0xc3; 20]),
    ]
}

/// Three secp256k1 rigs and two P-256 rigs (one of them in a TPM) of three owners,
/// registered on `chain`.
pub fn rigs(chain: &mut Chain) -> Vec<Rig> {
    let [a, b, c] = owners();
    let rigs = vec![
        (RigKey::file("secp256k1"), a),
        (RigKey::file("secp256k1"), a),
        (RigKey::file("secp256k1"), b),
        (RigKey::tpm(), b),
        (RigKey::file("p256"), c),
    ];
    rigs.into_iter()
        .enumerate()
        .map(|(i, (key, owner))| {
            let id = RigId::new(format!("rig-{i}")).unwrap();
            let call = rigd_settlement::register_rig(&id, &key.public(), owner).unwrap();
            assert!(chain.call(chain.network, chain.registry, call).ok);
            Rig { id, key, owner }
        })
        .collect()
}
