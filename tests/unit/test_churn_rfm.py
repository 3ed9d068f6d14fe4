"""RFM features and value tiers on hand-built histories (pure logic, no model)."""

import pickle
import random
from array import array

import pytest

from operators.rfm import DAY_MS, CustomerState, RfmRules, compact, features, record_click, record_paid, \
    record_refund, rfm_view, tier_of
from operators.rfm import _window_sums

RULES = RfmRules(horizons_ms=(28 * DAY_MS, 91 * DAY_MS, 364 * DAY_MS), slot_ms=7 * DAY_MS,
                 activity_ms=28 * DAY_MS, tier_monetary=(5000.0, 2000.0, 500.0), tier_orders=(10, 4, 2))
T0 = 2800 * DAY_MS  # a slot boundary (weekly slots from the epoch), so windows are easy to read


def day(n: float) -> int:
    return T0 + int(n * DAY_MS)


def customer_with_orders(orders: list[tuple[float, float]]) -> CustomerState:
    state = CustomerState(day(0))
    for index, (when, amount) in enumerate(orders):
        assert record_paid(state, day(when), amount, index, RULES)
    return state


def test_recency_frequency_monetary_over_each_horizon():
    state = customer_with_orders([(1, 100.0), (10, 250.0), (40, 400.0)])
    view = rfm_view(state, day(50), RULES)
    assert view.recency_days == pytest.approx(10.0)
    assert view.tenure_days == pytest.approx(50.0)
    # 28 days = the 4 weekly slots up to day 50's slot (days 35-55): only the order of day 40.
    assert view.orders_by_horizon == (1, 3, 3)
    assert view.monetary_by_horizon == (400.0, 750.0, 750.0)
    assert (view.frequency, view.monetary) == (3, 750.0)
    # A year later every window is empty; lifetime totals stay.
    later = rfm_view(state, day(420), RULES)
    assert later.orders_by_horizon == (0, 0, 0) and later.monetary == 0.0
    assert state.orders_total == 3 and state.spend_total == pytest.approx(750.0)


def test_rings_roll_forward_and_forget_old_slots():
    state = customer_with_orders([(1, 100.0)])
    record_paid(state, day(380), 50.0, 99, RULES)  # the ring wraps past the first order's slot
    view = rfm_view(state, day(381), RULES)
    assert view.orders_by_horizon == (1, 1, 1) and view.monetary == 50.0
    assert view.recency_days == pytest.approx(1.0)


def test_an_order_delivered_twice_counts_once():
    state = customer_with_orders([(1, 100.0)])
    assert not record_paid(state, day(1), 100.0, 0, RULES)
    assert rfm_view(state, day(2), RULES).frequency == 1 and state.orders_total == 1


def test_a_refund_takes_value_back():
    state = customer_with_orders([(1, 300.0), (3, 200.0)])
    record_refund(state, day(6), 200.0, RULES)
    view = rfm_view(state, day(7), RULES)
    assert view.monetary == 300.0 and view.frequency == 2


def test_visits_are_sessions_and_cart_adds_are_counted_over_the_activity_horizon():
    state = CustomerState(day(0))
    record_click(state, day(1), session_key=1, is_cart_add=False, rules=RULES)
    record_click(state, day(1.01), session_key=1, is_cart_add=True, rules=RULES)
    record_click(state, day(20), session_key=2, is_cart_add=True, rules=RULES)
    view = rfm_view(state, day(21), RULES)
    assert (view.visits, view.cart_adds) == (2, 2)
    assert view.days_since_visit == pytest.approx(1.0)
    assert rfm_view(state, day(30), RULES).visits == 1  # day 1 left the 28 day window (4 weekly slots)


@pytest.mark.parametrize(
    "orders, tier",
    [
        ([], "new"),
        ([(1, 100.0)], "bronze"),  # bought, meets no minimum
        ([(1, 300.0), (20, 300.0)], "silver"),
        ([(d, 600.0) for d in range(0, 40, 10)], "gold"),
        ([(d, 600.0) for d in range(0, 100, 10)], "diamond"),
        ([(d, 40.0) for d in range(0, 100, 10)], "bronze"),  # many orders, little value: both minimums count
    ],
)
def test_tiers_follow_the_configured_thresholds(orders, tier):
    state = customer_with_orders(orders)
    assert tier_of(state, rfm_view(state, day(100), RULES), RULES) == tier


def test_a_customer_quiet_past_the_tier_horizon_falls_to_bronze():
    state = customer_with_orders([(d, 600.0) for d in range(0, 100, 10)])
    assert tier_of(state, rfm_view(state, day(460), RULES), RULES) == "bronze"


def test_features_are_named_finite_and_see_the_customers_pace():
    weekly = customer_with_orders([(d, 100.0) for d in range(0, 70, 7)])
    quarterly = customer_with_orders([(0, 100.0), (90, 100.0)])
    at_weekly = features(weekly, rfm_view(weekly, day(63 + 30), RULES))
    at_quarterly = features(quarterly, rfm_view(quarterly, day(90 + 30), RULES))
    names = RULES.feature_names
    assert len(at_weekly) == len(names)
    recency, pace = names.index("recency_days"), names.index("gap_ratio")
    assert at_weekly[recency] == pytest.approx(at_quarterly[recency])  # same 30 quiet days ...
    assert at_weekly[pace] > 2 * at_quarterly[pace]  # ... late for a weekly buyer, early for a quarterly one


def test_compaction_drops_the_rings_and_keeps_the_summary():
    state = customer_with_orders([(1, 100.0), (5, 200.0)])
    record_click(state, day(6), 1, False, RULES)
    compact(state)
    assert state.compacted and state.orders_total == 2
    assert len(pickle.dumps(state)) < 250
    view = rfm_view(state, day(500), RULES)
    assert view.frequency == 0 and view.recency_days == pytest.approx(495.0)
    record_paid(state, day(501), 80.0, 7, RULES)  # comes back: fresh rings
    assert rfm_view(state, day(502), RULES).orders_by_horizon == (1, 1, 1)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"horizons_ms": (91 * DAY_MS, 28 * DAY_MS)},
        {"horizons_ms": (3 * DAY_MS,)},
        {"tier_monetary": (100.0, 200.0, 300.0)},
        {"tier_orders": (1, 2)},
    ],
)
def test_bad_rules_are_refused(kwargs):
    with pytest.raises(ValueError):
        RfmRules(**kwargs)


def test_packed_state_round_trips_every_field():
    from array import array

    from operators.rfm import pack_state, unpack_state

    state = customer_with_orders([(1, 100.25), (10, 250.5)])
    record_click(state, day(11), 3, True, RULES)
    state.score, state.risk, state.tier, state.scored_ts = 0.4321, "medium", "silver", day(11)
    state.pending_ts = array("q", [day(5), day(8)])
    state.pending_x = array("f", [float(i) for i in range(2 * len(RULES.feature_names))])
    blob = pack_state(state)
    restored = unpack_state(blob)
    for name in CustomerState.__slots__:
        assert getattr(restored, name) == getattr(state, name), name
    assert restored.episode_ts is None and restored.wake_ts is None
    assert len(blob) < 700
    compact(state)
    state.pending_ts = state.pending_x = None
    assert len(pack_state(state)) < 150


def test_window_sums_equal_a_newest_first_count_of_the_ring():
    rng = random.Random(12)
    for _ in range(2_000):
        size = rng.randint(1, 12)
        ring = array("H", [rng.randint(0, 9) for _ in range(size)])
        head = rng.randint(0, 100)
        counts = sorted(rng.randint(0, size + 5) for _ in range(rng.randint(1, 3)))
        newest = [ring[(head - back) % size] for back in range(size)]
        assert _window_sums(ring, head, size, counts) == tuple(sum(newest[:min(c, size)]) for c in counts)
