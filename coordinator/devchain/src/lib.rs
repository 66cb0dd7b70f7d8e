//! A local Ethereum dev chain: revm (Osaka rules, P256VERIFY included) behind the handful of
//! JSON-RPC methods a client needs to deploy contracts, send signed transactions and read
//! their receipts and logs. Every transaction is mined at once in a block of its own; state
//! lives in memory. It is what the payout run is tested against and what the demo settles
//! on, and it answers anything malformed with a JSON-RPC error, never a panic.
//!
//! Methods: `eth_chainId`, `net_version`, `eth_blockNumber`, `eth_gasPrice`,
//! `eth_getBalance`, `eth_getTransactionCount`, `eth_getCode`, `eth_call`, `eth_estimateGas`,
//! `eth_sendRawTransaction`, `eth_getTransactionReceipt`, `eth_getLogs`,
//! `eth_getBlockByNumber`, and Anvil's and Hardhat's `evm_increaseTime` (moves the clock of
//! later blocks forward, for tests of time windows).

use alloy_consensus::transaction::SignerRecoverable;
use alloy_consensus::{Transaction, TxEnvelope};
use alloy_eips::eip2718::{Decodable2718, Typed2718};
use alloy_primitives::{keccak256, Address, Bloom, Bytes, Log, TxKind, B256, U256};
use revm::context::result::{ExecutionResult, Output};
use revm::context::{Context, ContextTr, TxEnv};
use revm::database::{CacheDB, EmptyDB};
use revm::database_interface::DatabaseRef;
use revm::handler::{MainnetContext, MainnetEvm};
use revm::primitives::hardfork::SpecId;
use revm::state::AccountInfo;
use revm::{ExecuteCommitEvm, ExecuteEvm, MainBuilder, MainContext};
use serde_json::{json, Value};
use std::collections::HashMap;

/// The gas price the chain asks for (1 gwei); the base fee is 0.
pub const GAS_PRICE: u128 = 1_000_000_000;
/// Each block's gas limit.
pub const BLOCK_GAS_LIMIT: u64 = 30_000_000;
/// The most gas one transaction may take (EIP-7825, in force since Osaka).
pub const TX_GAS_CAP: u64 = 1 << 24;
/// The largest request body taken, bytes.
pub const MAX_REQUEST: usize = 1 << 20;
/// Most calls in one batch request.
pub const MAX_BATCH: usize = 100;

/// A JSON-RPC error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    /// Its code (-32700 parse, -32600 request, -32601 method, -32602 params, -32000 refused,
    /// 3 reverted).
    pub code: i64,
    /// What went wrong.
    pub message: String,
    /// Revert data, for code 3.
    pub data: Option<Bytes>,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }

    fn refused(message: impl Into<String>) -> Self {
        Self::new(-32000, message)
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            e["data"] = json!(data.to_string());
        }
        e
    }
}

struct Mined {
    hash: B256,
    block: u64,
    at_s: u64,
    from: Address,
    to: Option<Address>,
    created: Option<Address>,
    ty: u8,
    success: bool,
    gas_used: u64,
    logs: Vec<Log>,
}

/// The chain: its state, its blocks (one transaction each) and their receipts.
pub struct DevChain {
    evm: MainnetEvm<MainnetContext<CacheDB<EmptyDB>>>,
    chain_id: u64,
    /// Mined transactions in order; block `n` (from 1) holds `mined[n - 1]`.
    mined: Vec<Mined>,
    by_hash: HashMap<B256, usize>,
    genesis_s: u64,
    /// Seconds added to the clock by `evm_increaseTime`.
    offset_s: u64,
}

fn block_hash(n: u64) -> B256 {
    keccak256(n.to_be_bytes())
}

fn qty(n: impl std::fmt::LowerHex) -> Value {
    json!(format!("{n:#x}"))
}

impl DevChain {
    /// A chain `chain_id` whose genesis gives each of `funded` its balance (wei), blocks
    /// stamped from `genesis_s` (Unix seconds) on, one second apart at least.
    pub fn new(chain_id: u64, funded: &[(Address, U256)], genesis_s: u64) -> Self {
        let mut evm = Context::mainnet()
            .modify_cfg_chained(|c| {
                c.set_spec_and_mainnet_gas_params(SpecId::OSAKA);
                c.chain_id = chain_id;
            })
            .modify_block_chained(|b| {
                b.gas_limit = BLOCK_GAS_LIMIT;
                b.basefee = 0;
            })
            .with_db(CacheDB::<EmptyDB>::default())
            .build_mainnet();
        for (address, balance) in funded {
            evm.ctx.db_mut().insert_account_info(
                *address,
                AccountInfo {
                    balance: *balance,
                    ..AccountInfo::default()
                },
            );
        }
        Self {
            evm,
            chain_id,
            mined: Vec::new(),
            by_hash: HashMap::new(),
            genesis_s,
            offset_s: 0,
        }
    }

    /// The number of the latest block (0: genesis).
    pub fn block_number(&self) -> u64 {
        self.mined.len() as u64
    }

    fn account(&self, address: Address) -> AccountInfo {
        self.evm
            .ctx
            .db()
            .basic_ref(address)
            .ok()
            .flatten()
            .unwrap_or_default()
    }

    /// Answers one HTTP body: a JSON-RPC request or a batch of them.
    pub fn answer(&mut self, body: &[u8]) -> Value {
        let request: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return envelope(Value::Null, Err(RpcError::new(-32700, e.to_string()))),
        };
        match request {
            Value::Array(calls) if calls.len() > MAX_BATCH => envelope(
                Value::Null,
                Err(RpcError::new(-32600, format!("over {MAX_BATCH} calls"))),
            ),
            Value::Array(calls) => Value::Array(calls.iter().map(|c| self.one(c)).collect()),
            call => self.one(&call),
        }
    }

    fn one(&mut self, call: &Value) -> Value {
        let id = call.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = call.get("method").and_then(Value::as_str) else {
            return envelope(id, Err(RpcError::new(-32600, "no method")));
        };
        let params = call.get("params").cloned().unwrap_or(json!([]));
        let result = self.call(method, &params);
        if let Err(e) = &result {
            tracing::debug!(method, error = %e, "call refused");
        }
        envelope(id, result)
    }

    /// Runs JSON-RPC method `method` with `params`.
    pub fn call(&mut self, method: &str, params: &Value) -> Result<Value, RpcError> {
        let p = |i: usize| params.get(i).unwrap_or(&Value::Null);
        match method {
            "eth_chainId" => Ok(qty(self.chain_id)),
            "net_version" => Ok(json!(self.chain_id.to_string())),
            "eth_blockNumber" => Ok(qty(self.block_number())),
            "eth_gasPrice" => Ok(qty(GAS_PRICE)),
            "eth_maxPriorityFeePerGas" => Ok(qty(0u8)),
            "eth_getBalance" => Ok(qty(self.account(address(p(0))?).balance)),
            "eth_getTransactionCount" => Ok(qty(self.account(address(p(0))?).nonce)),
            "eth_getCode" => {
                let info = self.account(address(p(0))?);
                let code = match info.code {
                    Some(code) => code.original_bytes(),
                    None => self
                        .evm
                        .ctx
                        .db()
                        .code_by_hash_ref(info.code_hash)
                        .map(|c| c.original_bytes())
                        .unwrap_or_default(),
                };
                Ok(json!(code.to_string()))
            }
            "eth_call" => {
                let (ok, output, _) = self.simulate(p(0))?;
                if ok {
                    Ok(json!(output.to_string()))
                } else {
                    Err(reverted(output))
                }
            }
            "eth_estimateGas" => {
                let (ok, output, gas) = self.simulate(p(0))?;
                if ok {
                    // The 63/64 rule can make a call need more than it used; a margin
                    // covers it, as nodes do.
                    Ok(qty(gas.saturating_add(gas / 4).min(TX_GAS_CAP)))
                } else {
                    Err(reverted(output))
                }
            }
            "eth_sendRawTransaction" => {
                let raw = bytes(p(0))?;
                Ok(json!(self.send_raw(&raw)?.to_string()))
            }
            "eth_getTransactionReceipt" => {
                let hash = b256(p(0))?;
                Ok(self
                    .by_hash
                    .get(&hash)
                    .map_or(Value::Null, |i| self.receipt_json(&self.mined[*i])))
            }
            "eth_getLogs" => self.logs(p(0)),
            "evm_increaseTime" => {
                let secs = p(0)
                    .as_u64()
                    .ok_or_else(|| RpcError::params("evm_increaseTime takes seconds"))?;
                self.offset_s = self
                    .offset_s
                    .checked_add(secs)
                    .ok_or_else(|| RpcError::params("the clock would overflow"))?;
                Ok(json!(self.offset_s))
            }
            "eth_getBlockByNumber" => {
                let n = match p(0).as_str() {
                    Some("latest" | "pending" | "safe" | "finalized") => self.block_number(),
                    Some("earliest") => 0,
                    _ => block_tag(p(0), self.block_number())?,
                };
                Ok(if n > self.block_number() {
                    Value::Null
                } else {
                    self.block_json(n)
                })
            }
            _ => Err(RpcError::new(-32601, format!("no method {method}"))),
        }
    }

    /// Runs a call object against the latest state without keeping anything: (success,
    /// output or revert data, gas used).
    fn simulate(&mut self, call: &Value) -> Result<(bool, Bytes, u64), RpcError> {
        let from = match call.get("from") {
            None | Some(Value::Null) => Address::ZERO,
            Some(v) => address(v)?,
        };
        let kind = match call.get("to") {
            None | Some(Value::Null) => TxKind::Create,
            Some(v) => TxKind::Call(address(v)?),
        };
        let data = match call.get("input").or_else(|| call.get("data")) {
            None | Some(Value::Null) => Bytes::new(),
            Some(v) => bytes(v)?,
        };
        let value = match call.get("value") {
            None | Some(Value::Null) => U256::ZERO,
            Some(v) => u256(v)?,
        };
        let tx = TxEnv::builder()
            .caller(from)
            .kind(kind)
            .data(data)
            .value(value)
            .nonce(self.account(from).nonce)
            .chain_id(Some(self.chain_id))
            .gas_limit(TX_GAS_CAP)
            .gas_price(0)
            .build()
            .map_err(|e| RpcError::params(format!("{e:?}")))?;
        self.stamp_block(self.block_number() + 1);
        let result = self
            .evm
            .transact(tx)
            .map_err(|e| RpcError::refused(e.to_string()))?
            .result;
        let gas = result.tx_gas_used();
        Ok(match result {
            ExecutionResult::Success { output, .. } => (true, output.into_data(), gas),
            ExecutionResult::Revert { output, .. } => (false, output, gas),
            ExecutionResult::Halt { .. } => (false, Bytes::new(), gas),
        })
    }

    /// Sets the block environment for block `n`; returns its timestamp (now, and later than
    /// the block before).
    fn stamp_block(&mut self, n: u64) -> u64 {
        let previous = self.mined.last().map_or(self.genesis_s, |m| m.at_s);
        let now = (rigd_client::unix_ms() / 1000).saturating_add(self.offset_s);
        let at = now.max(previous.saturating_add(1));
        self.evm.ctx.block.number = U256::from(n);
        self.evm.ctx.block.timestamp = U256::from(at);
        at
    }

    /// Takes a signed transaction (EIP-2718 bytes), runs it and mines it in a block of its
    /// own; returns its hash. Refused (nothing mined) when it does not decode, its
    /// signature does not recover, it is for another chain or its nonce or funds are wrong.
    pub fn send_raw(&mut self, raw: &[u8]) -> Result<B256, RpcError> {
        let envelope = TxEnvelope::decode_2718(&mut &raw[..])
            .map_err(|e| RpcError::params(format!("not a transaction: {e}")))?;
        let hash = *envelope.tx_hash();
        if self.by_hash.contains_key(&hash) {
            return Err(RpcError::refused("already known"));
        }
        if envelope.is_eip4844() || envelope.is_eip7702() {
            return Err(RpcError::refused(
                "blob and set-code transactions are not taken",
            ));
        }
        match envelope.chain_id() {
            Some(id) if id == self.chain_id => {}
            other => {
                return Err(RpcError::refused(format!(
                    "signed for chain {other:?}, this is {}",
                    self.chain_id
                )))
            }
        }
        let from = envelope
            .recover_signer()
            .map_err(|e| RpcError::refused(format!("signature: {e}")))?;
        let mut tx = TxEnv::builder()
            .tx_type(Some(envelope.ty()))
            .caller(from)
            .kind(envelope.kind())
            .data(envelope.input().clone())
            .value(envelope.value())
            .nonce(envelope.nonce())
            .chain_id(Some(self.chain_id))
            .gas_limit(envelope.gas_limit())
            .gas_price(envelope.max_fee_per_gas())
            .gas_priority_fee(envelope.max_priority_fee_per_gas());
        if let Some(list) = envelope.access_list() {
            tx = tx.access_list(list.clone());
        }
        let tx = tx.build().map_err(|e| RpcError::params(format!("{e:?}")))?;
        let block = self.block_number() + 1;
        let at_s = self.stamp_block(block);
        let result = self
            .evm
            .transact_commit(tx)
            .map_err(|e| RpcError::refused(e.to_string()))?;
        let gas_used = result.tx_gas_used();
        let (success, logs, created) = match result {
            ExecutionResult::Success { logs, output, .. } => {
                let created = match output {
                    Output::Create(_, address) => address,
                    Output::Call(_) => None,
                };
                (true, logs, created)
            }
            ExecutionResult::Revert { .. } | ExecutionResult::Halt { .. } => {
                (false, Vec::new(), None)
            }
        };
        tracing::info!(%hash, block, %from, success, gas_used, "mined");
        self.by_hash.insert(hash, self.mined.len());
        self.mined.push(Mined {
            hash,
            block,
            at_s,
            from,
            to: envelope.to(),
            created,
            ty: envelope.ty(),
            success,
            gas_used,
            logs,
        });
        Ok(hash)
    }

    fn log_json(&self, m: &Mined, index: usize, log: &Log) -> Value {
        json!({
            "address": log.address.to_string(),
            "topics": log.topics().iter().map(|t| t.to_string()).collect::<Vec<_>>(),
            "data": log.data.data.to_string(),
            "blockHash": block_hash(m.block).to_string(),
            "blockNumber": qty(m.block),
            "transactionHash": m.hash.to_string(),
            "transactionIndex": "0x0",
            "logIndex": qty(index),
            "removed": false,
        })
    }

    fn receipt_json(&self, m: &Mined) -> Value {
        let mut bloom = Bloom::default();
        bloom.accrue_logs(&m.logs);
        json!({
            "type": qty(m.ty),
            "status": if m.success { "0x1" } else { "0x0" },
            "cumulativeGasUsed": qty(m.gas_used),
            "gasUsed": qty(m.gas_used),
            "effectiveGasPrice": qty(GAS_PRICE),
            "logs": m.logs.iter().enumerate().map(|(i, l)| self.log_json(m, i, l)).collect::<Vec<_>>(),
            "logsBloom": bloom.to_string(),
            "transactionHash": m.hash.to_string(),
            "transactionIndex": "0x0",
            "blockHash": block_hash(m.block).to_string(),
            "blockNumber": qty(m.block),
            "from": m.from.to_string(),
            "to": m.to.map(|a| a.to_string()),
            "contractAddress": m.created.map(|a| a.to_string()),
        })
    }

    fn block_json(&self, n: u64) -> Value {
        let txs: Vec<String> = match n.checked_sub(1) {
            Some(i) => vec![self.mined[i as usize].hash.to_string()],
            None => vec![],
        };
        let parent = n.checked_sub(1).map_or(B256::ZERO, block_hash);
        json!({
            "number": qty(n),
            "hash": block_hash(n).to_string(),
            "parentHash": parent.to_string(),
            "timestamp": qty(n.checked_sub(1).map_or(self.genesis_s, |i| self.mined[i as usize].at_s)),
            "gasLimit": qty(BLOCK_GAS_LIMIT),
            "gasUsed": qty(n.checked_sub(1).map_or(0, |i| self.mined[i as usize].gas_used)),
            "baseFeePerGas": "0x0",
            "miner": Address::ZERO.to_string(),
            "difficulty": "0x0",
            "extraData": "0x",
            "logsBloom": Bloom::default().to_string(),
            "transactions": txs,
            "uncles": [],
        })
    }

    /// `eth_getLogs`: by block range (`fromBlock`/`toBlock`), `address` (one or a list) and
    /// `topics` (per position: null, one or a list).
    fn logs(&self, filter: &Value) -> Result<Value, RpcError> {
        let latest = self.block_number();
        let from = match filter.get("fromBlock") {
            None | Some(Value::Null) => latest,
            Some(v) => block_tag(v, latest)?,
        };
        let to = match filter.get("toBlock") {
            None | Some(Value::Null) => latest,
            Some(v) => block_tag(v, latest)?,
        };
        let addresses = match filter.get("address") {
            None | Some(Value::Null) => None,
            Some(Value::Array(list)) => Some(list.iter().map(address).collect::<Result<_, _>>()?),
            Some(v) => Some(vec![address(v)?]),
        };
        let topics: Vec<Option<Vec<B256>>> = match filter.get("topics") {
            None | Some(Value::Null) => vec![],
            Some(Value::Array(list)) => list
                .iter()
                .map(|t| match t {
                    Value::Null => Ok(None),
                    Value::Array(any) => any.iter().map(b256).collect::<Result<_, _>>().map(Some),
                    one => b256(one).map(|t| Some(vec![t])),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(RpcError::params("topics is a list")),
        };
        let mut out = Vec::new();
        for m in self.mined.iter().filter(|m| (from..=to).contains(&m.block)) {
            for (i, log) in m.logs.iter().enumerate() {
                let address_ok = addresses
                    .as_ref()
                    .is_none_or(|a: &Vec<Address>| a.contains(&log.address));
                let topics_ok = topics.iter().enumerate().all(|(k, want)| match want {
                    None => true,
                    Some(any) => log.topics().get(k).is_some_and(|t| any.contains(t)),
                });
                if address_ok && topics_ok {
                    out.push(self.log_json(m, i, log));
                }
            }
        }
        Ok(Value::Array(out))
    }
}

fn envelope(id: Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
        Err(e) => json!({"jsonrpc": "2.0", "id": id, "error": e.to_json()}),
    }
}

fn reverted(output: Bytes) -> RpcError {
    RpcError {
        code: 3,
        message: "execution reverted".into(),
        data: Some(output),
    }
}

fn text(v: &Value) -> Result<&str, RpcError> {
    v.as_str()
        .ok_or_else(|| RpcError::params(format!("expected a hex string, got {v}")))
}

fn address(v: &Value) -> Result<Address, RpcError> {
    text(v)?
        .parse()
        .map_err(|e| RpcError::params(format!("address: {e}")))
}

fn b256(v: &Value) -> Result<B256, RpcError> {
    text(v)?
        .parse()
        .map_err(|e| RpcError::params(format!("hash: {e}")))
}

fn bytes(v: &Value) -> Result<Bytes, RpcError> {
    text(v)?
        .parse()
        .map_err(|e| RpcError::params(format!("bytes: {e}")))
}

fn u256(v: &Value) -> Result<U256, RpcError> {
    let t = text(v)?;
    let digits = t
        .strip_prefix("0x")
        .ok_or_else(|| RpcError::params("a quantity starts with 0x"))?;
    U256::from_str_radix(digits, 16).map_err(|e| RpcError::params(format!("quantity: {e}")))
}

fn block_tag(v: &Value, latest: u64) -> Result<u64, RpcError> {
    match v.as_str() {
        Some("latest" | "pending" | "safe" | "finalized") => Ok(latest),
        Some("earliest") => Ok(0),
        _ => u64::try_from(u256(v)?).map_err(|_| RpcError::params("block number over 64 bits")),
    }
}
