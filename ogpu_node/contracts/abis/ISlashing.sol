// SPDX-License-Identifier: MIT
// Generated from ogpu_node/contracts/abis/Slashing.json by ogpu_node.contracts.interfaces: do not edit.

pragma solidity ^0.8.20;

interface ISlashing {
    event ConsensusOffence(address indexed offender, uint8 indexed kind, bytes32 evidenceId, uint256 penalty, address reporter);
    event ComputationPenalty(address indexed offender, uint256 indexed taskId, uint8 kind, uint256 penalty, address beneficiary);
    event StreamFault(uint256 indexed taskId, bytes32 indexed requestId, address indexed offender, uint256 amount, address reporter);

    function reportDoubleProposal(bytes memory first, bytes memory second) external returns (uint256 penalty);
    function reportDoubleVote(bytes memory first, bytes memory second) external returns (uint256 penalty);
    function reportSurroundVote(bytes memory surrounding, bytes memory surrounded) external returns (uint256 penalty);
    function reportStreamFault(bytes memory request, bytes memory response, bytes[] memory verdicts) external returns (uint256 penalty);
    function isPunished(bytes32 evidenceId) external view returns (bool punished);
    function params() external view returns (uint16 reporterShareBps, uint16 consensusPenaltyBps);
}
