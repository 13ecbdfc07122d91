// SPDX-License-Identifier: MIT
// Generated from ogpu_node/contracts/abis/Stake.json by ogpu_node.contracts.interfaces: do not edit.

pragma solidity ^0.8.20;

interface IStake {
    event Staked(address indexed account, uint256 amount, uint256 total);
    event UnstakeRequested(address indexed account, uint256 amount, uint64 releaseTime);
    event Withdrawn(address indexed account, uint256 amount);
    event RolesChanged(address indexed account, uint8 roles);
    event ResourcesRegistered(address indexed account, uint8 deviceKind, uint64 memoryMiB, uint64 throughputScore, string endpoint);
    event StakeLocked(address indexed account, uint256 amount, uint256 locked);
    event StakeUnlocked(address indexed account, uint256 amount, uint256 locked);
    event StakeSlashed(address indexed account, uint256 amount, uint256 burned, uint256 rewarded, address beneficiary);
    event RandaoTipSet(address indexed account, bytes32 tip);
    event ProfilesSet(address indexed account, bytes32[] profiles);
    event ValidatorQueued(address indexed account, uint8 status);
    event ValidatorActivated(address indexed account, uint64 epoch);
    event ValidatorExited(address indexed account, uint64 epoch);
    event EpochSettled(uint64 indexed epoch, uint256 minted, uint256 burned);

    function stake() external payable;
    function requestUnstake(uint256 amount) external;
    function withdraw() external returns (uint256 amount);
    function setRoles(uint8 roles) external;
    function registerResources(uint8 deviceKind, uint64 memoryMiB, uint64 throughputScore, string memory endpoint) external;
    function setRandaoTip(bytes32 tip) external;
    function setProfiles(bytes32[] memory profiles) external;
    function stakeOf(address account) external view returns (uint256 staked, uint256 locked, uint256 unbonding, uint64 releaseTime, uint8 roles);
    function freeStake(address account) external view returns (uint256 amount);
    function resourcesOf(address account) external view returns (uint8 deviceKind, uint64 memoryMiB, uint64 throughputScore, string memory endpoint);
    function profilesOf(address account) external view returns (bytes32[] memory profiles);
    function validatorOf(address account) external view returns (bytes32 randaoTip, uint8 status, uint64 activationEpoch, uint64 exitEpoch);
    function validators() external view returns (address[] memory accounts);
    function validatorQueues() external view returns (uint64 epoch, uint256 activations, uint256 exits);
    function providers() external view returns (address[] memory accounts);
    function totalStaked() external view returns (uint256 amount);
    function params() external view returns (uint256 minValidatorStake, uint256 minProviderStake, uint64 unbondingDelay);
}
