"""What the stock flow's speed-ups must not change: the fast order/inventory decoder
gives exactly the checked decoder's record or error, and judging a SKU's level only
when a line moved its numbers loses no level change within a batch."""

import random
from dataclasses import replace

import orjson
import pytest

from operators.clock import Progress
from operators.events import InventoryEvent, InvalidEvent, OrderEvent, OrderItem
from operators.stock import StockLedger, StockLine
from simulators import generate
from simulators.testing import input_records
from simulators.timeline import HOUR
from tests.unit.test_stock_ledger import NOW_MS, RULES, candidates, inv, order

NO_LATENESS = replace(RULES, lateness_ms=0)  # lines apply once the batch's progress is past them
ODD_VALUES = [None, "", "x", "spot", "presale", "created", "adjust", 0, -1, 1, 2**60, 10**400,
              1.0, 1.5, -0.0, float("nan"), float("inf"), True, False, [], {}]


def field_mutations(rnd, obj: dict, names, odd=ODD_VALUES, count: int = 25) -> list[dict]:
    """`obj`, then `count` copies of it with one of `names` set to an odd value (a None
    sometimes removes the field instead): inputs for a fast decoder's equality tests."""
    variants = [obj]
    for _ in range(count):
        mutated = dict(obj)
        name = rnd.choice(names)
        value = rnd.choice(odd)
        if value is None and rnd.random() < 0.5:
            mutated.pop(name, None)
        else:
            mutated[name] = value
        variants.append(mutated)
    return variants


def outcome(parse, obj):
    try:
        record = parse(obj)
    except InvalidEvent as err:
        return "invalid", str(err)
    except Exception as err:  # the checked reader's own failures must stay what they were
        return "raised", type(err).__name__
    # Equal records with the same value types (an int price must become a float, as before).
    return "ok", record, tuple(type(getattr(record, name)).__name__ for name in record.__slots__)


@pytest.fixture(scope="module")
def stock_events():
    sim = generate(("flash_sale",), seed=5, duration_ms=HOUR, shoppers=20_000)
    return [(r.topic, orjson.loads(r.value)) for r in input_records(sim) if r.topic in ("orders", "inventory")]


def test_the_fast_decoder_gives_the_checked_readers_record_or_error(stock_events):
    rnd = random.Random(8)
    cases = 0
    for topic, obj in rnd.sample(stock_events, min(400, len(stock_events))):
        record = OrderEvent if topic == "orders" else InventoryEvent
        variants = field_mutations(
            rnd, obj, [*obj, "pool", "safety_stock", "warehouse", "currency", "shipping_fee", "coupon_code"])
        for mutated in variants[1:]:
            if isinstance(mutated.get("items"), list) and mutated["items"] and rnd.random() < 0.5:
                item = dict(mutated["items"][0], **{rnd.choice(["sku", "quantity", "unit_price", "pool"]):
                                                    rnd.choice(ODD_VALUES)})
                mutated["items"] = [item, *mutated["items"][1:]]
        for variant in variants:
            assert outcome(record.from_dict, variant) == outcome(record._from_dict_checked, variant), variant
            cases += 1
    assert cases > 1000


def test_the_fast_decoder_keeps_the_defaults_and_immutability():
    item = OrderItem.from_dict({"sku": "s", "quantity": 2, "unit_price": 3})
    assert item == OrderItem("s", 2, 3.0, "spot") and type(item.unit_price) is float
    event = OrderEvent.from_dict({"event_id": "e", "ts": 5, "order_id": "o", "user_id": "u", "status": "paid",
                                  "items": [], "amount": 0, "currency": ""})
    assert event.currency == "CNY" and event.items == () and event.session_id is None
    with pytest.raises(AttributeError):
        event.status = "created"  # type: ignore[misc]
    stock = InventoryEvent.from_dict({"event_id": "i", "ts": 1, "sku": "s", "kind": "adjust", "quantity": -2})
    assert stock == InventoryEvent("i", 1, "s", "adjust", -2, "spot", None, None)


def test_every_level_change_within_one_batch_is_still_judged():
    """Down to out and back within a single batch: each crossing once, in order, with its line's time."""
    lines = [inv(0, "set", 3, safety=2)]
    lines += [order(1_000 + n, "created", f"o{n}") for n in range(3)]
    lines += [order(2_000, "paid", "o0"), order(2_001, "cancelled", "o1"), order(2_002, "cancelled", "o2")]
    ledger = StockLedger(NO_LATENESS)
    changes = [ledger.add(lines, Progress({("orders", 0): 2_003}), NOW_MS)]
    got = [(c.ts, c.previous_level, c.level) for change in changes for c in change.level_changes]
    assert got == [(1_000, "safe", "warning"), (1_001, "warning", "urgent"), (1_002, "urgent", "out"),
                   (2_001, "out", "urgent"), (2_002, "urgent", "warning")]
    assert [(c.rule, c.active) for c in candidates(changes)] == [
        ("stock.low", True), ("stock.low", True), ("stock.out", True), ("stock.out", False)]
    (view,) = changes[0].views
    assert (view.available, view.reserved, view.level) == (2, 0, "warning")


def test_a_line_that_moves_no_level_input_leaves_the_view_as_judged():
    """A payment moves only `reserved`: the batch's view still shows it, with the judged level."""
    ledger = StockLedger(NO_LATENESS)
    ledger.add([inv(0, "set", 6, safety=3)], Progress({("orders", 0): 1}), NOW_MS)
    batch = [order(1_000, "created", "o1", 4), order(1_500, "paid", "o1"), order(1_500, "paid", "o1")]
    changes = ledger.add(batch, Progress({("orders", 0): 1_501}), NOW_MS)
    (view,) = changes.views
    assert (view.available, view.reserved, view.level, view.updated_ts) == (2, 0, "warning", 1_500)
    assert [c.level for c in changes.level_changes] == ["warning"]


def test_a_ledger_snapshotted_by_the_previous_version_resumes():
    """Older snapshots lack the per-call fields and the waiting lines, and carry the old
    per-partition watermark: the ledger resumes from them under the stream clock."""
    ledger = StockLedger(NO_LATENESS)
    ledger.add([StockLine("A", 0, "set", "spot", 5, "i0", 1)], Progress({("orders", 0): 1}), NOW_MS)
    state = dict(ledger.__dict__)
    for added in ("_event_now", "_sales_recorded", "pending", "applied_until", "next_tick", "unknown_skus"):
        state.pop(added)
    state.update(partitions={("orders", 0): [0, NOW_MS]}, started_wall_ms=NOW_MS)
    old = StockLedger.__new__(StockLedger)
    old.__setstate__(state)
    changes = old.add([order(10, "created", "o1", 5)], Progress({("orders", 0): 11}), NOW_MS)
    assert changes.views[0].level == "out"


def test_a_snapshot_is_a_frozen_copy_that_resumes_as_a_ledger():
    import pickle

    from flows.stock import StockConfig, _StockLogic, ledger_for

    config = StockConfig(max_event_ahead_ms=3_600_000, rules=NO_LATENESS, buckets=1)
    ledger = StockLedger(NO_LATENESS)
    ledger.add([inv(0, "set", 5, safety=1)], Progress({("orders", 0): 1}), NOW_MS)
    snapshot = _StockLogic(ledger, lambda: NOW_MS).snapshot()
    ledger.add([order(10, "created", "o1", 4)], Progress({("orders", 0): 11}), NOW_MS)  # after the snapshot
    for stored in (pickle.loads(pickle.dumps(snapshot)), snapshot):
        resumed = ledger_for(stored, config, NOW_MS)
        assert type(resumed) is StockLedger
        view = resumed._view(resumed.skus["A"])
        assert (view.available, view.reserved) == (5, 0)
