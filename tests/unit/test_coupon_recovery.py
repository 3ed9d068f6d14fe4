"""The recovery windows: final once every bucket has passed them; late facts are not lost;
and the cart book survives a snapshot."""

import pickle

from operators.clock import Progress
from operators.carts import ADD, CartBook, CartEvent, CartRules
from operators.coupon_recovery import BucketClock, DecisionFact, RecoveryWindows, RedemptionFact

HOUR = 3_600_000


def test_a_window_is_reported_once_every_bucket_has_passed_it():
    windows = RecoveryWindows(HOUR, buckets=2)
    assert windows.add([DecisionFact(10, "issued"), DecisionFact(20, "capped"), BucketClock("0", HOUR + 5)]) == []
    out = windows.add([RedemptionFact(HOUR + 1, "cpn-1", 99.5), RedemptionFact(HOUR + 2, "cpn-1", 99.5),
                       BucketClock("1", HOUR + 3)])
    assert len(out) == 1
    first = out[0]
    assert (first["window_start"], first["issued"], first["capped"], first["abandoned"]) == (0, 1, 1, 2)
    assert first["recovery_rate"] == 0.0 and first["metric_id"] == "coupon_recovery:0"
    # A fact for the window already reported counts in the oldest open one, marked late.
    out = windows.add([DecisionFact(30, "issued"), BucketClock("0", 2 * HOUR), BucketClock("1", 2 * HOUR)])
    second = out[0]
    assert second["window_start"] == HOUR and second["issued"] == 1 and second["late"] == 1
    assert second["redeemed"] == 1 and second["recovered_gmv"] == 99.5  # the redelivered order counted once
    assert second["recovery_rate"] == 1.0


def test_empty_windows_are_reported_as_zeros():
    windows = RecoveryWindows(HOUR, buckets=1)
    out = windows.add([DecisionFact(10, "note"), BucketClock("0", 3 * HOUR)])
    assert [(w["window_start"], w["abandoned"], w["notes"]) for w in out] == [(0, 1, 1), (HOUR, 0, 0), (2 * HOUR, 0, 0)]


def test_the_cart_book_survives_a_snapshot():
    book = CartBook(CartRules(lateness_ms=0))
    book.add([CartEvent(1000, 0, "e1", "u1", ADD, "A", "shoes", 50.0, 2)], Progress({("clickstream", 0): 2000}), 0)
    restored = pickle.loads(pickle.dumps(book))
    restored.configure(CartRules(lateness_ms=0, abandon_after_ms=1000), 0)
    out = restored.add([], Progress({("clickstream", 0): 10_000}), 0)
    assert [(c.trigger_id, c.ts, c.value) for c in out.abandoned] == [("u1@1000", 2000, 100.0)]
