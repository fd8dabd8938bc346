// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

/// @notice The part of a Uniswap-V2 pair that pricing reads: which tokens it
/// holds and its current reserves (in the same order as token0/token1).
interface IUniswapV2PairLike {
    function token0() external view returns (address);

    function token1() external view returns (address);

    function getReserves() external view returns (uint112 reserve0, uint112 reserve1, uint32 blockTimestampLast);
}
