// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";
import {P256} from "@openzeppelin/contracts/utils/cryptography/P256.sol";
import {RigKeyRegistry} from "./RigKeyRegistry.sol";

/// Pays rig owners for the work the network credited, one epoch at a time, and checks rig
/// receipts under the keys of the registry in this deployment's EIP-712 domain
/// (`EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)`, name
/// "rigd", version "1").
///
/// The network posts each epoch as the Merkle root of `(epoch, owner, amount)` leaves and the
/// epoch's total, which it pays in; each owner (or anyone for them) claims its amount once with
/// its proof. Epochs are numbered from 0 without gaps, so a payout run that is cut off learns
/// from `nextEpoch` whether its epoch landed before it posts it again. The cost on chain is one
/// post per epoch and one claim per owner, however many receipts the epoch pays.
///
/// Beside the payouts, each epoch commits the Merkle root of `(epoch, keccak256(rig),
/// paidTotal)` leaves: what the network has paid each rig in all, through that epoch. That is
/// what disputes are answered with. The network's statement key signs, in the same domain,
/// `Credit` statements (everything it credited a rig before a time, past the audit window);
/// once a statement is `maturity` seconds old, anyone may open a dispute with it and a batch
/// the rig signed that holds the statement's last receipt. The network has `answerWindow`
/// seconds to show a rig leaf paying at least the statement's total; what it cannot show it
/// paid is then paid to the rig's owner in the registry, from the network's bond. Each
/// statement is disputed once, and what disputes paid a rig counts as paid for every later one.
contract RigdSettlement is Ownable, EIP712 {
    using SafeERC20 for IERC20;

    /// A receipt as rigd signs it (protocol/src/receipt.rs).
    struct Receipt {
        string rig;
        uint64 seq;
        string card;
        string job;
        uint64 unit;
        uint32 attempt;
        uint64 work;
        bytes32 inputDigest;
        bytes32 outputDigest;
        uint64 startedMs;
        uint64 finishedMs;
        uint8 governorLevel;
    }

    /// A signed batch header, less its domain (the domain is this contract's).
    struct Batch {
        string rig;
        uint64 firstSeq;
        uint32 count;
        bytes32 root;
    }

    struct Epoch {
        bytes32 payoutRoot;
        bytes32 rigRoot;
        uint256 total;
        uint256 claimed;
        uint64 postedAt;
    }

    /// The network's statement that all the credit it recorded for `rig` before `beforeMs`
    /// (Unix ms), and kept past its audit window, totals `creditedTotal` (token units); the last
    /// receipt so credited is `lastSeq`.
    struct Credit {
        string rig;
        uint64 lastSeq;
        uint64 beforeMs;
        uint256 creditedTotal;
    }

    /// A dispute, by the digest of its statement; `state` is 0 (none), `OPEN`, `REFUSED` or
    /// `PAID`.
    struct Dispute {
        bytes32 rig;
        uint64 deadline;
        uint8 state;
        uint256 credited;
        uint256 paid;
    }

    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(string rig,uint64 seq,string card,string job,uint64 unit,uint32 attempt,"
        "uint64 work,bytes32 inputDigest,bytes32 outputDigest,uint64 startedMs,"
        "uint64 finishedMs,uint8 governorLevel)"
    );
    bytes32 public constant BATCH_TYPEHASH =
        keccak256("ReceiptBatch(string rig,uint64 firstSeq,uint32 count,bytes32 root)");

    uint8 public constant OPEN = 1;
    uint8 public constant REFUSED = 2;
    uint8 public constant PAID = 3;

    bytes32 public constant CREDIT_TYPEHASH =
        keccak256("Credit(string rig,uint64 lastSeq,uint64 beforeMs,uint256 creditedTotal)");

    IERC20 public immutable token;
    RigKeyRegistry public immutable registry;
    /// The key the network signs credit statements with.
    address public immutable statementSigner;
    /// Seconds after a statement's `beforeMs` before it can be disputed (the network's time to
    /// post an epoch that pays it).
    uint64 public immutable maturity;
    /// Seconds the network has to answer a dispute.
    uint64 public immutable answerWindow;

    /// What the network paid in to make good lost disputes, not yet paid out.
    uint256 public bond;
    /// What disputes paid each rig in all, by keccak256 of the rig id.
    mapping(bytes32 => uint256) public madeGood;
    mapping(bytes32 => Dispute) public disputes;

    /// The number of the next epoch to post.
    uint64 public nextEpoch;
    mapping(uint64 => Epoch) public epochs;
    mapping(uint64 => mapping(address => bool)) public claimed;

    event EpochPosted(uint64 indexed epoch, bytes32 payoutRoot, uint256 total);
    event Claimed(uint64 indexed epoch, address indexed owner, uint256 amount);
    event BondFunded(address indexed from, uint256 amount);
    event DisputeOpened(bytes32 indexed id, string rig, uint256 credited, uint64 deadline);
    event DisputeAnswered(bytes32 indexed id, uint64 epoch, uint256 paidTotal);
    event DisputeRefused(bytes32 indexed id);
    event DisputePaid(bytes32 indexed id, address indexed owner, uint256 amount);

    error EpochOutOfOrder(uint64 posted, uint64 expected);
    error EmptyEpoch();
    error NoSuchEpoch(uint64 epoch);
    error AlreadyClaimed(uint64 epoch, address owner);
    error NotInEpoch();
    error OverClaimed(uint64 epoch);
    error NotTheRigsWork();
    error NotTheNetworksStatement();
    error AlreadyDisputed(bytes32 id);
    error NotDueYet();
    error NothingOwed();
    error NotOpen(bytes32 id);
    error AnswerTooLate(bytes32 id);
    error NoOwner();
    error BondTooSmall(uint256 owed, uint256 bond);

    constructor(
        IERC20 token_,
        RigKeyRegistry registry_,
        address statementSigner_,
        uint64 maturity_,
        uint64 answerWindow_
    ) Ownable(msg.sender) EIP712("rigd", "1") {
        token = token_;
        registry = registry_;
        statementSigner = statementSigner_;
        maturity = maturity_;
        answerWindow = answerWindow_;
    }

    /// Posts epoch `epoch` (which must be `nextEpoch`) with the roots of its owner payouts and
    /// of its rigs' paid totals, and pays its `total` in from the sender.
    function postEpoch(uint64 epoch, bytes32 payoutRoot, bytes32 rigRoot, uint256 total) external onlyOwner {
        if (epoch != nextEpoch) revert EpochOutOfOrder(epoch, nextEpoch);
        if (payoutRoot == bytes32(0)) revert EmptyEpoch();
        nextEpoch = epoch + 1;
        epochs[epoch] = Epoch(payoutRoot, rigRoot, total, 0, uint64(block.timestamp));
        token.safeTransferFrom(msg.sender, address(this), total);
        emit EpochPosted(epoch, payoutRoot, total);
    }

    /// Pays `amount` into the bond that makes good lost disputes.
    function fundBond(uint256 amount) external {
        bond += amount;
        token.safeTransferFrom(msg.sender, address(this), amount);
        emit BondFunded(msg.sender, amount);
    }

    /// The leaf of `owner`'s `amount` in `epoch` (hashed twice, as OpenZeppelin's trees).
    function payoutLeaf(uint64 epoch, address owner, uint256 amount) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(epoch, owner, amount))));
    }

    /// Pays `owner` its `amount` of `epoch`, once, given the leaf's proof.
    function claim(uint64 epoch, address owner, uint256 amount, bytes32[] calldata proof) external {
        Epoch storage e = epochs[epoch];
        if (e.payoutRoot == bytes32(0)) revert NoSuchEpoch(epoch);
        if (claimed[epoch][owner]) revert AlreadyClaimed(epoch, owner);
        if (!MerkleProof.verifyCalldata(proof, e.payoutRoot, payoutLeaf(epoch, owner, amount))) {
            revert NotInEpoch();
        }
        claimed[epoch][owner] = true;
        e.claimed += amount;
        if (e.claimed > e.total) revert OverClaimed(epoch);
        token.safeTransfer(owner, amount);
        emit Claimed(epoch, owner, amount);
    }

    /// The leaf of the rig whose id hashes to `rig`, paid `paidTotal` in all through `epoch`.
    function rigLeaf(uint64 epoch, bytes32 rig, uint256 paidTotal) public pure returns (bytes32) {
        return keccak256(bytes.concat(keccak256(abi.encode(epoch, rig, paidTotal))));
    }

    /// The digest the network's statement key signs for `c`: the dispute's id.
    function creditDigest(Credit calldata c) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(CREDIT_TYPEHASH, keccak256(bytes(c.rig)), c.lastSeq, c.beforeMs, c.creditedTotal))
        );
    }

    /// Opens a dispute of statement `c`, signed by the network's statement key, with the batch
    /// `b` the rig signed that holds the statement's last receipt.
    function openDispute(Credit calldata c, bytes calldata statementSig, Batch calldata b, bytes calldata rigSig)
        external
        returns (bytes32 id)
    {
        bytes32 rig = keccak256(bytes(c.rig));
        if (rig != keccak256(bytes(b.rig)) || c.lastSeq < b.firstSeq || c.lastSeq - b.firstSeq >= b.count) {
            revert NotTheRigsWork();
        }
        if (!signedByRig(b, rigSig)) revert NotTheRigsWork();
        id = creditDigest(c);
        (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(id, statementSig);
        if (err != ECDSA.RecoverError.NoError || signer != statementSigner) revert NotTheNetworksStatement();
        if (disputes[id].state != 0) revert AlreadyDisputed(id);
        if (uint256(c.beforeMs) + uint256(maturity) * 1000 > block.timestamp * 1000) revert NotDueYet();
        if (c.creditedTotal <= madeGood[rig]) revert NothingOwed();
        uint64 deadline = uint64(block.timestamp) + answerWindow;
        disputes[id] = Dispute(rig, deadline, OPEN, c.creditedTotal, 0);
        emit DisputeOpened(id, c.rig, c.creditedTotal, deadline);
    }

    /// Answers open dispute `id` with the rig's leaf in `epoch`: what it shows the network
    /// paid counts against the statement, and a leaf paying all of it refuses the dispute.
    function answerDispute(bytes32 id, uint64 epoch, uint256 paidTotal, bytes32[] calldata proof) external {
        Dispute storage d = disputes[id];
        if (d.state != OPEN) revert NotOpen(id);
        if (block.timestamp > d.deadline) revert AnswerTooLate(id);
        Epoch storage e = epochs[epoch];
        if (e.payoutRoot == bytes32(0)) revert NoSuchEpoch(epoch);
        if (!MerkleProof.verifyCalldata(proof, e.rigRoot, rigLeaf(epoch, d.rig, paidTotal))) revert NotInEpoch();
        if (paidTotal > d.paid) d.paid = paidTotal;
        emit DisputeAnswered(id, epoch, paidTotal);
        if (d.paid + madeGood[d.rig] >= d.credited) {
            d.state = REFUSED;
            emit DisputeRefused(id);
        }
    }

    /// Settles dispute `id` once its answer window has passed: what the statement credited
    /// beyond what the network showed it paid and what disputes already paid goes to the rig's
    /// owner from the bond.
    function settleDispute(bytes32 id) external {
        Dispute storage d = disputes[id];
        if (d.state != OPEN) revert NotOpen(id);
        if (block.timestamp <= d.deadline) revert NotDueYet();
        uint256 covered = d.paid + madeGood[d.rig];
        if (covered >= d.credited) {
            d.state = REFUSED;
            emit DisputeRefused(id);
            return;
        }
        uint256 owed = d.credited - covered;
        address owner = registry.keyOf(d.rig).owner;
        if (owner == address(0)) revert NoOwner();
        if (owed > bond) revert BondTooSmall(owed, bond);
        bond -= owed;
        madeGood[d.rig] += owed;
        d.state = PAID;
        token.safeTransfer(owner, owed);
        emit DisputePaid(id, owner, owed);
    }

    /// hashStruct(Receipt): the receipt's Merkle leaf. Two abi.encode halves of static words
    /// concatenated equal one abi.encode (and keep the stack shallow).
    function receiptLeaf(Receipt calldata r) public pure returns (bytes32) {
        return keccak256(
            bytes.concat(
                abi.encode(
                    RECEIPT_TYPEHASH,
                    keccak256(bytes(r.rig)),
                    r.seq,
                    keccak256(bytes(r.card)),
                    keccak256(bytes(r.job)),
                    r.unit,
                    r.attempt
                ),
                abi.encode(r.work, r.inputDigest, r.outputDigest, r.startedMs, r.finishedMs, r.governorLevel)
            )
        );
    }

    /// The digest the rig signed for `b` in this deployment's domain.
    function batchDigest(Batch calldata b) public view returns (bytes32) {
        return _hashTypedDataV4(
            keccak256(abi.encode(BATCH_TYPEHASH, keccak256(bytes(b.rig)), b.firstSeq, b.count, b.root))
        );
    }

    /// Whether `signature` over `b` is by the key the registry holds for `b.rig`: secp256k1
    /// as r‖s‖v with low s, P-256 as r‖s with low s (the P256VERIFY precompile where the chain
    /// has one, OpenZeppelin's Solidity verifier elsewhere).
    function signedByRig(Batch calldata b, bytes calldata signature) public view returns (bool) {
        RigKeyRegistry.RigKey memory k = registry.keyOf(keccak256(bytes(b.rig)));
        bytes32 digest = batchDigest(b);
        if (k.curve == 1) {
            (address signer, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
            return err == ECDSA.RecoverError.NoError && signer == k.signer;
        }
        if (k.curve == 2 && signature.length == 64) {
            return P256.verify(digest, bytes32(signature[0:32]), bytes32(signature[32:64]), k.x, k.y);
        }
        return false;
    }

    /// Whether `r` is a receipt of the batch `b` (its rig, within its sequence numbers, and in
    /// its root by `proof`) and `b` is signed by the rig's registered key.
    function verifyReceipt(Receipt calldata r, bytes32[] calldata proof, Batch calldata b, bytes calldata signature)
        external
        view
        returns (bool)
    {
        if (keccak256(bytes(r.rig)) != keccak256(bytes(b.rig))) return false;
        if (r.seq < b.firstSeq || r.seq - b.firstSeq >= b.count) return false;
        if (!MerkleProof.verifyCalldata(proof, b.root, receiptLeaf(r))) return false;
        return signedByRig(b, signature);
    }
}
