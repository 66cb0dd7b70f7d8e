// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// The receipt keys of rigs, written by the network from its provisioner's registry: the key
/// each rig signs its receipt batches with (secp256k1 by its address, P-256 by its point) and
/// the owner it is paid for.
contract RigKeyRegistry is Ownable {
    uint8 public constant SECP256K1 = 1;
    uint8 public constant P256 = 2;

    struct RigKey {
        uint8 curve;
        address signer;
        bytes32 x;
        bytes32 y;
        address owner;
    }

    /// By keccak256 of the rig id.
    mapping(bytes32 => RigKey) private keys;

    event RigKeySet(string rig, uint8 curve, address signer, bytes32 x, bytes32 y, address owner);

    error NoSigner();

    constructor() Ownable(msg.sender) {}

    function setSecp256k1(string calldata rig, address signer, address owner) external onlyOwner {
        if (signer == address(0)) revert NoSigner();
        keys[keccak256(bytes(rig))] = RigKey(SECP256K1, signer, 0, 0, owner);
        emit RigKeySet(rig, SECP256K1, signer, 0, 0, owner);
    }

    function setP256(string calldata rig, bytes32 x, bytes32 y, address owner) external onlyOwner {
        keys[keccak256(bytes(rig))] = RigKey(P256, address(0), x, y, owner);
        emit RigKeySet(rig, P256, address(0), x, y, owner);
    }

    /// The key of the rig whose id hashes to `rig` (curve 0: none).
    function keyOf(bytes32 rig) external view returns (RigKey memory) {
        return keys[rig];
    }
}
