//! The network's account on an Ethereum chain, over JSON-RPC: alloy's provider on a transport
//! of rigd-client's bounded HTTP exchange (every call has a deadline and a cap on the answer).
//! Transactions are signed here (legacy, at the gas price the node asks, gas estimated first,
//! so a call that would revert is refused before anything is signed) and sent raw; receipts
//! are waited for with a deadline.

use alloy_eips::eip2718::Encodable2718;
use alloy_json_rpc::{RequestPacket, ResponsePacket};
use alloy_network::{EthereumWallet, NetworkTransactionBuilder, TransactionBuilder};
use alloy_primitives::{Address, Bytes, TxKind, B256};
use alloy_provider::{Provider, RootProvider};
use alloy_rpc_client::RpcClient;
use alloy_rpc_types_eth::{Filter, Log, TransactionRequest};
use alloy_signer_local::PrivateKeySigner;
use alloy_transport::{TransportError, TransportErrorKind, TransportFut};
use rigd_client::http::{self, Bounds, Url};
use std::path::Path;
use std::task::{Context, Poll};
use std::time::Duration;

/// How long one JSON-RPC exchange may take.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest JSON-RPC answer read, bytes.
pub const MAX_ANSWER: usize = 16 << 20;
/// How often a receipt is asked for while waiting.
const RECEIPT_POLL: Duration = Duration::from_millis(200);

/// What went wrong on the chain.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The node could not be reached or answered with an error.
    #[error("JSON-RPC: {0}")]
    Rpc(#[from] TransportError),
    /// A call or transaction would revert (its revert data, when the node gave it).
    #[error("reverted{}", .0.as_ref().map(|d| format!(" with 0x{}", alloy_primitives::hex::encode(d))).unwrap_or_default())]
    Reverted(Option<Bytes>),
    /// The account's key could not be read.
    #[error("key {path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The node is on another chain than the one asked for.
    #[error("the node is on chain {got}, not {expected}")]
    WrongChain {
        /// The chain asked for.
        expected: u64,
        /// The node's.
        got: u64,
    },
    /// A transaction could not be built or signed.
    #[error("transaction: {0}")]
    Build(String),
    /// No receipt came within the wait.
    #[error("transaction {hash} not mined within {waited:?}")]
    NotMined {
        /// The transaction.
        hash: B256,
        /// How long it was waited for.
        waited: Duration,
    },
}

/// Turns a node's error into [`ChainError::Reverted`] when it is a revert.
fn revert_or(e: TransportError) -> ChainError {
    match e.as_error_resp() {
        Some(payload) if payload.code == 3 || payload.message.contains("revert") => {
            ChainError::Reverted(payload.as_revert_data())
        }
        _ => ChainError::Rpc(e),
    }
}

/// JSON-RPC over one bounded HTTP(S) exchange per request.
#[derive(Debug, Clone)]
struct Http {
    url: Url,
}

impl tower_service::Service<RequestPacket> for Http {
    type Response = ResponsePacket;
    type Error = TransportError;
    type Future = TransportFut<'static>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: RequestPacket) -> Self::Future {
        let url = self.url.clone();
        Box::pin(async move {
            let body = serde_json::to_string(&request).map_err(TransportErrorKind::custom)?;
            let answer = http::exchange(
                &url,
                http::Request {
                    method: "POST",
                    headers: &[],
                    json: Some(&body),
                },
                Bounds {
                    timeout: RPC_TIMEOUT,
                    max_body: MAX_ANSWER,
                    reach: |_| true,
                    agent: "rigd-coordinator",
                },
            )
            .await
            .map_err(TransportErrorKind::custom)?;
            let text = String::from_utf8_lossy(&answer.body);
            if answer.status != 200 {
                return Err(TransportErrorKind::http_error(
                    answer.status,
                    text.into_owned(),
                ));
            }
            serde_json::from_slice(&answer.body).map_err(|e| TransportError::deser_err(e, text))
        })
    }
}

/// A transaction signed and not yet sent.
#[derive(Debug, Clone)]
pub struct SignedTx {
    /// Its hash.
    pub hash: B256,
    /// Its EIP-2718 bytes.
    pub raw: Bytes,
}

/// A mined transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mined {
    /// Its hash.
    pub hash: B256,
    /// Whether it ran to the end (a revert is mined too, and changes nothing).
    pub success: bool,
    /// The block it is in.
    pub block: u64,
    /// The contract it created, if it was a creation.
    pub contract: Option<Address>,
}

/// An account on a chain, reached over JSON-RPC.
pub struct Chain {
    provider: RootProvider,
    wallet: EthereumWallet,
    from: Address,
    chain_id: u64,
    /// Longest wait for a receipt.
    pub receipt_wait: Duration,
}

/// The secp256k1 key in `key_file` (32 bytes, hex).
pub fn read_key(key_file: &Path) -> Result<PrivateKeySigner, ChainError> {
    let key_error = |reason: String| ChainError::Key {
        path: key_file.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(key_file).map_err(|e| key_error(e.to_string()))?;
    text.trim()
        .parse()
        .map_err(|e: alloy_signer_local::LocalSignerError| key_error(e.to_string()))
}

impl Chain {
    /// Connects to the node at `rpc_url` (`http://` or `https://`) as the account whose
    /// secp256k1 key is in `key_file` (32 bytes, hex); when `chain_id` is given the node
    /// must be on that chain.
    pub async fn connect(
        rpc_url: &str,
        key_file: &Path,
        chain_id: Option<u64>,
    ) -> Result<Self, ChainError> {
        let signer = read_key(key_file)?;
        let url = Url::parse(rpc_url).map_err(|e| ChainError::Build(format!("{rpc_url}: {e}")))?;
        let client = RpcClient::new(Http { url }, false);
        let provider = RootProvider::new(client);
        let got = provider.get_chain_id().await?;
        if let Some(expected) = chain_id.filter(|c| *c != got) {
            return Err(ChainError::WrongChain { expected, got });
        }
        Ok(Self {
            provider,
            from: signer.address(),
            wallet: EthereumWallet::from(signer),
            chain_id: got,
            receipt_wait: Duration::from_secs(120),
        })
    }

    /// The account's address.
    pub fn address(&self) -> Address {
        self.from
    }

    /// The chain's id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The latest block's number.
    pub async fn block_number(&self) -> Result<u64, ChainError> {
        Ok(self.provider.get_block_number().await?)
    }

    /// Runs `data` against `to` at the latest block, as the account, changing nothing.
    pub async fn call(&self, to: Address, data: Vec<u8>) -> Result<Bytes, ChainError> {
        let tx = TransactionRequest::default()
            .with_from(self.from)
            .with_to(to)
            .with_input(data);
        self.provider.call(tx).await.map_err(revert_or)
    }

    /// Signs a transaction from the account to `to` (a creation when `None`) with `data`, at
    /// the account's next nonce; refused when the node says it would revert.
    pub async fn sign(&self, to: Option<Address>, data: Vec<u8>) -> Result<SignedTx, ChainError> {
        let kind = to.map_or(TxKind::Create, TxKind::Call);
        let nonce = self
            .provider
            .get_transaction_count(self.from)
            .pending()
            .await?;
        let gas_price = self.provider.get_gas_price().await?;
        let probe = TransactionRequest::default()
            .with_from(self.from)
            .with_kind(kind)
            .with_input(data.clone());
        let gas = self.provider.estimate_gas(probe).await.map_err(revert_or)?;
        let tx = TransactionRequest::default()
            .with_from(self.from)
            .with_kind(kind)
            .with_input(data)
            .with_nonce(nonce)
            .with_chain_id(self.chain_id)
            .with_gas_price(gas_price)
            .with_gas_limit(gas);
        let envelope = tx
            .build(&self.wallet)
            .await
            .map_err(|e| ChainError::Build(e.to_string()))?;
        Ok(SignedTx {
            hash: *envelope.tx_hash(),
            raw: envelope.encoded_2718().into(),
        })
    }

    /// Hands `tx` to the node. One it already holds is not an error.
    pub async fn submit(&self, tx: &SignedTx) -> Result<(), ChainError> {
        match self.provider.send_raw_transaction(&tx.raw).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_error_resp()
                    .is_some_and(|p| p.message.to_lowercase().contains("already known")) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The receipt of `hash`, if it is mined.
    pub async fn mined(&self, hash: B256) -> Result<Option<Mined>, ChainError> {
        let receipt = self.provider.get_transaction_receipt(hash).await?;
        Ok(receipt.map(|r| Mined {
            hash,
            success: r.status(),
            block: r.block_number.unwrap_or_default(),
            contract: r.contract_address,
        }))
    }

    /// Waits (at most [`Chain::receipt_wait`]) until `hash` is mined.
    pub async fn wait(&self, hash: B256) -> Result<Mined, ChainError> {
        let deadline = tokio::time::Instant::now() + self.receipt_wait;
        loop {
            if let Some(mined) = self.mined(hash).await? {
                return Ok(mined);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ChainError::NotMined {
                    hash,
                    waited: self.receipt_wait,
                });
            }
            tokio::time::sleep(RECEIPT_POLL).await;
        }
    }

    /// Signs, sends and waits for a transaction; a revert is an error.
    pub async fn send(&self, to: Option<Address>, data: Vec<u8>) -> Result<Mined, ChainError> {
        let tx = self.sign(to, data).await?;
        self.submit(&tx).await?;
        let mined = self.wait(tx.hash).await?;
        if mined.success {
            Ok(mined)
        } else {
            Err(ChainError::Reverted(None))
        }
    }

    /// The logs `filter` selects.
    pub async fn logs(&self, filter: &Filter) -> Result<Vec<Log>, ChainError> {
        Ok(self.provider.get_logs(filter).await?)
    }
}
