// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {SafeCast} from "@openzeppelin/contracts/utils/math/SafeCast.sol";

import {BlockhostSubscriptions} from "../src/BlockhostSubscriptions.sol";
import {MockERC20} from "../src/mocks/MockERC20.sol";
import {MockUniswapV2Pair} from "../src/mocks/MockUniswapV2Pair.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Quote arithmetic: the primary stablecoin at any decimals, pair
/// pricing in both token orders and with differing decimals, slippage, the
/// liquidity floor, and rounding (always up, by less than one base unit).
contract PricingTest is TestBase {
    BlockhostSubscriptions internal subs;
    MockERC20 internal usdc; // 6 decimals
    MockERC20 internal dai; // 18 decimals
    MockERC20 internal weth; // 18 decimals
    MockERC20 internal wbtc; // 8 decimals

    function setUp() public {
        subs = new BlockhostSubscriptions();
        usdc = new MockERC20("USD Coin", "USDC", 6);
        dai = new MockERC20("Dai", "DAI", 18);
        weth = new MockERC20("Wrapped Ether", "WETH", 18);
        wbtc = new MockERC20("Wrapped BTC", "WBTC", 8);
    }

    function _pairMethod(MockERC20 token, MockERC20 stable, bool tokenFirst, uint256 tokenRes, uint256 stableRes)
        internal
        returns (uint256 methodId)
    {
        uint112 t = SafeCast.toUint112(tokenRes);
        uint112 st = SafeCast.toUint112(stableRes);
        MockUniswapV2Pair pair = tokenFirst
            ? new MockUniswapV2Pair(address(token), address(stable))
            : new MockUniswapV2Pair(address(stable), address(token));
        if (tokenFirst) pair.setReserves(t, st);
        else pair.setReserves(st, t);
        methodId = subs.addPaymentMethod(address(token), address(pair), address(stable));
    }

    // ------------------------------------------------------- primary stablecoin

    function test_primary_sixDecimals() public {
        subs.setPrimaryStablecoin(address(usdc));
        subs.createPlan("p", 150);
        vm.assertEq(subs.calculatePayment(1, 30, 1), 45e6, "$45.00 in USDC units");
        vm.assertEq(subs.calculatePayment(1, 1, 1), 1.5e6, "$1.50");
        vm.assertEq(subs.getTokenPriceUsdCents(1), 100, "a stablecoin is worth 100 cents");
    }

    function test_primary_eighteenDecimals() public {
        subs.setPrimaryStablecoin(address(dai));
        subs.createPlan("p", 999);
        vm.assertEq(subs.calculatePayment(1, 7, 1), 69.93e18, "7 * $9.99");
    }

    function test_primary_fewDecimalsRoundsUp() public {
        MockERC20 two = new MockERC20("Cents", "CNT", 2);
        MockERC20 zero = new MockERC20("Dollars", "DLR", 0);
        subs.createPlan("p", 150);
        subs.setPrimaryStablecoin(address(two));
        vm.assertEq(subs.calculatePayment(1, 3, 1), 450, "exact in cents");
        subs.setPrimaryStablecoin(address(zero));
        vm.assertEq(subs.calculatePayment(1, 1, 1), 2, "$1.50 -> 2 whole units, rounded up");
        vm.assertEq(subs.calculatePayment(1, 2, 1), 3, "$3.00 exact");
    }

    /// @dev Exactly cents * days * 10^decimals / 100, rounded up, for any
    /// decimals a stablecoin may have.
    function test_primary_formula(uint256 price, uint256 days_, uint8 decimals) public {
        price = bound(price, 1, 1e12);
        days_ = bound(days_, 1, 36_500);
        decimals = uint8(bound(decimals, 0, 24));
        MockERC20 stable = new MockERC20("Stable", "STB", decimals);
        subs.setPrimaryStablecoin(address(stable));
        subs.createPlan("p", price);
        uint256 scaled = price * days_ * 10 ** decimals;
        uint256 expected = scaled / 100 + (scaled % 100 == 0 ? 0 : 1);
        vm.assertEq(subs.calculatePayment(1, days_, 1), expected, "ceil(cents * days * 10^dec / 100)");
    }

    /// @dev Decimals are read when the method is configured; a token whose
    /// decimals change needs setPrimaryStablecoin again.
    function test_primary_decimalsSnapshotAtSet() public {
        MockERC20 stable = new MockERC20("Stable", "STB", 6);
        subs.setPrimaryStablecoin(address(stable));
        subs.createPlan("p", 100);
        stable.setDecimals(18);
        vm.assertEq(subs.calculatePayment(1, 1, 1), 1e6, "still priced with 6 decimals");
        subs.setPrimaryStablecoin(address(stable));
        vm.assertEq(subs.calculatePayment(1, 1, 1), 1e18, "re-read: 18 decimals");
        (,,, uint8 td,,) = subs.getPaymentMethod(1);
        vm.assertEq(uint256(td), 18, "stored decimals");
    }

    function test_primary_ignoresSlippage() public {
        subs.setPrimaryStablecoin(address(usdc));
        subs.createPlan("p", 100);
        subs.setSlippageBps(1000);
        vm.assertEq(subs.calculatePayment(1, 1, 1), 1e6, "no slippage on the stablecoin");
    }

    function test_quotesInactivePlan() public {
        subs.setPrimaryStablecoin(address(usdc));
        subs.createPlan("p", 100);
        subs.updatePlan(1, "p", 100, false);
        vm.assertEq(subs.calculatePayment(1, 1, 1), 1e6, "a quote is information, buying checks the plan");
    }

    function test_quoteErrors() public {
        subs.setPrimaryStablecoin(address(usdc));
        vm.expectRevert(BlockhostSubscriptions.PlanNotFound.selector);
        subs.calculatePayment(1, 1, 1);
        subs.createPlan("p", 100);
        vm.expectRevert(BlockhostSubscriptions.DaysMustBePositive.selector);
        subs.calculatePayment(1, 0, 1);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotFound.selector);
        subs.calculatePayment(1, 1, 2);
        subs.updatePaymentMethod(1, false);
        vm.expectRevert(BlockhostSubscriptions.PaymentMethodNotActive.selector);
        subs.calculatePayment(1, 1, 1);
    }

    // ------------------------------------------------------------ pair pricing

    function _checkWethUsdc(bool tokenFirst) internal {
        // 100 WETH : 300,000 USDC -> $3,000 per WETH.
        uint256 id = _pairMethod(weth, usdc, tokenFirst, 100e18, 300_000e6);
        subs.createPlan("p", 1000); // $10/day
        vm.assertEq(subs.getTokenPriceUsdCents(id), 300_000, "price in cents");
        subs.setSlippageBps(0);
        vm.assertEq(subs.calculatePayment(1, 30, id), 0.1e18, "$300 = 0.1 WETH");
        subs.setSlippageBps(100);
        vm.assertEq(subs.calculatePayment(1, 30, id), 0.101e18, "plus 1%");
        subs.setSlippageBps(1000);
        vm.assertEq(subs.calculatePayment(1, 30, id), 0.11e18, "plus 10%");
    }

    function test_pair_tokenIsToken0() public {
        _checkWethUsdc(true);
    }

    function test_pair_tokenIsToken1() public {
        _checkWethUsdc(false);
    }

    function test_pair_eightDecimalTokenAgainst18DecimalStable() public {
        // 10 WBTC : 600,000 DAI -> $60,000 per WBTC.
        uint256 id = _pairMethod(wbtc, dai, false, 10e8, 600_000e18);
        subs.createPlan("p", 600); // $6/day
        vm.assertEq(subs.getTokenPriceUsdCents(id), 6_000_000, "price in cents");
        // $60 = 0.001 WBTC = 100,000 sats, plus 1%.
        vm.assertEq(subs.calculatePayment(1, 10, id), 101_000, "sats");
    }

    function test_pair_18DecimalTokenAgainst6DecimalStable_cheapToken() public {
        // 1,000,000 MEME : 500,000 USDC -> $0.50 each.
        MockERC20 meme = new MockERC20("Meme", "MEME", 18);
        uint256 id = _pairMethod(meme, usdc, true, 1_000_000e18, 500_000e6);
        vm.assertEq(subs.getTokenPriceUsdCents(id), 50, "50 cents");
        subs.createPlan("p", 1);
        subs.setSlippageBps(0);
        vm.assertEq(subs.calculatePayment(1, 1, id), 0.02e18, "1 cent = 0.02 tokens");
    }

    function test_pair_roundsUp() public {
        // 7 WETH : 10,000 USDC. 3 cents = 30,000 USDC units = 30,000 * 7e18 / 10,000e6 WETH units: exact.
        uint256 id = _pairMethod(weth, usdc, true, 7e18, 10_000e6);
        subs.createPlan("p", 1);
        subs.setSlippageBps(0);
        vm.assertEq(subs.calculatePayment(1, 3, id), 21e12, "exact case");
        // With 10,000.000003 USDC the exact value is 20,999,999,993,700.0000019 -> rounds up.
        uint256 odd = _pairMethod(weth, usdc, true, 7e18, 10_000_000_003);
        vm.assertEq(subs.calculatePayment(1, 3, odd), 20_999_999_993_701, "rounded up");
    }

    function test_pair_sameQuoteEitherOrder(uint256 tokenRes, uint256 stableRes, uint256 price, uint256 days_) public {
        tokenRes = bound(tokenRes, 1, type(uint112).max);
        stableRes = bound(stableRes, 1_000e6, type(uint112).max);
        price = bound(price, 1, 1e9);
        days_ = bound(days_, 1, 3650);
        uint256 a = _pairMethod(weth, usdc, true, tokenRes, stableRes);
        uint256 b = _pairMethod(weth, usdc, false, tokenRes, stableRes);
        subs.createPlan("p", price);
        vm.assertEq(subs.calculatePayment(1, days_, a), subs.calculatePayment(1, days_, b), "order-independent");
        vm.assertEq(subs.getTokenPriceUsdCents(a), subs.getTokenPriceUsdCents(b), "order-independent price");
    }

    /// @dev The quote is the exact value rounded up: paying it never
    /// undercharges, and one unit less would.
    function test_pair_quoteIsCeilOfExactValue(
        uint256 tokenRes,
        uint256 stableRes,
        uint256 price,
        uint256 days_,
        uint256 bps,
        bool tokenFirst
    ) public {
        tokenRes = bound(tokenRes, 1, type(uint112).max);
        stableRes = bound(stableRes, 1_000e18, type(uint112).max);
        price = bound(price, 1, 1e7);
        days_ = bound(days_, 1, 3650);
        bps = bound(bps, 0, 1000);
        uint256 id = _pairMethod(wbtc, dai, tokenFirst, tokenRes, stableRes);
        subs.createPlan("p", price);
        subs.setSlippageBps(bps);
        uint256 amount = subs.calculatePayment(1, days_, id);

        // amount >= price*days*1e18*(1e4+bps)*tokenRes / (100*1e4*stableRes) > amount - 1,
        // compared in 512-bit-free form by splitting the factors.
        uint256 lhsValue = price * days_ * (10_000 + bps); // <= 1e7*3650*11000 ~ 4e14
        uint256 denom = 100 * 10_000 * stableRes; // < 2^112 * 1e6
        // amount * denom vs lhsValue * 1e18 * tokenRes: both fit in 256 bits with these bounds
        // (4e14 * 1e18 * 5.2e33 ~ 2e66 < 1.1e77).
        uint256 exactNumerator = lhsValue * 1e18 * tokenRes;
        vm.assertGe(amount * denom, exactNumerator, "never undercharges");
        if (amount > 0) {
            vm.assertTrue((amount - 1) * denom < exactNumerator, "one unit less would undercharge");
        }
    }

    // ---------------------------------------------------------------- liquidity

    function test_liquidity_floorInCentsAcrossDecimals() public {
        // Default floor: $1,000 on the stablecoin side.
        uint256 six = _pairMethod(weth, usdc, true, 1e18, 1_000e6);
        uint256 eighteen = _pairMethod(weth, dai, false, 1e18, 1_000e18);
        subs.createPlan("p", 100);
        vm.assertEq(subs.calculatePayment(1, 1, six), 0.00101e18, "exactly at the floor (USDC)");
        vm.assertEq(subs.calculatePayment(1, 1, eighteen), 0.00101e18, "exactly at the floor (DAI)");

        uint256 thinSix = _pairMethod(weth, usdc, true, 1e18, 1_000e6 - 1);
        uint256 thinEighteen = _pairMethod(weth, dai, true, 1e18, 1_000e18 - 1);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.calculatePayment(1, 1, thinSix);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.calculatePayment(1, 1, thinEighteen);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.getTokenPriceUsdCents(thinSix);

        subs.setMinLiquidity(99_999);
        vm.assertEq(subs.calculatePayment(1, 1, thinSix) > 0, true, "a lower floor admits it");
    }

    function test_liquidity_emptyPoolAlwaysRefused() public {
        subs.setMinLiquidity(0);
        subs.createPlan("p", 100);
        uint256 noStable = _pairMethod(weth, usdc, true, 1e18, 0);
        uint256 noToken = _pairMethod(weth, usdc, false, 0, 1_000_000e6);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.calculatePayment(1, 1, noStable);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.calculatePayment(1, 1, noToken);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        subs.getTokenPriceUsdCents(noToken);
    }

    function test_liquidity_blocksPurchase() public {
        uint256 id = _pairMethod(weth, usdc, true, 1e18, 10e6);
        subs.createPlan("p", 100);
        address alice = vm.addr(0xA11CE);
        weth.mint(alice, 1e18);
        vm.prank(alice);
        weth.approve(address(subs), type(uint256).max);
        vm.expectRevert(BlockhostSubscriptions.InsufficientLiquidity.selector);
        vm.prank(alice);
        subs.buySubscription(1, 1, id, "");
    }

    function test_priceTracksReserves() public {
        MockUniswapV2Pair pair = new MockUniswapV2Pair(address(weth), address(usdc));
        pair.setReserves(100e18, 300_000e6);
        uint256 id = subs.addPaymentMethod(address(weth), address(pair), address(usdc));
        subs.createPlan("p", 300_000);
        subs.setSlippageBps(0);
        vm.assertEq(subs.calculatePayment(1, 1, id), 1e18, "$3,000 = 1 WETH");
        pair.setReserves(100e18, 600_000e6);
        vm.assertEq(subs.getTokenPriceUsdCents(id), 600_000, "price doubled");
        vm.assertEq(subs.calculatePayment(1, 1, id), 0.5e18, "half the tokens");
    }
}
