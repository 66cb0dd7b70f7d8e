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
        uint256 total;
        uint256 claimed;
        uint64 postedAt;
    }

    bytes32 public constant RECEIPT_TYPEHASH = keccak256(
        "Receipt(string rig,uint64 seq,string card,string job,uint64 unit,uint32 attempt,"
        "uint64 work,bytes32 inputDigest,bytes32 outputDigest,uint64 startedMs,"
        "uint64 finishedMs,uint8 governorLevel)"
    );
    bytes32 public constant BATCH_TYPEHASH =
        keccak256("ReceiptBatch(string rig,uint64 firstSeq,uint32 count,bytes32 root)");

    IERC20 public immutable token;
    RigKeyRegistry public immutable registry;

    /// The number of the next epoch to post.
    uint64 public nextEpoch;
    mapping(uint64 => Epoch) public epochs;
    mapping(uint64 => mapping(address => bool)) public claimed;

    event EpochPosted(uint64 indexed epoch, bytes32 payoutRoot, uint256 total);
    event Claimed(uint64 indexed epoch, address indexed owner, uint256 amount);

    error EpochOutOfOrder(uint64 posted, uint64 expected);
    error EmptyEpoch();
    error NoSuchEpoch(uint64 epoch);
    error AlreadyClaimed(uint64 epoch, address owner);
    error NotInEpoch();
    error OverClaimed(uint64 epoch);

    constructor(IERC20 token_, RigKeyRegistry registry_) Ownable(msg.sender) EIP712("rigd", "1") {
        token = token_;
        registry = registry_;
    }

    /// Posts epoch `epoch` (which must be `nextEpoch`) and pays its `total` in from the sender.
    function postEpoch(uint64 epoch, bytes32 payoutRoot, uint256 total) external onlyOwner {
        if (epoch != nextEpoch) revert EpochOutOfOrder(epoch, nextEpoch);
        if (payoutRoot == bytes32(0)) revert EmptyEpoch();
        nextEpoch = epoch + 1;
        epochs[epoch] = Epoch(payoutRoot, total, 0, uint64(block.timestamp));
        token.safeTransferFrom(msg.sender, address(this), total);
        emit EpochPosted(epoch, payoutRoot, total);
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
