// SPDX-License-Identifier: MIT
// Generated from contracts/Task.json by ogpu_node.contracts.interfaces: do not edit.

pragma solidity ^0.8.20;

interface ITask {
    struct Terms {
        uint256 maxPayment;
        uint16 councilSize;
        uint16 councilShareBps;
        uint16 checkpoints;
        uint64 segmentWindow;
        uint64 bidWindow;
        uint16 firstN;
        uint16 minBids;
        uint32 latenessBpsPerSecond;
        uint64 confirmWindow;
        uint8 responseMethod;
        uint16 responseWeight;
    }

    event TaskSubmitted(uint256 indexed taskId, address indexed client, bytes32 prescriptionHash, uint8 kind, uint256 maxPayment, uint256 deposit, uint64 bidDeadline);
    event TaskAssigned(uint256 indexed taskId, address indexed executor, uint256 price, bytes32 seed);
    event TaskCancelled(uint256 indexed taskId, uint8 reason, uint256 refund);

    function submitTask(bytes32 prescriptionHash, uint8 kind, Terms memory terms) external payable returns (uint256 taskId);
    function getTask(uint256 taskId) external view returns (address client, uint8 kind, uint8 state, bytes32 prescriptionHash, uint256 escrow, uint256 deposit, address executor, uint256 price, bytes32 seed, uint64 bidDeadline, uint64 assignedAt);
    function getTerms(uint256 taskId) external view returns (Terms memory terms);
    function taskCount() external view returns (uint256 count);
    function pendingDeadlines() external view returns (uint256 count, uint64 nextDue);
}
