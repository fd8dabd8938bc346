// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.30;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Metadata} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Metadata.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Math} from "@openzeppelin/contracts/utils/math/Math.sol";
import {ReentrancyGuard} from "@openzeppelin/contracts/utils/ReentrancyGuard.sol";

import {IUniswapV2PairLike} from "./interfaces/IUniswapV2PairLike.sol";

/// @title BlockhostSubscriptions
/// @notice Sells VM subscriptions for ERC-20 tokens. The BlockHost controller
/// watches the events and provisions, extends or destroys the matching VM.
/// @dev ABI-compatible with the original BlockHost contract: every external
/// signature, event and custom error keeps the original name and types.
///
/// Pricing: plans are priced in US cents per day. Payment method 1 is the
/// primary stablecoin, taken as 1 USD per whole token. Methods 2 and up pay in
/// some token priced from the spot reserves of a Uniswap-V2 pair against a
/// stablecoin; the buyer pays `slippageBps` on top, since the spot price can
/// move between quoting and mining. Amounts always round up (in the seller's
/// favour, by at most one base unit).
contract BlockhostSubscriptions is Ownable, ReentrancyGuard {
    using SafeERC20 for IERC20;

    /// @notice Payment method id reserved for the primary stablecoin.
    uint256 public constant PRIMARY_PAYMENT_METHOD_ID = 1;
    /// @notice Upper bound for `slippageBps` (10%).
    uint256 public constant MAX_SLIPPAGE_BPS = 1000;
    uint256 private constant BPS_DENOMINATOR = 10_000;

    struct Plan {
        string name;
        uint256 pricePerDayUsdCents;
        bool active;
    }

    struct Subscription {
        uint256 planId;
        address subscriber;
        uint256 expiresAt;
        bool cancelled;
    }

    struct PaymentMethod {
        address token;
        address pair;
        address stablecoin;
        uint8 tokenDecimals;
        uint8 stablecoinDecimals;
        bool active;
    }

    event PlanCreated(uint256 indexed planId, string name, uint256 pricePerDayUsdCents);
    event PlanUpdated(uint256 indexed planId, string name, uint256 pricePerDayUsdCents, bool active);
    event SubscriptionCreated(
        uint256 indexed subscriptionId,
        uint256 indexed planId,
        address indexed subscriber,
        uint256 expiresAt,
        uint256 paidAmount,
        address paymentToken,
        bytes userEncrypted
    );
    event SubscriptionExtended(
        uint256 indexed subscriptionId,
        uint256 indexed planId,
        address indexed extendedBy,
        uint256 newExpiresAt,
        uint256 paidAmount,
        address paymentToken
    );
    event SubscriptionCancelled(uint256 indexed subscriptionId, uint256 indexed planId, address indexed subscriber);
    event PrimaryStablecoinSet(address indexed stablecoinAddress, uint8 decimals);
    event PaymentMethodAdded(
        uint256 indexed paymentMethodId, address tokenAddress, address pairAddress, address stablecoinAddress
    );
    event PaymentMethodUpdated(uint256 indexed paymentMethodId, bool active);
    event FundsWithdrawn(address indexed token, address indexed to, uint256 amount);

    error PlanNotFound();
    error PlanNotActive();
    error SubscriptionNotFound();
    error SubscriptionAlreadyCancelled();
    error PaymentMethodNotFound();
    error PaymentMethodNotActive();
    error PrimaryStablecoinNotSet();
    error InvalidAddress();
    error DaysMustBePositive();
    error SlippageTooHigh();
    error NoBalanceToWithdraw();
    error TokenNotInPair();
    error InsufficientLiquidity();
    error PlanPriceMustBePositive();

    /// @notice Extra the buyer pays on pair-priced methods, in basis points.
    uint256 public slippageBps = 100;
    /// @notice Minimum stablecoin-side reserve of a pair, in US cents (the
    /// reserve is normalised by the stablecoin's decimals, so one threshold
    /// works for stablecoins with 6 and with 18 decimals). Thin pools are
    /// cheap to manipulate; pricing from them is refused.
    uint256 public minLiquidity = 100_000;

    address private _primaryStablecoin;
    uint256 private _planCount;
    uint256 private _subscriptionCount;
    // Ids 2.. are handed out by addPaymentMethod; 1 is the primary stablecoin.
    uint256 private _nextPaymentMethodId = PRIMARY_PAYMENT_METHOD_ID + 1;
    uint256[] private _pairPaymentMethodIds;

    mapping(uint256 => Plan) private _plans;
    mapping(uint256 => Subscription) private _subscriptions;
    mapping(address => uint256[]) private _subscriptionsBySubscriber;
    mapping(uint256 => PaymentMethod) private _paymentMethods;

    constructor() Ownable(msg.sender) {}

    // ------------------------------------------------------------------
    // Owner: configuration
    // ------------------------------------------------------------------

    /// @notice Sets (or replaces) the token behind payment method 1. Replacing
    /// it keeps the method's active flag.
    function setPrimaryStablecoin(address stablecoin) external onlyOwner {
        if (stablecoin == address(0)) revert InvalidAddress();
        uint8 decimals = IERC20Metadata(stablecoin).decimals();
        PaymentMethod storage method = _paymentMethods[PRIMARY_PAYMENT_METHOD_ID];
        if (_primaryStablecoin == address(0)) {
            method.active = true;
        }
        _primaryStablecoin = stablecoin;
        method.token = stablecoin;
        method.pair = address(0);
        method.stablecoin = stablecoin;
        method.tokenDecimals = decimals;
        method.stablecoinDecimals = decimals;
        emit PrimaryStablecoinSet(stablecoin, decimals);
    }

    function createPlan(string calldata name, uint256 pricePerDayUsdCents) external onlyOwner returns (uint256) {
        if (pricePerDayUsdCents == 0) revert PlanPriceMustBePositive();
        uint256 planId = ++_planCount;
        _plans[planId] = Plan({name: name, pricePerDayUsdCents: pricePerDayUsdCents, active: true});
        emit PlanCreated(planId, name, pricePerDayUsdCents);
        return planId;
    }

    function updatePlan(uint256 planId, string calldata name, uint256 pricePerDayUsdCents, bool active)
        external
        onlyOwner
    {
        Plan storage plan = _existingPlan(planId);
        if (pricePerDayUsdCents == 0) revert PlanPriceMustBePositive();
        plan.name = name;
        plan.pricePerDayUsdCents = pricePerDayUsdCents;
        plan.active = active;
        emit PlanUpdated(planId, name, pricePerDayUsdCents, active);
    }

    /// @notice Adds a token priced through `pair` against `stablecoin`.
    function addPaymentMethod(address token, address pair, address stablecoin) external onlyOwner returns (uint256) {
        if (token == address(0) || pair == address(0) || stablecoin == address(0)) revert InvalidAddress();
        address token0 = IUniswapV2PairLike(pair).token0();
        address token1 = IUniswapV2PairLike(pair).token1();
        bool matches = (token0 == token && token1 == stablecoin) || (token0 == stablecoin && token1 == token);
        if (!matches) revert TokenNotInPair();

        uint256 id = _nextPaymentMethodId++;
        _paymentMethods[id] = PaymentMethod({
            token: token,
            pair: pair,
            stablecoin: stablecoin,
            tokenDecimals: IERC20Metadata(token).decimals(),
            stablecoinDecimals: IERC20Metadata(stablecoin).decimals(),
            active: true
        });
        _pairPaymentMethodIds.push(id);
        emit PaymentMethodAdded(id, token, pair, stablecoin);
        return id;
    }

    function updatePaymentMethod(uint256 paymentMethodId, bool active) external onlyOwner {
        PaymentMethod storage method = _existingPaymentMethod(paymentMethodId);
        method.active = active;
        emit PaymentMethodUpdated(paymentMethodId, active);
    }

    function setSlippageBps(uint256 newSlippageBps) external onlyOwner {
        if (newSlippageBps > MAX_SLIPPAGE_BPS) revert SlippageTooHigh();
        slippageBps = newSlippageBps;
    }

    /// @param newMinLiquidity Minimum stablecoin-side reserve, in US cents.
    function setMinLiquidity(uint256 newMinLiquidity) external onlyOwner {
        minLiquidity = newMinLiquidity;
    }

    // ------------------------------------------------------------------
    // Owner: subscriptions and funds
    // ------------------------------------------------------------------

    /// @notice Ends a subscription now, without refund. The controller
    /// destroys the VM when it sees SubscriptionCancelled.
    function cancelSubscription(uint256 subscriptionId) external onlyOwner {
        Subscription storage sub = _existingSubscription(subscriptionId);
        if (sub.cancelled) revert SubscriptionAlreadyCancelled();
        sub.cancelled = true;
        sub.expiresAt = block.timestamp;
        emit SubscriptionCancelled(subscriptionId, sub.planId, sub.subscriber);
    }

    /// @notice Sends this contract's whole balance of `token` to `to`.
    function withdrawFunds(address token, address to) external onlyOwner nonReentrant {
        if (token == address(0) || to == address(0)) revert InvalidAddress();
        uint256 amount = IERC20(token).balanceOf(address(this));
        if (amount == 0) revert NoBalanceToWithdraw();
        IERC20(token).safeTransfer(to, amount);
        emit FundsWithdrawn(token, to, amount);
    }

    // ------------------------------------------------------------------
    // Public: buying and extending
    // ------------------------------------------------------------------

    /// @notice Buys `days_` days of `planId`, paying with `paymentMethodId`
    /// (the caller must have approved the amount `calculatePayment` quotes).
    /// @param userEncrypted Opaque to this contract: the buyer's signature,
    /// ECIES-encrypted to the server key; only the controller reads it.
    function buySubscription(uint256 planId, uint256 days_, uint256 paymentMethodId, bytes calldata userEncrypted)
        external
        nonReentrant
        returns (uint256)
    {
        Plan storage plan = _existingPlan(planId);
        if (!plan.active) revert PlanNotActive();
        (uint256 amount, address token) = _quote(planId, days_, paymentMethodId);

        uint256 subscriptionId = ++_subscriptionCount;
        uint256 expiresAt = block.timestamp + days_ * 1 days;
        _subscriptions[subscriptionId] =
            Subscription({planId: planId, subscriber: msg.sender, expiresAt: expiresAt, cancelled: false});
        _subscriptionsBySubscriber[msg.sender].push(subscriptionId);

        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        emit SubscriptionCreated(subscriptionId, planId, msg.sender, expiresAt, amount, token, userEncrypted);
        return subscriptionId;
    }

    /// @notice Adds `days_` days to a subscription. Anyone may pay (gifting);
    /// time is added from the later of the current expiry and now, so a
    /// lapsed subscription restarts from now instead of back-filling the gap.
    function extendSubscription(uint256 subscriptionId, uint256 days_, uint256 paymentMethodId) external nonReentrant {
        Subscription storage sub = _existingSubscription(subscriptionId);
        if (sub.cancelled) revert SubscriptionAlreadyCancelled();
        uint256 planId = sub.planId;
        if (!_plans[planId].active) revert PlanNotActive();
        (uint256 amount, address token) = _quote(planId, days_, paymentMethodId);

        uint256 newExpiresAt = Math.max(sub.expiresAt, block.timestamp) + days_ * 1 days;
        sub.expiresAt = newExpiresAt;

        IERC20(token).safeTransferFrom(msg.sender, address(this), amount);
        emit SubscriptionExtended(subscriptionId, planId, msg.sender, newExpiresAt, amount, token);
    }

    // ------------------------------------------------------------------
    // Views
    // ------------------------------------------------------------------

    /// @notice Whole days left, rounded up (so it is non-zero exactly while
    /// the subscription is active); 0 once expired or cancelled.
    function daysRemaining(uint256 subscriptionId) external view returns (uint256) {
        Subscription storage sub = _existingSubscription(subscriptionId);
        if (!_isActive(sub)) return 0;
        return Math.ceilDiv(sub.expiresAt - block.timestamp, 1 days);
    }

    function getSubscription(uint256 subscriptionId)
        external
        view
        returns (uint256 planId, address subscriber, uint256 expiresAt, bool isActive, bool cancelled)
    {
        Subscription storage sub = _existingSubscription(subscriptionId);
        return (sub.planId, sub.subscriber, sub.expiresAt, _isActive(sub), sub.cancelled);
    }

    function getPlan(uint256 planId) external view returns (string memory, uint256, bool) {
        Plan storage plan = _existingPlan(planId);
        return (plan.name, plan.pricePerDayUsdCents, plan.active);
    }

    /// @notice The primary stablecoin, or the zero address before it is set.
    function getPrimaryStablecoin() external view returns (address) {
        return _primaryStablecoin;
    }

    /// @notice Every payment method id in ascending order (1 only once the
    /// primary stablecoin is set), active or not.
    function getPaymentMethodIds() external view returns (uint256[] memory ids) {
        uint256 offset = _primaryStablecoin == address(0) ? 0 : 1;
        uint256 count = _pairPaymentMethodIds.length;
        ids = new uint256[](count + offset);
        if (offset == 1) ids[0] = PRIMARY_PAYMENT_METHOD_ID;
        for (uint256 i = 0; i < count; i++) {
            ids[i + offset] = _pairPaymentMethodIds[i];
        }
    }

    function getPaymentMethod(uint256 paymentMethodId)
        external
        view
        returns (
            address token,
            address pair,
            address stablecoin,
            uint8 tokenDecimals,
            uint8 stablecoinDecimals,
            bool active
        )
    {
        PaymentMethod storage m = _existingPaymentMethod(paymentMethodId);
        return (m.token, m.pair, m.stablecoin, m.tokenDecimals, m.stablecoinDecimals, m.active);
    }

    /// @notice Token amount (in base units) that buying or extending `days_`
    /// days of `planId` costs right now, slippage included. Quotes inactive
    /// plans too (the purchase itself checks that); inactive payment methods
    /// are refused.
    function calculatePayment(uint256 planId, uint256 days_, uint256 paymentMethodId) external view returns (uint256) {
        (uint256 amount,) = _quote(planId, days_, paymentMethodId);
        return amount;
    }

    /// @notice Spot price of one whole token in US cents, rounded down
    /// (always 100 for the primary stablecoin). No slippage applied.
    function getTokenPriceUsdCents(uint256 paymentMethodId) external view returns (uint256) {
        PaymentMethod storage m = _existingPaymentMethod(paymentMethodId);
        if (paymentMethodId == PRIMARY_PAYMENT_METHOD_ID) return 100;
        (uint256 tokenReserve, uint256 stableReserve) = _reserves(m);
        return Math.mulDiv(stableReserve * 100, 10 ** m.tokenDecimals, tokenReserve * 10 ** m.stablecoinDecimals);
    }

    function getTotalSubscriptionCount() external view returns (uint256) {
        return _subscriptionCount;
    }

    function getTotalPlanCount() external view returns (uint256) {
        return _planCount;
    }

    function getSubscriptionsBySubscriber(address subscriber) external view returns (uint256[] memory) {
        return _subscriptionsBySubscriber[subscriber];
    }

    function isSubscriptionActive(uint256 subscriptionId) external view returns (bool) {
        return _isActive(_existingSubscription(subscriptionId));
    }

    // ------------------------------------------------------------------
    // Internals
    // ------------------------------------------------------------------

    function _existingPlan(uint256 planId) private view returns (Plan storage plan) {
        // Ids are dense from 1, so the range check is the existence check.
        if (planId == 0 || planId > _planCount) revert PlanNotFound();
        return _plans[planId];
    }

    function _existingSubscription(uint256 subscriptionId) private view returns (Subscription storage sub) {
        if (subscriptionId == 0 || subscriptionId > _subscriptionCount) revert SubscriptionNotFound();
        return _subscriptions[subscriptionId];
    }

    function _existingPaymentMethod(uint256 paymentMethodId) private view returns (PaymentMethod storage m) {
        if (paymentMethodId == PRIMARY_PAYMENT_METHOD_ID && _primaryStablecoin == address(0)) {
            revert PrimaryStablecoinNotSet();
        }
        m = _paymentMethods[paymentMethodId];
        if (m.token == address(0)) revert PaymentMethodNotFound();
    }

    function _isActive(Subscription storage sub) private view returns (bool) {
        return !sub.cancelled && sub.expiresAt > block.timestamp;
    }

    /// @dev Validates everything but the plan's active flag and returns the
    /// amount due plus the token it is due in.
    function _quote(uint256 planId, uint256 days_, uint256 paymentMethodId)
        private
        view
        returns (uint256 amount, address token)
    {
        Plan storage plan = _existingPlan(planId);
        if (days_ == 0) revert DaysMustBePositive();
        PaymentMethod storage m = _existingPaymentMethod(paymentMethodId);
        if (!m.active) revert PaymentMethodNotActive();

        uint256 totalCents = plan.pricePerDayUsdCents * days_;
        if (paymentMethodId == PRIMARY_PAYMENT_METHOD_ID) {
            // cents * 10^decimals / 100: exact for any stablecoin with >= 2 decimals.
            amount = Math.mulDiv(totalCents, 10 ** m.tokenDecimals, 100, Math.Rounding.Ceil);
        } else {
            (uint256 tokenReserve, uint256 stableReserve) = _reserves(m);
            // Value in stablecoin base units, converted at the pair's spot
            // ratio, plus slippage — folded into one rounding step.
            uint256 numerator = totalCents * 10 ** m.stablecoinDecimals * (BPS_DENOMINATOR + slippageBps);
            amount = Math.mulDiv(numerator, tokenReserve, stableReserve * 100 * BPS_DENOMINATOR, Math.Rounding.Ceil);
        }
        return (amount, m.token);
    }

    /// @dev The pair's reserves as (token side, stablecoin side), whichever
    /// order the pair stores them in; refuses empty or thin pools.
    function _reserves(PaymentMethod storage m) private view returns (uint256 tokenReserve, uint256 stableReserve) {
        IUniswapV2PairLike pair = IUniswapV2PairLike(m.pair);
        (uint112 reserve0, uint112 reserve1,) = pair.getReserves();
        address token0 = pair.token0();
        if (token0 == m.token) {
            (tokenReserve, stableReserve) = (reserve0, reserve1);
        } else if (token0 == m.stablecoin) {
            (tokenReserve, stableReserve) = (reserve1, reserve0);
        } else {
            revert TokenNotInPair();
        }
        if (tokenReserve == 0 || stableReserve == 0) revert InsufficientLiquidity();
        if (Math.mulDiv(stableReserve, 100, 10 ** m.stablecoinDecimals) < minLiquidity) {
            revert InsufficientLiquidity();
        }
    }
}
