// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC721} from "@openzeppelin/contracts/token/ERC721/IERC721.sol";
import {IERC721Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ERC721Enumerable} from "@openzeppelin/contracts/token/ERC721/extensions/ERC721Enumerable.sol";

import {AccessCredentialNFT} from "../src/AccessCredentialNFT.sol";
import {TestBase, Vm} from "./utils/TestBase.sol";

/// @dev A contract with no onERC721Received: a smart-contract wallet that
/// must still be able to receive its credential.
contract PlainContract {}

contract AccessCredentialNFTTest is TestBase {
    AccessCredentialNFT internal nft;
    address internal alice = vm.addr(0xA11CE);
    address internal bob = vm.addr(0xB0B);

    bytes32 internal constant TRANSFER_TOPIC = keccak256("Transfer(address,address,uint256)");
    bytes32 internal constant MINTED_TOPIC = keccak256("CredentialMinted(uint256,address)");

    function setUp() public {
        nft = new AccessCredentialNFT();
    }

    function test_metadata() public view {
        vm.assertEq(nft.name(), "BlockhostAccess", "name");
        vm.assertEq(nft.symbol(), "BHA", "symbol");
        vm.assertEq(nft.owner(), address(this), "owner is the deployer");
        vm.assertEq(nft.totalSupply(), 0, "empty");
    }

    function test_supportsInterfaces() public view {
        vm.assertTrue(nft.supportsInterface(0x80ac58cd), "ERC-721");
        vm.assertTrue(nft.supportsInterface(0x5b5e139f), "ERC-721 metadata");
        vm.assertTrue(nft.supportsInterface(0x780e9d63), "ERC-721 enumerable");
        vm.assertTrue(nft.supportsInterface(0x01ffc9a7), "ERC-165");
        vm.assertFalse(nft.supportsInterface(0xffffffff), "never 0xffffffff");
    }

    function test_mint_idsFromZeroWithEvents() public {
        vm.expectEmit(true, true, true, true, address(nft));
        emit IERC721.Transfer(address(0), alice, 0);
        vm.expectEmit(true, true, false, true, address(nft));
        emit AccessCredentialNFT.CredentialMinted(0, alice);
        vm.assertEq(nft.mint(alice, hex"01"), 0, "first id is 0");

        vm.expectEmit(true, true, true, true, address(nft));
        emit IERC721.Transfer(address(0), bob, 1);
        vm.expectEmit(true, true, false, true, address(nft));
        emit AccessCredentialNFT.CredentialMinted(1, bob);
        vm.assertEq(nft.mint(bob, hex"02"), 1, "second id is 1");

        vm.assertEq(nft.ownerOf(0), alice, "owner of 0");
        vm.assertEq(nft.ownerOf(1), bob, "owner of 1");
        vm.assertEq(nft.getUserEncrypted(0), hex"01", "payload 0");
        vm.assertEq(nft.getUserEncrypted(1), hex"02", "payload 1");
        vm.assertEq(nft.totalSupply(), 2, "supply");
    }

    /// @dev The token id of a fresh mint is readable from the receipt alone
    /// (both events index it), so minters never need `totalSupply() - 1`.
    function test_mint_tokenIdInReceiptLogs() public {
        nft.mint(bob, "");
        nft.mint(bob, "");
        vm.recordLogs();
        uint256 id = nft.mint(alice, hex"abcdef");
        Vm.Log[] memory logs = vm.getRecordedLogs();

        vm.assertEq(logs.length, 2, "Transfer + CredentialMinted");
        vm.assertEq(logs[0].emitter, address(nft), "emitter");
        vm.assertEq(logs[0].topics[0], TRANSFER_TOPIC, "Transfer topic");
        vm.assertEq(uint256(logs[0].topics[2]), uint256(uint160(alice)), "Transfer to");
        vm.assertEq(uint256(logs[0].topics[3]), id, "Transfer carries the id");
        vm.assertEq(logs[1].topics[0], MINTED_TOPIC, "CredentialMinted topic");
        vm.assertEq(uint256(logs[1].topics[1]), id, "CredentialMinted carries the id");
        vm.assertEq(uint256(logs[1].topics[2]), uint256(uint160(alice)), "CredentialMinted recipient");
        vm.assertEq(id, 2, "third id");
    }

    function test_mint_ownerOnly() public {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice));
        vm.prank(alice);
        nft.mint(alice, "");
    }

    function test_mint_rejectsZeroRecipient() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InvalidReceiver.selector, address(0)));
        nft.mint(address(0), "");
    }

    function test_mint_toContractWithoutReceiverHook() public {
        PlainContract wallet = new PlainContract();
        uint256 id = nft.mint(address(wallet), hex"aa");
        vm.assertEq(nft.ownerOf(id), address(wallet), "minted without onERC721Received");
    }

    function test_mint_emptyAndLargePayloads() public {
        bytes memory big = new bytes(1024);
        big[1023] = 0x7f;
        nft.mint(alice, "");
        nft.mint(alice, big);
        vm.assertEq(nft.getUserEncrypted(0).length, 0, "empty payload kept");
        vm.assertEq(nft.getUserEncrypted(1), big, "large payload kept");
    }

    function test_updateUserEncrypted() public {
        nft.mint(alice, hex"01");
        vm.expectEmit(true, false, false, true, address(nft));
        emit AccessCredentialNFT.CredentialUpdated(0);
        nft.updateUserEncrypted(0, hex"0202");
        vm.assertEq(nft.getUserEncrypted(0), hex"0202", "replaced");
        vm.assertEq(nft.ownerOf(0), alice, "ownership untouched");
    }

    function test_updateUserEncrypted_errors() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 0));
        nft.updateUserEncrypted(0, hex"01");
        nft.mint(alice, hex"01");
        // Not even the holder may rewrite the payload; only the server (owner).
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, alice));
        vm.prank(alice);
        nft.updateUserEncrypted(0, hex"02");
    }

    function test_getUserEncrypted_missing() public {
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721NonexistentToken.selector, 5));
        nft.getUserEncrypted(5);
    }

    function test_enumeration_followsTransfers() public {
        nft.mint(alice, hex"00");
        nft.mint(bob, hex"01");
        nft.mint(alice, hex"02");
        vm.assertEq(nft.balanceOf(alice), 2, "alice holds 2");
        vm.assertEq(nft.tokenOfOwnerByIndex(alice, 0), 0, "alice #0");
        vm.assertEq(nft.tokenOfOwnerByIndex(alice, 1), 2, "alice #1");
        vm.assertEq(nft.tokenByIndex(1), 1, "global index");

        vm.prank(alice);
        nft.transferFrom(alice, bob, 0);
        vm.assertEq(nft.ownerOf(0), bob, "transferred");
        vm.assertEq(nft.balanceOf(alice), 1, "alice holds 1");
        vm.assertEq(nft.tokenOfOwnerByIndex(alice, 0), 2, "alice's remaining token");
        vm.assertEq(nft.balanceOf(bob), 2, "bob holds 2");
        vm.assertEq(nft.tokenOfOwnerByIndex(bob, 1), 0, "bob received 0");
        vm.assertEq(nft.getUserEncrypted(0), hex"00", "payload travels with the token");
        vm.assertEq(nft.totalSupply(), 3, "supply unchanged");

        vm.expectRevert(abi.encodeWithSelector(ERC721Enumerable.ERC721OutOfBoundsIndex.selector, alice, 1));
        nft.tokenOfOwnerByIndex(alice, 1);
    }

    function test_transfer_byStrangerRefused() public {
        nft.mint(alice, "");
        vm.expectRevert(abi.encodeWithSelector(IERC721Errors.ERC721InsufficientApproval.selector, bob, 0));
        vm.prank(bob);
        nft.transferFrom(alice, bob, 0);
    }
}
