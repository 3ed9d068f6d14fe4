"""The long order-history generator: reproducible, valid contract events, truth that matches them."""

from operators.events import parse_event
from simulators.histories import generate_history
from simulators.timeline import DAY
from state.serde import loads


def test_same_arguments_same_bytes_and_other_seeds_differ():
    first = generate_history(customers=40, seed=3, duration_ms=200 * DAY)
    again = generate_history(customers=40, seed=3, duration_ms=200 * DAY)
    other = generate_history(customers=40, seed=4, duration_ms=200 * DAY)
    assert [e.value for e in first] == [e.value for e in again]
    assert [e.value for e in first] != [e.value for e in other]


def test_events_are_valid_ordered_and_match_the_truth():
    history = generate_history(customers=60, seed=5, duration_ms=300 * DAY)
    events = list(history)
    assert [e.ts for e in events] == sorted(e.ts for e in events)
    assert all(history.start_ms <= e.ts < history.end_ms for e in events)
    paid: dict[str, list[int]] = {}
    for event in events:
        record = parse_event(event.topic, loads(event.value))  # raises on anything off-contract
        assert event.key == record.user_id.encode()
        if event.topic == "orders" and record.status == "paid":
            paid.setdefault(record.user_id, []).append(record.ts)
    for user_id, truth in history.truth.items():
        assert list(truth.paid_ts) == paid.get(user_id, [])
        if truth.dropout_ts is not None:
            assert truth.paid_ts[-1] == truth.dropout_ts  # nothing bought after dropping out
    dropped = sum(1 for t in history.truth.values() if t.dropout_ts is not None)
    assert 0 < dropped < len(history.truth)
