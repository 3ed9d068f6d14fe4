"""Every realistic rate the simulator uses, in one frozen object.

Figures marked PLAYBOOK come from the playbooks' figures (PLAYBOOK-NUMBERS, operations
playbooks of large Chinese platforms around Double 11). Figures marked ASSUMED
are ours where the playbooks are silent; each says what it is calibrated against.
A test or benchmark that needs a different shop passes `dataclasses.replace(PROFILE, ...)`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShopProfile:
    # -- time and traffic ------------------------------------------------------
    # The playbooks describe Chinese platforms: local time is China Standard Time.
    local_utc_offset_h: int = 8
    # PLAYBOOK: "65% of activity is in the evening" (18:00-24:00 local here).
    evening_share: float = 0.65
    # ASSUMED: sessions per shopper per day by lifecycle group; mean ~0.4, so a
    # population of 50,000 gives ~20,000 sessions a day.
    visits_per_day_new: float = 0.25
    visits_per_day_growing: float = 0.35
    visits_per_day_mature: float = 0.60
    visits_per_day_lapsing: float = 0.40  # at the start; decays with lapse_half_life_days
    # PLAYBOOK: retention checkpoints at 7/30/90 days, 30-day retention 35-45%:
    # a lapsing shopper's visit rate halves every week (~5% left after 30 days).
    lapse_half_life_days: float = 7.0
    # ASSUMED population mix by lifecycle (PLAYBOOK names the stages new/growing/mature).
    lifecycle_mix: tuple[tuple[str, float], ...] = (
        ("new", 0.25),
        ("growing", 0.30),
        ("mature", 0.30),
        ("lapsing", 0.15),
    )
    # Purchase intent by lifecycle, ordered as the PLAYBOOK conversion bands
    # (new < 5%, growing 5-15%, mature > 15%); normalised so the mean is 1.
    intent_new: float = 0.6
    intent_growing: float = 1.0
    intent_mature: float = 1.6
    intent_lapsing: float = 0.8
    # ASSUMED: brand-new registrations among visits (legitimate new accounts exist,
    # so "new account" alone does not mean fraud).
    new_registration_share: float = 0.02
    # PLAYBOOK: shopper mix for targeting; quality-seeking AOV 500 CNY.
    segment_mix: tuple[tuple[str, float], ...] = (
        ("price_sensitive", 0.45),
        ("quality", 0.30),
        ("impulse", 0.25),
    )
    # ASSUMED channel mix (PLAYBOOK names app and mini-program; live-stream commerce is common).
    channel_mix: tuple[tuple[str, float], ...] = (
        ("app", 0.50),
        ("mini_program", 0.25),
        ("web", 0.15),
        ("live_stream", 0.10),
    )
    preferred_channel_share: float = 0.75  # ASSUMED: shoppers mostly stick to one channel

    # -- funnel ----------------------------------------------------------------
    # PLAYBOOK: mobile conversion target 3.2% (paid orders per visit). The stage
    # rates below multiply out to about that (0.70 x 0.147 x 0.46 x ~0.83 x 0.72, plus recovered carts);
    # the unit tests hold the generated traffic to it.
    conversion: float = 0.032
    # PLAYBOOK: search is 40% and recommendations 35% of user actions.
    search_share: float = 0.40
    recommendation_share: float = 0.35
    view_rate: float = 0.70  # ASSUMED: visits that reach a product page (30% bounce)
    mean_extra_views: float = 3.0  # ASSUMED: product views after the first, geometric
    cart_given_view: float = 0.147  # ASSUMED
    checkout_given_cart: float = 0.46  # ASSUMED
    # PLAYBOOK: "payment step loses 28% of shoppers who reach it"; "the mini-program jump loses 30%".
    payment_step_loss: float = 0.28
    mini_program_payment_loss: float = 0.30
    second_item_rate: float = 0.25  # ASSUMED
    remove_item_rate: float = 0.15  # ASSUMED: of two-item carts
    # PLAYBOOK: abandonment reasons "shipping fee / out of stock / price comparison".
    comparison_share_of_cart_abandons: float = 0.40  # ASSUMED
    free_shipping_threshold: float = 99.0  # ASSUMED: common CNY threshold
    shipping_fees: tuple[float, ...] = (6.0, 8.0, 10.0, 12.0, 15.0)
    shipping_abandon_with_fee: float = 0.30  # ASSUMED
    shipping_abandon_free: float = 0.10  # ASSUMED
    # ASSUMED: abandoned carts bought later without any nudge (engine coupons come on top).
    cart_recovery_rate: float = 0.12
    recovery_delay_median_h: float = 6.0
    # PLAYBOOK: A/B tests with one variable; ASSUMED share of sessions in the test.
    experiment_name: str = "checkout_v2"
    experiment_share: float = 0.5
    experiment_checkout_lift: float = 1.08  # treatment converts 8% better at checkout

    # -- orders and payments -----------------------------------------------------
    order_timeout_min: int = 30  # ASSUMED: unpaid orders are cancelled after 30 minutes
    payment_failure_rate: float = 0.04  # ASSUMED: card/wallet declines on a normal day
    payment_retry_rate: float = 0.50  # ASSUMED: shoppers who retry after a decline
    outage_failure_rate: float = 0.55  # ASSUMED: a payment gateway brown-out
    # PLAYBOOK: "return rate kept under 15%": refunds of paid orders.
    refund_rate: float = 0.10
    # ASSUMED: the refund service answers a request in ~15 s (median; p95 ~34 s), within the
    # Double 11 plan's 60 s refund response target.
    refund_response_median_ms: int = 15_000
    presale_sku_share: float = 0.05  # ASSUMED; PLAYBOOK keeps pre-sale stock separate
    method_mix: tuple[tuple[str, float], ...] = (
        ("alipay", 0.45),
        ("wechat_pay", 0.35),
        ("card", 0.20),
    )
    coupon_use_rate: float = 0.08  # ASSUMED: orders paying with an existing coupon code
    overseas_shopper_share: float = 0.02  # ASSUMED: legitimate geo mismatches

    # -- fraud -------------------------------------------------------------------
    # PLAYBOOK: interception >= 95% and losses 0.03% of transaction value, so
    # attempted fraud is ~0.03% / 5% = 0.6% of transaction value.
    fraud_value_share: float = 0.006
    stolen_card_share_of_fraud: float = 0.7  # ASSUMED; the rest is account takeover
    card_testing_bursts_per_day: float = 0.5  # ASSUMED background rate outside the scenario
    stolen_card_chargeback_rate: float = 0.85  # ASSUMED: cardholders who dispute
    takeover_chargeback_rate: float = 0.60  # ASSUMED
    friendly_chargeback_rate: float = 0.0005  # ASSUMED: legitimate buyers who dispute anyway
    chargeback_delay_median_days: float = 7.0  # CONTRACT: "hours to weeks later"

    # -- stock ---------------------------------------------------------------------
    catalog_size: int = 2000
    units_per_order: float = 1.3  # ASSUMED
    # PLAYBOOK: out-of-stock rate under 1%; safety stock triggers replenishment.
    stock_cover_days: tuple[float, float] = (2.0, 30.0)
    thin_stock_share: float = 0.03  # ASSUMED: SKUs with under a day of cover
    restock_lead_median_h: float = 8.0
    adjustments_per_hour: float = 6.0  # ASSUMED: cycle-count corrections

    # -- derived -------------------------------------------------------------------
    @property
    def paid_given_order(self) -> float:
        return 1.0 - self.payment_step_loss

    def payment_attempt_rate(self, channel: str) -> float:
        """Share of created orders whose shopper tries to pay, so that the paid share
        after declines and retries is exactly 1 - loss (PLAYBOOK payment-step loss)."""
        loss = self.mini_program_payment_loss if channel == "mini_program" else self.payment_step_loss
        f, r = self.payment_failure_rate, self.payment_retry_rate
        return min(1.0, (1.0 - loss) / ((1.0 - f) + f * r * (1.0 - f)))


PROFILE = ShopProfile()
