// SPDX-License-Identifier: MIT
// Generated from ogpu_node/contracts/abis/Bid.json by ogpu_node.contracts.interfaces: do not edit.

pragma solidity ^0.8.20;

interface IBid {
    event BidPlaced(uint256 indexed taskId, address indexed provider, uint256 price, uint256 collateral);
    event BidsClosed(uint256 indexed taskId, uint256 count);
    event Subscribed(uint256 indexed taskId, address indexed provider, uint256 stake);
    event Unsubscribed(uint256 indexed taskId, address indexed provider);

    function placeBid(uint256 taskId, uint256 price) external;
    function bidsOf(uint256 taskId) external view returns (address[] memory providers, uint256[] memory prices);
    function collateralFor(uint256 taskId, uint256 price) external view returns (uint256 collateral);
    function subscribe(uint256 taskId) external;
    function unsubscribe(uint256 taskId) external;
    function subscribersOf(uint256 taskId) external view returns (address[] memory providers);
}
