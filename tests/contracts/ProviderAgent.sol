// SPDX-License-Identifier: MIT
// A provider run by a contract: it stakes, registers resources, takes the provider role and bids on
// tasks through the generated interfaces of the native Stake (0x…1000), Bid (0x…1002) and Task
// (0x…1001). Compile from the repository root: solcjs --bin --abi --base-path . tests/contracts/ProviderAgent.sol
pragma solidity ^0.8.20;

import {IStake} from "ogpu_node/contracts/abis/IStake.sol";
import {IBid} from "ogpu_node/contracts/abis/IBid.sol";
import {ITask} from "ogpu_node/contracts/abis/ITask.sol";

contract ProviderAgent {
    IStake public constant STAKE = IStake(0x0000000000000000000000000000000000001000);
    ITask public constant TASK = ITask(0x0000000000000000000000000000000000001001);
    IBid public constant BID = IBid(0x0000000000000000000000000000000000001002);
    uint8 public constant ROLE_PROVIDER = 2;

    address public immutable owner;
    uint256 public bids;

    event Bidding(uint256 indexed taskId, uint256 price, address client);

    constructor() {
        owner = msg.sender;
    }

    modifier onlyOwner() {
        require(msg.sender == owner, "ProviderAgent: not the owner");
        _;
    }

    // Stake returns nothing: Solidity checks Stake's code size (0xfe, one byte) before the call.
    function stake() external payable onlyOwner {
        STAKE.stake{value: msg.value}();
    }

    function register(uint8 deviceKind, uint64 memoryMiB, uint64 throughputScore, string calldata endpoint)
        external
        onlyOwner
    {
        STAKE.registerResources(deviceKind, memoryMiB, throughputScore, endpoint);
    }

    function becomeProvider() external onlyOwner {
        STAKE.setRoles(ROLE_PROVIDER);
    }

    // Reads the task's client through getTask's 11 return values, then bids; a Bid revert bubbles up.
    function bid(uint256 taskId, uint256 price) external onlyOwner {
        address client = clientOf(taskId);
        BID.placeBid(taskId, price);
        bids += 1;
        emit Bidding(taskId, price, client);
    }

    function clientOf(uint256 taskId) public view returns (address client) {
        (client,,,,,,,,,,) = TASK.getTask(taskId);
    }

    // Five of getTask's eleven values, picked by position (the rest skipped), to check the decoding.
    function taskSummary(uint256 taskId)
        external
        view
        returns (address client, uint8 state, uint256 escrow, uint256 deposit, uint64 bidDeadline)
    {
        (client,, state,, escrow, deposit,,,, bidDeadline,) = TASK.getTask(taskId);
    }

    function myStake() external view returns (uint256 staked, uint256 locked, uint8 roles) {
        (staked, locked,,, roles) = STAKE.stakeOf(address(this));
    }
}
