// SPDX-License-Identifier: MIT
// Generated from ogpu_node/contracts/abis/Task.json by ogpu_node.contracts.interfaces: do not edit.

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
        uint8 equivalence;
        uint64 minMemoryMiB;
        uint8 deviceMask;
        bytes32 numericProfile;
    }

    struct StreamTerms {
        uint256 budget;
        uint16 councilSize;
        uint256 pricePerUnit;
        uint8 responseMethod;
        uint16 responseWeight;
        uint32 maxResponseTime;
        uint64 settleWindow;
        uint64 minMemoryMiB;
        uint8 deviceMask;
        bytes32 numericProfile;
    }

    event TaskSubmitted(uint256 indexed taskId, address indexed client, bytes32 prescriptionHash, uint8 kind, uint256 maxPayment, uint256 deposit, uint64 bidDeadline);
    event TaskAssigned(uint256 indexed taskId, address indexed executor, uint256 price, bytes32 seed);
    event TaskCancelled(uint256 indexed taskId, uint8 reason, uint256 refund);
    event CheckpointCommitted(uint256 indexed taskId, uint16 indexed k, bytes32 commitment);
    event CouncilDrawn(uint256 indexed taskId, uint16 indexed k, uint8 round, address[] members, uint64 commitDeadline, uint64 stepIndex);
    event ResultCommitted(uint256 indexed taskId, uint16 indexed k, address indexed member);
    event RevealPhase(uint256 indexed taskId, uint16 indexed k, uint8 round, uint64 revealDeadline);
    event CheckpointRevealed(uint256 indexed taskId, uint16 indexed k, bytes32 checkpointHash);
    event ResultRevealed(uint256 indexed taskId, uint16 indexed k, address indexed member, bool verdict, bytes32 resultHash, bytes32 stepHash);
    event JudgingPhase(uint256 indexed taskId, uint16 indexed k, uint8 round, uint64 judgeDeadline);
    event ResultsJudged(uint256 indexed taskId, uint16 indexed k, address indexed member, bool[] allclose);
    event MemberFoundLazy(uint256 indexed taskId, uint16 indexed k, address indexed member, uint8 round, uint256 penalty);
    event CheckpointAccepted(uint256 indexed taskId, uint16 indexed k, uint256 executorPaid, uint256 councilPaid, uint256 discount);
    event CheckpointRejected(uint256 indexed taskId, uint16 indexed k, address indexed executor, uint256 penalty);
    event CheckpointInconclusive(uint256 indexed taskId, uint16 indexed k, uint8 round);
    event ExecutorReplaced(uint256 indexed taskId, address indexed previous, address indexed executor, uint256 price, uint16 resumeFrom);
    event CheckpointMissed(uint256 indexed taskId, uint16 indexed k, address indexed executor, uint256 penalty);
    event TaskDisputed(uint256 indexed taskId);
    event TaskSettled(uint256 indexed taskId, uint8 outcome, uint256 refund, uint256 paid);
    event FundsBurned(uint256 indexed taskId, uint256 amount);
    event StreamStateChanged(uint256 indexed taskId, uint8 state, uint16 subscribers);
    event TermsUpdated(uint256 indexed taskId, uint32 version, uint256 pricePerUnit, uint8 responseMethod, uint16 responseWeight);
    event RequestKeySet(uint256 indexed taskId, address key);
    event ToppedUp(uint256 indexed taskId, uint256 amount, uint256 escrow);
    event ReceiptSettled(uint256 indexed taskId, address indexed provider, uint32 termsVersion, uint256 units, uint256 amount);

    function submitTask(bytes32 prescriptionHash, uint8 kind, Terms memory terms) external payable returns (uint256 taskId);
    function getTask(uint256 taskId) external view returns (address client, uint8 kind, uint8 state, bytes32 prescriptionHash, uint256 escrow, uint256 deposit, address executor, uint256 price, bytes32 seed, uint64 bidDeadline, uint64 assignedAt);
    function getTerms(uint256 taskId) external view returns (Terms memory terms);
    function taskCount() external view returns (uint256 count);
    function minimumDeposit(uint256 amount) external view returns (uint256 deposit);
    function pendingDeadlines() external view returns (uint256 count, uint64 nextDue);
    function commitCheckpoint(uint256 taskId, uint16 k, bytes32 commitment) external;
    function revealCheckpoint(uint256 taskId, uint16 k, bytes32 checkpointHash) external;
    function commitResult(uint256 taskId, uint16 k, bytes32 commitment) external;
    function revealResult(uint256 taskId, uint16 k, bool verdict, bytes32 resultHash, bytes32 stepHash, bytes32 salt, bool fetched) external;
    function judgeResults(uint256 taskId, uint16 k, bool[] memory allclose) external;
    function confirm(uint256 taskId) external;
    function dispute(uint256 taskId) external;
    function getCheckpoint(uint256 taskId, uint16 k) external view returns (uint8 phase, uint8 round, bytes32 commitment, bytes32 checkpointHash, uint64 phaseEnds, address[] memory council, uint64 stepIndex);
    function getProgress(uint256 taskId) external view returns (uint16 accepted, uint16 committed, uint256 paid, uint64 runStart, uint16 runBase, uint8 generation, uint64 confirmDeadline);
    function submitStream(bytes32 prescriptionHash, StreamTerms memory terms) external payable returns (uint256 taskId);
    function updateTerms(uint256 taskId, uint256 pricePerUnit, uint8 responseMethod, uint16 responseWeight) external returns (uint32 version);
    function setRequestKey(uint256 taskId, address key) external;
    function topUp(uint256 taskId) external payable;
    function reportConsensusFailure(uint256 taskId) external;
    function retract(uint256 taskId) external;
    function settle(uint256 taskId, address provider, uint256 cumulativeUnits, uint32 termsVersion, bytes memory signature) external returns (uint256 paid);
    function getStream(uint256 taskId) external view returns (uint32 termsVersion, uint256 pricePerUnit, uint8 responseMethod, uint16 responseWeight, uint16 subscribers, address requestKey, uint64 closeDeadline);
    function settledUnits(uint256 taskId, address provider, uint32 termsVersion) external view returns (uint256 units);
}
