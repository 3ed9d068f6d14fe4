"""The pure stock ledger: arithmetic, arrival order, oversell, levels and their candidates."""

import itertools
import random
from dataclasses import replace

import pytest

from operators.clock import PartitionStatus, Progress
from operators.stock import StockLedger, StockLine, StockRules

NOW_MS = 1_000_000_000  # a fixed wall clock: everything runs on event time
RULES = StockRules(lateness_ms=10_000, retention_ms=60_000, urgent_fraction=0.5, urgent_minutes=10.0,
                   velocity_window_ms=60_000, velocity_slots=6, velocity_min_units=5,
                   replenish_cover_minutes=60.0)


def inv(ts, kind, quantity, sku="A", pool="spot", safety=None, event_id=None):
    return StockLine(sku, ts, kind, pool, quantity, event_id or f"inv-{sku}-{ts}-{kind}-{quantity}", safety)


def order(ts, status, order_id, quantity=1, sku="A", pool="spot"):
    return StockLine(sku, ts, status, pool, quantity, order_id)


def run(lines, rules=RULES, batch=1):
    ledger = StockLedger(rules)
    changes = []
    for i in range(0, len(lines), batch):
        chunk = lines[i : i + batch]
        changes.append(ledger.add(chunk, Progress({("orders", 0): max(line.ts for line in chunk)}), NOW_MS))
    changes.append(ledger.flush())  # the input ends: what waits for the lateness applies
    return ledger, changes


def feed(ledger, lines):
    """More lines after `run`, applied at once (the input ends after them)."""
    ledger.add(lines, Progress({("orders", 0): max(line.ts for line in lines)}), NOW_MS)
    return ledger.flush()


def reports(latest, caught_up, partitions=2):
    """A batch's progress with its partitions' reports, as the Kafka source gives them."""
    progress = Progress(dict(latest))
    for (topic, partition), done in caught_up.items():
        progress.report(PartitionStatus(topic, partition, done, partitions))
    return progress


def latest_views(changes):
    views = {}
    for change in changes:
        for view in change.views:
            views[view.sku] = view
    return views


def candidates(changes):
    return [c for change in changes for c in change.candidates]


def numbers(ledger, sku="A"):
    view = ledger._view(ledger.skus[sku])
    return view.available, view.reserved, view.presale_available


# -- arithmetic --------------------------------------------------------------------------------


def test_inventory_kinds_on_both_pools():
    ledger, _ = run([
        inv(1, "set", 100, safety=10),
        inv(2, "restock", 20),
        inv(3, "adjust", -3),
        inv(4, "set", 50, pool="presale"),
        inv(5, "adjust", 2, pool="presale"),
    ])
    assert numbers(ledger) == (117, 0, 52)


@pytest.mark.parametrize("pool", ["spot", "presale"])
def test_order_lifecycle_reserves_commits_and_releases_from_its_pool(pool):
    other = "presale" if pool == "spot" else "spot"
    lines = [inv(1, "set", 10, pool=pool), inv(1, "set", 7, pool=other),
             order(2, "created", "o1", 3, pool=pool), order(3, "created", "o2", 2, pool=pool),
             order(4, "created", "o3", 1, pool=pool)]
    ledger, _ = run(lines)

    def state():
        available, reserved, presale = numbers(ledger)
        return (available if pool == "spot" else presale), reserved, (presale if pool == "spot" else available)

    assert state() == (4, 6, 7)
    feed(ledger, [order(5, "paid", "o1", 3, pool=pool)])
    assert state() == (4, 3, 7)  # committed: sold, no longer reserved
    feed(ledger, [order(6, "cancelled", "o2", 2, pool=pool)])
    assert state() == (6, 1, 7)  # released back to available
    feed(ledger, [order(7, "refunded", "o3", 1, pool=pool)])
    assert state() == (7, 0, 7)  # a refund of an unpaid order releases its reservation
    feed(ledger, [order(9, "refunded", "o1", 3, pool=pool)])
    assert state() == (7, 0, 7)  # a refund of a paid order moves no stock


def test_one_order_with_several_skus_and_pools_and_repeated_items():
    from operators.events import parse_event
    from operators.stock import order_lines

    event = parse_event("orders", {
        "event_id": "e1", "ts": 5, "order_id": "o1", "user_id": "u", "status": "created", "amount": 10,
        "items": [{"sku": "A", "quantity": 1, "unit_price": 1}, {"sku": "B", "quantity": 2, "unit_price": 1},
                  {"sku": "A", "quantity": 2, "unit_price": 1}, {"sku": "A", "quantity": 4, "unit_price": 1,
                                                                  "pool": "presale"}],
    })
    lines = order_lines(event)
    assert sorted((l.sku, l.pool, l.quantity) for l in lines) == [("A", "presale", 4), ("A", "spot", 3),
                                                                  ("B", "spot", 2)]
    ledger, _ = run([inv(1, "set", 10), inv(1, "set", 10, pool="presale"), inv(1, "set", 10, sku="B")] + lines,
                    batch=10)
    assert numbers(ledger, "A") == (7, 7, 6)
    assert numbers(ledger, "B") == (8, 2, 0)


def test_a_set_absorbs_earlier_deltas_and_later_ones_count():
    ledger, _ = run([inv(10, "set", 100), order(5, "created", "early"), order(15, "created", "late"),
                     inv(20, "restock", 5)])
    # The count at 10 already excludes the order reserved at 5; it still holds its unit.
    assert numbers(ledger) == (104, 2, 0)
    feed(ledger, [order(30, "cancelled", "early")])
    assert numbers(ledger) == (105, 1, 0)


def test_duplicates_never_count_twice():
    lines = [inv(1, "set", 10), inv(2, "restock", 5, event_id="r1"), order(3, "created", "o1", 2),
             order(4, "paid", "o1", 2)]
    ledger, _ = run(lines + lines + [inv(2, "restock", 5, event_id="r1")])
    assert numbers(ledger) == (13, 0, 0)


# -- arrival order -----------------------------------------------------------------------------


def scenario():
    """A busy minute on two pools: counts, restocks, adjustments and orders in every state."""
    lines = [inv(1000, "set", 40, safety=5), inv(1000, "set", 20, pool="presale"),
             inv(1500, "restock", 10, event_id="r1"), inv(1700, "adjust", -2, event_id="a1"),
             inv(2600, "set", 30), inv(2900, "adjust", 3, pool="presale", event_id="a2")]
    statuses = [("created",), ("created", "paid"), ("created", "cancelled"), ("created", "paid", "refunded"),
                ("created", "refunded"), ("paid",), ("cancelled",), ("created", "cancelled", "paid")]
    rng = random.Random(7)
    for n in range(40):
        pool = "presale" if n % 5 == 0 else "spot"
        start = 1000 + rng.randrange(2000)
        for step, status in enumerate(statuses[n % len(statuses)]):
            lines.append(order(start + step * rng.randrange(1, 400), status, f"o{n}", 1 + n % 3, pool=pool))
    return sorted(lines, key=lambda line: line.ts)


def test_any_arrival_order_within_the_lateness_gives_the_same_ledger():
    in_order, _ = run(scenario())
    expected = numbers(in_order)
    for seed in range(30):
        lines = scenario()
        random.Random(seed).shuffle(lines)  # the whole run spans 3 s, well inside the 10 s lateness
        for batch in (1, 7):
            shuffled, _ = run(lines, batch=batch)
            assert numbers(shuffled) == expected, (seed, batch)


def test_paid_before_created_and_cancel_before_paid_stay_exact():
    base = [inv(1, "set", 10)]
    for statuses in itertools.permutations([(5, "created"), (6, "paid"), (8, "cancelled")]):
        ledger, _ = run(base + [order(ts, status, "o1", 2) for ts, status in statuses])
        assert numbers(ledger) == (8, 0, 0), statuses  # paid first in event time: sold, never released


def test_finished_orders_are_forgotten_and_open_ones_kept():
    lines = [inv(1, "set", 1000)]
    for n in range(100):
        lines += [order(10 + n, "created", f"o{n}"), order(20 + n, "paid" if n % 2 else "cancelled", f"o{n}")]
    lines.append(order(200, "created", "open"))
    ledger, _ = run(lines, batch=50)
    assert ledger.open_orders() == 101
    ledger.add([inv(200_000, "adjust", 0, event_id="tick")], Progress({("orders", 0): 200_000}), NOW_MS + 10_000)  # time passes
    assert ledger.open_orders() == 1
    assert numbers(ledger) == (949, 1, 0)
    assert sum(len(pool.log) for pool in ledger.skus["A"].pools.values()) <= 1


# -- oversell ----------------------------------------------------------------------------------


def test_oversell_is_flagged_once_per_episode_with_the_order_id():
    ledger, changes = run([inv(1, "set", 2), order(2, "created", "o1", 2), order(3, "created", "o2", 1),
                           order(4, "created", "o3", 1), inv(5, "restock", 5), order(6, "created", "o4", 3),
                           order(7, "created", "o5", 1)])
    oversell = [c for c in candidates(changes) if c.rule == "stock.oversell"]
    assert [(c.active, c.ts) for c in oversell] == [(True, 3), (False, 5), (True, 7)]
    assert oversell[0].detail["order_id"] == "o2" and oversell[0].severity == "critical"
    assert oversell[1].detail["orders_oversold"] == 2
    assert oversell[2].detail["order_id"] == "o5"
    assert numbers(ledger) == (-1, 8, 0)


def test_presale_stock_is_kept_apart_from_spot():
    _, changes = run([inv(1, "set", 100), inv(1, "set", 1, pool="presale"), order(2, "created", "o1", 2,
                                                                                  pool="presale")])
    (oversold,) = [c for c in candidates(changes) if c.rule == "stock.oversell"]
    assert oversold.detail["pool"] == "presale"
    view = latest_views(changes)["A"]
    assert (view.available, view.presale_available, view.level) == (100, -1, "out")


# -- levels and candidates ---------------------------------------------------------------------


def test_levels_follow_safety_stock_and_alerts_fire_once_per_episode():
    # Orders a minute apart: too slow for a velocity projection.
    lines = [inv(0, "set", 12, safety=6)]
    lines += [order(60_000 * (n + 1), "created", f"o{n}", 1) for n in range(12)]
    lines.append(inv(60_000 * 14, "restock", 20, event_id="r"))
    _, changes = run(lines)
    levels = [(c.previous_level, c.level) for change in changes for c in change.level_changes]
    assert levels == [("safe", "warning"), ("warning", "urgent"), ("urgent", "out"),
                      ("out", "safe")]
    got = [(c.rule, c.active, c.severity, c.detail.get("level") if c.detail else None) for c in candidates(changes)]
    assert got == [
        ("stock.low", True, "warning", "warning"),
        ("stock.low", True, "warning", "urgent"),  # once more when it turns urgent: the suggestion
        ("stock.out", True, "critical", None),
        ("stock.low", False, "warning", None),
        ("stock.out", False, "critical", None),
    ]
    urgent = candidates(changes)[1]
    assert urgent.detail["replenish"]["quantity"] >= 6 - 3


def test_a_flash_sale_turns_urgent_before_it_is_empty_with_a_suggestion():
    lines = [inv(0, "set", 200, safety=5)]
    lines += [order(1000 + n * 500, "created", f"o{n}", 1) for n in range(60)]  # 120 units/min
    _, changes = run(lines, batch=10)
    (first_low,) = [c for c in candidates(changes) if c.rule == "stock.low"]
    assert first_low.detail["level"] == "urgent"
    view = latest_views(changes)["A"]
    assert view.available == 140 and view.level == "urgent"
    assert view.velocity_per_min == pytest.approx(120.0, rel=0.05)  # the true rate, not diluted over the window
    assert view.minutes_to_stockout == pytest.approx(140 / view.velocity_per_min, abs=0.01)
    replenish = first_low.detail["replenish"]
    assert replenish["velocity_per_min"] > 0 and replenish["quantity"] > 0


def test_a_projection_cools_down_when_sales_stop():
    lines = [inv(0, "set", 200, safety=5)] + [order(1000 + n * 500, "created", f"o{n}", 1) for n in range(60)]
    ledger, changes = run(lines, batch=10)
    assert ledger.projected == {"A"}
    later = ledger.add([inv(400_000, "adjust", 0, sku="B", event_id="tick")], Progress({("orders", 0): 400_000}), NOW_MS + 10_000)
    assert [(c.sku, c.level) for c in later.level_changes if c.sku == "A"] == [("A", "safe")]
    assert [(c.rule, c.active) for c in later.candidates if c.key == "A"] == [("stock.low", False)]
    assert ledger.projected == set()


def test_a_partition_behind_in_a_backlog_holds_back_forgetting():
    """Catching up on a backlog, orders may be read an hour ahead of inventory; a `set`
    read late must still be rebased on every order stamped after it."""
    ledger = StockLedger(RULES)
    orders = [order(10_000 + n * 360_000, "created", f"o{n}") for n in range(10)]
    behind = {("inventory", 0): False, ("orders", 0): False}
    ledger.add([], reports({("inventory", 0): 1_000}, behind), NOW_MS)
    ledger.add([], reports({("inventory", 0): 2_000}, {}), NOW_MS + 60_000)  # starved for a minute: still behind
    ledger.add(orders, reports({("orders", 0): 3_250_000}, {("orders", 0): True}), NOW_MS + 61_000)
    assert ledger.open_orders() == 0  # nothing applied while inventory holds the clock
    ledger.add([inv(5_000, "set", 100)], reports({("inventory", 0): 5_000}, {("inventory", 0): True}), NOW_MS + 62_000)
    ledger.advance(NOW_MS + 72_001)  # every partition at its end: quiet wall time passes the last order
    assert numbers(ledger) == (90, 10, 0)


def test_a_partition_at_its_end_does_not_hold_back_forgetting():
    ledger = StockLedger(RULES)
    ledger.add([inv(1_000, "set", 100, sku="B")], reports({("inventory", 0): 1_000}, {("inventory", 0): True,
                                                                                      ("orders", 0): False}), NOW_MS)
    lines = [order(100_000 + n, s, f"o{n}") for n in range(10) for s in ("created", "paid")]
    ledger.add(lines, reports({("orders", 0): 100_009}, {}), NOW_MS + 1_000)
    ledger.add([], reports({("orders", 0): 1_000_000}, {}), NOW_MS + 2_000)  # inventory at its end holds nothing
    assert ledger.open_orders() == 0


def test_quiet_input_still_cools_down_on_the_wall_clock():
    lines = [inv(0, "set", 200, safety=5)] + [order(1000 + n * 500, "created", f"o{n}", 1) for n in range(60)]
    ledger, _ = run(lines, batch=10)
    wake = ledger.next_wake_ms(NOW_MS)
    assert wake is not None
    cooled = ledger.advance(NOW_MS + 400_000)
    assert [c.level for c in cooled.level_changes] == ["safe"]


def test_the_view_has_exactly_the_contract_fields():
    _, changes = run([inv(0, "set", 5, safety=1), order(10, "created", "o1")])
    fields = latest_views(changes)["A"].fields()
    assert set(fields) == {"available", "reserved", "presale_available", "level", "updated_ts"}
    assert fields["updated_ts"] == 10


def test_a_line_at_the_watermark_waits_for_its_equals_from_a_slower_partition():
    """With no lateness, a partition that has reached the watermark may still deliver another
    line stamped with it. Applied at once, an order reserving the last units at T would turn
    the SKU `out` (a spurious level change and stock.out candidate) before the `set` at T that
    a replay reading both together applies first."""
    rules = replace(RULES, lateness_ms=0)
    created, restocked = order(100_000, "created", "o1", quantity=3), inv(100_000, "set", 5, event_id="s1")
    start = reports({("inventory", 0): 1_000, ("orders", 0): 1_000}, {("inventory", 0): False, ("orders", 0): False})
    at_end = reports({("inventory", 0): 105_000, ("orders", 0): 105_000}, {("inventory", 0): True, ("orders", 0): True})

    def outputs(batches):
        ledger = StockLedger(rules)
        changes = [ledger.add([inv(1_000, "set", 3, event_id="s0")], start, NOW_MS)]
        for lines, latest in batches:
            changes.append(ledger.add(lines, reports(latest, {}), NOW_MS))
        changes += [ledger.add([], at_end, NOW_MS), ledger.flush()]
        return (numbers(ledger), [(c.ts, c.level) for c in changes for c in c.level_changes],
                [(c.rule, c.active) for c in candidates(changes)], [v.fields() for c in changes for v in c.views])

    together = outputs([([created, restocked], {("orders", 0): 100_000, ("inventory", 0): 100_000})])
    inventory_later = outputs([([created], {("orders", 0): 100_000, ("inventory", 0): 100_000}),
                               ([restocked], {("inventory", 0): 100_000})])
    assert together[0] == (2, 3, 0)
    assert inventory_later == together
