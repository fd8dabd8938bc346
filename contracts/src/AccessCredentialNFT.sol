// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {ERC721} from "@openzeppelin/contracts/token/ERC721/ERC721.sol";
import {ERC721Enumerable} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721Enumerable.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title AccessCredentialNFT
/// @notice One token per VM. Holding the token is holding access: the
/// controller maps the current holder to the VM's login wallet, so a transfer
/// moves access. Each token carries an encrypted payload (connection details
/// under a key only the holder's wallet can re-derive).
/// @dev ABI-compatible with the original BlockHost contract. Token ids count
/// from 0. Callers must take the id of a fresh token from the mint receipt
/// (`CredentialMinted` or ERC-721 `Transfer`, both index it), never from
/// `totalSupply() - 1`, which races with concurrent mints.
contract AccessCredentialNFT is ERC721Enumerable, Ownable {
    event CredentialMinted(uint256 indexed tokenId, address indexed recipient);
    event CredentialUpdated(uint256 indexed tokenId);

    uint256 private _nextTokenId;
    mapping(uint256 => bytes) private _userEncrypted;

    constructor() ERC721("BlockhostAccess", "BHA") Ownable(msg.sender) {}

    /// @notice Mints the next token to `to` with its encrypted payload.
    /// @dev `_mint`, not `_safeMint`: a subscriber that is a contract without
    /// onERC721Received must still receive its credential; a failed mint would
    /// leave a paid-for VM without access.
    function mint(address to, bytes calldata userEncrypted) external onlyOwner returns (uint256 tokenId) {
        tokenId = _nextTokenId++;
        _userEncrypted[tokenId] = userEncrypted;
        _mint(to, tokenId);
        emit CredentialMinted(tokenId, to);
    }

    /// @notice Replaces a token's payload (e.g. when the VM's endpoint moves).
    function updateUserEncrypted(uint256 tokenId, bytes calldata userEncrypted) external onlyOwner {
        _requireOwned(tokenId);
        _userEncrypted[tokenId] = userEncrypted;
        emit CredentialUpdated(tokenId);
    }

    function getUserEncrypted(uint256 tokenId) external view returns (bytes memory) {
        _requireOwned(tokenId);
        return _userEncrypted[tokenId];
    }
}
