// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20Errors} from "@openzeppelin/contracts/interfaces/draft-IERC6093.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {BlockhostSubscriptions} from "../src/BlockhostSubscriptions.sol";
import {MockERC20} from "../src/mocks/MockERC20.sol";
import {MockUniswapV2Pair} from "../src/mocks/MockUniswapV2Pair.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @dev A token that calls back into the subscriptions contract while it is
/// being pulled, to prove the purchase paths are guarded against reentrancy.
contract ReenteringToken is MockERC20 {
    BlockhostSubscriptions private immutable target;
    bool private armed;

    constructor(BlockhostSubscriptions target_) MockERC20("Evil", "EVL", 6) {
        target = target_;
    }

    function arm() external {
        armed = true;
    }

    function transferFrom(address from, address to, uint256 value) public override returns (bool) {
        if (armed) {
            armed = false;
            target.buySubscription(1, 1, 1, "");
        }
        return super.transferFrom(from, to, value);
    }
}

/// @notice Plans, payment methods, buying, extending, cancelling, withdrawing
/// and access control. Pricing arithmetic lives in Pricing.t.sol.
contract BlockhostSubscriptionsTest is TestBase {
    BlockhostSubscriptions internal subs;
    MockERC20 internal usdc;
    MockERC20 internal dai;
    MockERC20 internal weth;
    MockUniswapV2Pair internal wethUsdc;

    address internal alice = vm.addr(0xA11CE);
    address internal bob = vm.addr(0xB0B);
    address internal treasury = vm.addr(0x7EA5);

    uint256 internal constant START = 1_750_000_000;
    uint256 internal constant PRICE = 150; // $1.50 per day

    function setUp() public {
        vm.warp(START);
        subs = new BlockhostSubscriptions();
        usdc = new MockERC20("USD Coin", "USDC", 6);
        dai = new MockERC20("Dai", "DAI", 18);
        weth = new MockERC20("Wrapped Ether", "WETH", 18);
        wethUsdc = new MockUniswapV2Pair(address(weth), address(usdc));
        // 100 WETH against 300,000 USDC: 1 WETH = $3,000.
        wethUsdc.setReserves(100e18, 300_000e6);
        vm.label(alice, "alice");
        vm.label(bob, "bob");

        usdc.mint(alice, 1_000_000e6);
        usdc.mint(bob, 1_000_000e6);
        weth.mint(alice, 1_000e18);
        vm.prank(alice);
        usdc.approve(address(subs), type(uint256).max);
        vm.prank(bob);
        usdc.approve(address(subs), type(uint256).max);
        vm.prank(alice);
        weth.approve(address(subs), type(uint256).max);
    }

    /// @dev Primary stablecoin set and one $1.50/day plan: the common start.
    function _configure() internal returns (uint256 planId) {
        subs.setPrimaryStablecoin(address(usdc));
        planId = subs.createPlan("basic", PRICE);
    }

    function _buy(address who, uint256 days_) internal returns (uint256) {
        vm.prank(who);
        return subs.buySubscription(1, days_, 1, hex"c0ffee");
    }

    function _expectOwnerOnly(address caller) internal {
        vm.expectRevert(abi.encodeWithSelector(Ownable.OwnableUnauthorizedAccount.selector, caller));
        vm.prank(caller);
    }

    // ---------------------------------------------------------------- setup

    function test_constructor_defaults() public view {
        vm.assertEq(subs.owner(), address(this), "owner is the deployer");
        vm.assertEq(subs.slippageBps(), 100, "default slippage 1%");
        vm.assertEq(subs.minLiquidity(), 100_000, "default min liquidity $1,000");
        vm.assertEq(subs.getTotalPlanCount(), 0, "no plans");
        vm.assertEq(subs.getTotalSubscriptionCount(), 0, "no subscriptions");
        vm.assertEq(subs.getPrimaryStablecoin(), address(0), "no primary stablecoin");
        vm.assertEq(subs.getPaymentMethodIds().length, 0, "no payment methods");
    }

    // ------------------------------------------------------ primary stablecoin

    function test_setPrimaryStablecoin_createsMethodOne() public {
        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PrimaryStablecoinSet(address(usdc), 6);
        subs.setPrimaryStablecoin(address(usdc));

        vm.assertEq(subs.getPrimaryStablecoin(), address(usdc), "primary");
        vm.assertEq(subs.getPaymentMethodIds(), uintArray(1), "method 1 listed");
        (address token, address pair, address stable, uint8 td, uint8 sd, bool active) = subs.getPaymentMethod(1);
        vm.assertEq(token, address(usdc), "token");
        vm.assertEq(pair, address(0), "no pair");
        vm.assertEq(stable, address(usdc), "stablecoin");
        vm.assertEq(uint256(td), 6, "token decimals");
        vm.assertEq(uint256(sd), 6, "stablecoin decimals");
        vm.assertTrue(active, "active");
    }

    function test_setPrimaryStablecoin_replaceKeepsActiveFlag() public {
        subs.setPrimaryStablecoin(address(usdc));
        subs.updatePaymentMethod(1, false);

        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PrimaryStablecoinSet(address(dai), 18);
        subs.setPrimaryStablecoin(address(dai));

        (address token,,, uint8 td, uint8 sd, bool active) = subs.getPaymentMethod(1);
        vm.assertEq(token, address(dai), "replaced");
        vm.assertEq(uint256(td), 18, "new decimals");
        vm.assertEq(uint256(sd), 18, "new decimals");
        vm.assertFalse(active, "still inactive");
        vm.assertEq(subs.getPaymentMethodIds(), uintArray(1), "method 1 listed once");
    }

    function test_setPrimaryStablecoin_rejectsZero() public {
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.setPrimaryStablecoin(address(0));
    }

    function test_setPrimaryStablecoin_ownerOnly() public {
        _expectOwnerOnly(alice);
        subs.setPrimaryStablecoin(address(usdc));
    }

    function test_primaryMethod_beforeSet() public {
        vm.expectRevert(BlockhostSubscriptions.PrimaryStablecoinNotSet.selector);
        subs.getPaymentMethod(1);
        vm.expectRevert(BlockhostSubscriptions.PrimaryStablecoinNotSet.selector);
        subs.updatePaymentMethod(1, false);
        vm.expectRevert(BlockhostSubscriptions.PrimaryStablecoinNotSet.selector);
        subs.getTokenPriceUsdCents(1);
        subs.createPlan("basic", PRICE);
        vm.expectRevert(BlockhostSubscriptions.PrimaryStablecoinNotSet.selector);
        subs.calculatePayment(1, 1, 1);
        vm.expectRevert(BlockhostSubscriptions.PrimaryStablecoinNotSet.selector);
        _buy(alice, 1);
    }

    // ------------------------------------------------------------------ plans

    function test_createPlan_idsFromOne() public {
        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PlanCreated(1, "basic", 150);
        vm.assertEq(subs.createPlan("basic", 150), 1, "first plan id");

        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PlanCreated(2, "large", 900);
        vm.assertEq(subs.createPlan("large", 900), 2, "second plan id");

        vm.assertEq(subs.getTotalPlanCount(), 2, "count");
        (string memory name, uint256 price, bool active) = subs.getPlan(2);
        vm.assertEq(name, "large", "name");
        vm.assertEq(price, 900, "price");
        vm.assertTrue(active, "new plans are active");
    }

    function test_createPlan_rejectsZeroPrice() public {
        vm.expectRevert(BlockhostSubscriptions.PlanPriceMustBePositive.selector);
        subs.createPlan("free", 0);
    }

    function test_createPlan_ownerOnly() public {
        _expectOwnerOnly(alice);
        subs.createPlan("basic", 1);
    }

    function test_updatePlan() public {
        subs.createPlan("basic", 150);
        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PlanUpdated(1, "basic-v2", 175, false);
        subs.updatePlan(1, "basic-v2", 175, false);

        (string memory name, uint256 price, bool active) = subs.getPlan(1);
        vm.assertEq(name, "basic-v2", "name");
        vm.assertEq(price, 175, "price");
        vm.assertFalse(active, "deactivated");
    }

    function test_updatePlan_errors() public {
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.updatePlan(1, "x", 1, true);
        subs.createPlan("basic", 150);
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.updatePlan(0, "x", 1, true);
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.updatePlan(2, "x", 1, true);
        vm.expectRevert(BlockhostSubscriptions.PlanPriceMustBePositive.selector);
        subs.updatePlan(1, "x", 0, true);
        _expectOwnerOnly(bob);
        subs.updatePlan(1, "x", 1, true);
    }

    function test_getPlan_missing() public {
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.getPlan(0);
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.getPlan(1);
    }

    // -------------------------------------------------------- payment methods

    function test_addPaymentMethod_idsFromTwo() public {
        // Id 1 stays reserved for the primary stablecoin even when a pair
        // method comes first.
        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PaymentMethodAdded(2, address(weth), address(wethUsdc), address(usdc));
        vm.assertEq(subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc)), 2, "first pair id");
        vm.assertEq(subs.getPaymentMethodIds(), uintArray(2), "only the pair method");

        MockUniswapV2Pair reversed = new MockUniswapV2Pair(address(dai), address(weth));
        vm.assertEq(subs.addPaymentMethod(address(weth), address(reversed), address(dai)), 3, "second pair id");

        subs.setPrimaryStablecoin(address(usdc));
        vm.assertEq(subs.getPaymentMethodIds(), uintArray(1, 2, 3), "primary first, ascending");

        (address token, address pair, address stable, uint8 td, uint8 sd, bool active) = subs.getPaymentMethod(2);
        vm.assertEq(token, address(weth), "token");
        vm.assertEq(pair, address(wethUsdc), "pair");
        vm.assertEq(stable, address(usdc), "stablecoin");
        vm.assertEq(uint256(td), 18, "token decimals");
        vm.assertEq(uint256(sd), 6, "stablecoin decimals");
        vm.assertTrue(active, "active");
    }

    function test_addPaymentMethod_rejectsZeroAddresses() public {
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.addPaymentMethod(address(0), address(wethUsdc), address(usdc));
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.addPaymentMethod(address(weth), address(0), address(usdc));
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(0));
    }

    function test_addPaymentMethod_rejectsForeignPair() public {
        vm.expectRevert(BlockhostSubscriptions.TokenNotInPair.selector);
        subs.addPaymentMethod(address(dai), address(wethUsdc), address(usdc));
        vm.expectRevert(BlockhostSubscriptions.TokenNotInPair.selector);
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(dai));
        MockUniswapV2Pair same = new MockUniswapV2Pair(address(usdc), address(usdc));
        vm.expectRevert(BlockhostSubscriptions.TokenNotInPair.selector);
        subs.addPaymentMethod(address(weth), address(same), address(usdc));
    }

    function test_addPaymentMethod_ownerOnly() public {
        _expectOwnerOnly(alice);
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc));
    }

    function test_updatePaymentMethod() public {
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc));
        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PaymentMethodUpdated(2, false);
        subs.updatePaymentMethod(2, false);
        (,,,,, bool active) = subs.getPaymentMethod(2);
        vm.assertFalse(active, "deactivated");
        vm.assertEq(subs.getPaymentMethodIds(), uintArray(2), "inactive methods stay listed");

        vm.expectEmit(true, false, false, true, address(subs));
        emit BlockhostSubscriptions.PaymentMethodUpdated(2, true);
        subs.updatePaymentMethod(2, true);
        (,,,,, active) = subs.getPaymentMethod(2);
        vm.assertTrue(active, "reactivated");
    }

    function test_updatePaymentMethod_errors() public {
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.updatePaymentMethod(2, false);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.updatePaymentMethod(0, false);
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc));
        _expectOwnerOnly(alice);
        subs.updatePaymentMethod(2, false);
    }

    function test_getPaymentMethod_missing() public {
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.getPaymentMethod(0);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.getPaymentMethod(7);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.getTokenPriceUsdCents(7);
    }

    // ------------------------------------------------------------ parameters

    function test_setSlippageBps() public {
        subs.setSlippageBps(0);
        vm.assertEq(subs.slippageBps(), 0, "zero allowed");
        subs.setSlippageBps(1000);
        vm.assertEq(subs.slippageBps(), 1000, "max allowed");
        vm.expectRevert(BlockhostSubscriptions.SlippageTooHigh.selector);
        subs.setSlippageBps(1001);
        _expectOwnerOnly(alice);
        subs.setSlippageBps(5);
    }

    function test_setMinLiquidity() public {
        subs.setMinLiquidity(42);
        vm.assertEq(subs.minLiquidity(), 42, "set");
        subs.setMinLiquidity(0);
        vm.assertEq(subs.minLiquidity(), 0, "zero disables the floor");
        _expectOwnerOnly(alice);
        subs.setMinLiquidity(1);
    }

    // ----------------------------------------------------------------- buying

    function test_buy_withPrimaryStablecoin() public {
        _configure();
        uint256 expiresAt = START + 30 days;
        uint256 amount = 45e6; // 150 cents * 30 days = $45.00

        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionCreated(1, 1, alice, expiresAt, amount, address(usdc), hex"c0ffee");
        uint256 id = _buy(alice, 30);

        vm.assertEq(id, 1, "ids from 1");
        vm.assertEq(usdc.balanceOf(address(subs)), amount, "contract paid");
        vm.assertEq(usdc.balanceOf(alice), 1_000_000e6 - amount, "buyer charged");
        (uint256 planId, address subscriber, uint256 exp, bool isActive, bool cancelled) = subs.getSubscription(1);
        vm.assertEq(planId, 1, "plan");
        vm.assertEq(subscriber, alice, "subscriber");
        vm.assertEq(exp, expiresAt, "expiresAt = now + days");
        vm.assertTrue(isActive, "active");
        vm.assertFalse(cancelled, "not cancelled");
        vm.assertTrue(subs.isSubscriptionActive(1), "isSubscriptionActive");
        vm.assertEq(subs.daysRemaining(1), 30, "30 days left");
        vm.assertEq(subs.getTotalSubscriptionCount(), 1, "count");
        vm.assertEq(subs.getSubscriptionsBySubscriber(alice), uintArray(1), "alice's list");
    }

    function test_buy_withPairToken() public {
        _configure();
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc));
        // $45 at $3,000/WETH = 0.015 WETH, plus 1% slippage.
        uint256 amount = 0.01515e18;
        vm.assertEq(subs.calculatePayment(1, 30, 2), amount, "quote");

        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionCreated(1, 1, alice, START + 30 days, amount, address(weth), "");
        vm.prank(alice);
        subs.buySubscription(1, 30, 2, "");
        vm.assertEq(weth.balanceOf(address(subs)), amount, "paid in WETH");
    }

    function test_buy_idsAndListsPerSubscriber() public {
        _configure();
        vm.assertEq(_buy(alice, 1), 1, "first");
        vm.assertEq(_buy(bob, 2), 2, "second");
        vm.assertEq(_buy(alice, 3), 3, "third");
        vm.assertEq(subs.getSubscriptionsBySubscriber(alice), uintArray(1, 3), "alice");
        vm.assertEq(subs.getSubscriptionsBySubscriber(bob), uintArray(2), "bob");
        vm.assertEq(subs.getSubscriptionsBySubscriber(treasury).length, 0, "nobody");
        vm.assertEq(subs.getTotalSubscriptionCount(), 3, "count");
    }

    function test_buy_errors() public {
        _configure();
        vm.startPrank(alice);
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.buySubscription(0, 1, 1, "");
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.buySubscription(2, 1, 1, "");
        vm.expectRevert(BlockhostSubscriptions.DaysMustBePositive.selector);
        subs.buySubscription(1, 0, 1, "");
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.buySubscription(1, 1, 2, "");
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.buySubscription(1, 1, 0, "");
        vm.stopPrank();

        subs.updatePaymentMethod(1, false);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotActive.selector);
        _buy(alice, 1);
        subs.updatePaymentMethod(1, true);

        subs.updatePlan(1, "basic", PRICE, false);
        vm.expectRevert(BlockhostSubscriptions.PlanNotActive.selector);
        _buy(alice, 1);
        vm.assertEq(subs.getTotalSubscriptionCount(), 0, "nothing bought");
    }

    function test_buy_needsAllowanceAndBalance() public {
        _configure();
        address carol = vm.addr(0xCA201);
        usdc.mint(carol, 10e6);
        vm.expectRevert(
            abi.encodeWithSelector(IERC20Errors.ERC20InsufficientAllowance.selector, address(subs), 0, 1.5e6)
        );
        _buy(carol, 1);

        vm.prank(carol);
        usdc.approve(address(subs), type(uint256).max);
        vm.expectRevert(abi.encodeWithSelector(IERC20Errors.ERC20InsufficientBalance.selector, carol, 10e6, 15e6));
        _buy(carol, 10);
    }

    function test_buy_rejectsReentrancy() public {
        ReenteringToken evil = new ReenteringToken(subs);
        subs.setPrimaryStablecoin(address(evil));
        subs.createPlan("basic", PRICE);
        evil.mint(alice, 100e6);
        vm.prank(alice);
        evil.approve(address(subs), type(uint256).max);
        evil.arm();
        vm.expectRevert(ReentrancyGuard.ReentrancyGuardReentrantCall.selector);
        _buy(alice, 1);
    }

    // -------------------------------------------------------------- extending

    function test_extend_activeAddsToExpiry() public {
        _configure();
        _buy(alice, 30);
        vm.warp(START + 10 days);

        uint256 newExpiry = START + 30 days + 5 days;
        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionExtended(1, 1, alice, newExpiry, 7.5e6, address(usdc));
        vm.prank(alice);
        subs.extendSubscription(1, 5, 1);

        (,, uint256 exp,,) = subs.getSubscription(1);
        vm.assertEq(exp, newExpiry, "added to the old expiry");
        vm.assertEq(subs.daysRemaining(1), 25, "20 + 5 days left");
    }

    function test_extend_lapsedRestartsFromNow() public {
        _configure();
        _buy(alice, 30);
        uint256 later = START + 45 days;
        vm.warp(later);
        vm.assertFalse(subs.isSubscriptionActive(1), "lapsed");

        vm.prank(alice);
        subs.extendSubscription(1, 7, 1);
        (,, uint256 exp, bool isActive,) = subs.getSubscription(1);
        vm.assertEq(exp, later + 7 days, "from now, not from the old expiry");
        vm.assertTrue(isActive, "active again");
    }

    function test_extend_giftingByAnyone() public {
        _configure();
        _buy(alice, 1);
        uint256 bobBefore = usdc.balanceOf(bob);

        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionExtended(1, 1, bob, START + 3 days, 3e6, address(usdc));
        vm.prank(bob);
        subs.extendSubscription(1, 2, 1);

        vm.assertEq(usdc.balanceOf(bob), bobBefore - 3e6, "the gifter pays");
        (, address subscriber,,,) = subs.getSubscription(1);
        vm.assertEq(subscriber, alice, "the subscription stays alice's");
        vm.assertEq(subs.getSubscriptionsBySubscriber(bob).length, 0, "bob owns nothing");
    }

    function test_extend_withPairToken() public {
        _configure();
        subs.addPaymentMethod(address(weth), address(wethUsdc), address(usdc));
        _buy(alice, 1);
        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionExtended(1, 1, alice, START + 31 days, 0.01515e18, address(weth));
        vm.prank(alice);
        subs.extendSubscription(1, 30, 2);
    }

    function test_extend_errors() public {
        _configure();
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.extendSubscription(1, 1, 1);
        _buy(alice, 1);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.extendSubscription(0, 1, 1);
        vm.startPrank(alice);
        vm.expectRevert(BlockhostSubscriptions.DaysMustBePositive.selector);
        subs.extendSubscription(1, 0, 1);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.extendSubscription(1, 1, 9);
        vm.stopPrank();

        subs.updatePaymentMethod(1, false);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotActive.selector);
        vm.prank(alice);
        subs.extendSubscription(1, 1, 1);
        subs.updatePaymentMethod(1, true);

        subs.updatePlan(1, "basic", PRICE, false);
        vm.expectRevert(BlockhostSubscriptions.PlanNotActive.selector);
        vm.prank(alice);
        subs.extendSubscription(1, 1, 1);
        subs.updatePlan(1, "basic", PRICE, true);

        subs.cancelSubscription(1);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionAlreadyCancelled.selector);
        vm.prank(alice);
        subs.extendSubscription(1, 1, 1);
    }

    // ------------------------------------------------------------- cancelling

    function test_cancel() public {
        _configure();
        _buy(alice, 30);
        vm.warp(START + 3 days);

        vm.expectEmit(true, true, true, true, address(subs));
        emit BlockhostSubscriptions.SubscriptionCancelled(1, 1, alice);
        subs.cancelSubscription(1);

        (,, uint256 exp, bool isActive, bool cancelled) = subs.getSubscription(1);
        vm.assertEq(exp, START + 3 days, "expiresAt = now");
        vm.assertFalse(isActive, "inactive");
        vm.assertTrue(cancelled, "cancelled");
        vm.assertEq(subs.daysRemaining(1), 0, "no days left");
        vm.assertEq(usdc.balanceOf(address(subs)), 45e6, "no refund");
    }

    function test_cancel_errors() public {
        _configure();
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.cancelSubscription(1);
        _buy(alice, 30);
        _expectOwnerOnly(alice);
        subs.cancelSubscription(1);
        subs.cancelSubscription(1);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionAlreadyCancelled.selector);
        subs.cancelSubscription(1);
    }

    // ------------------------------------------------------------------ views

    function test_daysRemaining_roundsUp() public {
        _configure();
        _buy(alice, 30);
        vm.warp(START + 1);
        vm.assertEq(subs.daysRemaining(1), 30, "29.99 days -> 30");
        vm.warp(START + 30 days - 1);
        vm.assertEq(subs.daysRemaining(1), 1, "one second -> 1");
        vm.assertTrue(subs.isSubscriptionActive(1), "still active");
        vm.warp(START + 30 days);
        vm.assertEq(subs.daysRemaining(1), 0, "expired at expiresAt");
        vm.assertFalse(subs.isSubscriptionActive(1), "inactive at expiresAt");
        (,,, bool isActive,) = subs.getSubscription(1);
        vm.assertFalse(isActive, "getSubscription agrees");
    }

    function test_subscriptionViews_missing() public {
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.getSubscription(0);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.getSubscription(1);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.daysRemaining(1);
        vm.expectRevert(BlockhostSubscriptions.SubscriptionNotFound.selector);
        subs.isSubscriptionActive(1);
    }

    // ------------------------------------------------------------ withdrawing

    function test_withdrawFunds() public {
        _configure();
        _buy(alice, 30);
        _buy(bob, 10);
        uint256 total = 45e6 + 15e6;

        vm.expectEmit(true, true, false, true, address(subs));
        emit BlockhostSubscriptions.FundsWithdrawn(address(usdc), treasury, total);
        subs.withdrawFunds(address(usdc), treasury);

        vm.assertEq(usdc.balanceOf(treasury), total, "treasury paid");
        vm.assertEq(usdc.balanceOf(address(subs)), 0, "contract empty");
        vm.expectRevert(BlockhostSubscriptions.NoBalanceToWithdraw.selector);
        subs.withdrawFunds(address(usdc), treasury);
    }

    function test_withdrawFunds_errors() public {
        _configure();
        _buy(alice, 1);
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.withdrawFunds(address(0), treasury);
        vm.expectRevert(BlockhostSubscriptions.InvalidAddress.selector);
        subs.withdrawFunds(address(usdc), address(0));
        vm.expectRevert(BlockhostSubscriptions.NoBalanceToWithdraw.selector);
        subs.withdrawFunds(address(dai), treasury);
        _expectOwnerOnly(alice);
        subs.withdrawFunds(address(usdc), alice);
    }

    // -------------------------------------------------------------- ownership

    function test_ownershipTransfer_movesAdminRights() public {
        subs.transferOwnership(alice);
        vm.assertEq(subs.owner(), alice, "new owner");
        _expectOwnerOnly(address(this));
        subs.createPlan("basic", 1);
        vm.prank(alice);
        subs.createPlan("basic", 1);
        vm.assertEq(subs.getTotalPlanCount(), 1, "new owner can act");
    }
}
