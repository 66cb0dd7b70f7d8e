// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// The payout token of test deployments: an ERC-20 of 6 decimals (one unit is one
/// micro-credit of the ledger) that its owner mints.
contract RigdPayoutToken is ERC20, Ownable {
    constructor() ERC20("rigd test payout", "RIGDT") Ownable(msg.sender) {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
