"""The brushing and click_farm scenarios: truth that matches the events, and crowds behind shared addresses."""

from __future__ import annotations

import collections

import orjson

from simulators import generate
from simulators.timeline import HOUR


def run(seed=5, scenarios=("brushing", "click_farm")):
    sim = generate(scenarios, seed=seed, duration_ms=2 * HOUR, shoppers=60_000)
    events = [(e.topic, orjson.loads(e.value)) for e in sim]
    return sim, events


def test_truth_names_every_fake_order_and_session_and_they_are_in_the_stream():
    sim, events = run()
    members = {r.user_id: r.ring_id for r in sim.truth if r.kind == "ring_member"}
    fake_orders = {r.order_id: r for r in sim.truth if r.kind == "fake_order"}
    fake_sessions = {r.session_id: r for r in sim.truth if r.kind == "fake_session"}
    assert len(fake_orders) > 50 and len(fake_sessions) > 50
    paid = {o["order_id"] for t, o in events if t == "orders" and o["status"] == "paid"}
    assert set(fake_orders) <= paid
    sessions = {o["session_id"] for t, o in events if t == "clickstream"}
    assert set(fake_sessions) <= sessions
    assert all(r.user_id in members and members[r.user_id] == r.ring_id for r in fake_orders.values())
    # A farm's sessions never order.
    ordered_sessions = {o.get("session_id") for t, o in events if t == "orders"}
    assert not ordered_sessions & set(fake_sessions)


def test_rings_share_devices_and_ordinary_crowds_share_addresses():
    sim, events = run()
    members = {r.user_id for r in sim.truth if r.kind == "ring_member"}
    accounts_per_device = collections.defaultdict(set)
    accounts_per_ip = collections.defaultdict(set)
    for topic, o in events:
        if topic == "clickstream":
            accounts_per_device[o["device_id"]].add(o["user_id"])
            accounts_per_ip[o["ip"]].add(o["user_id"])
    ring_devices = [d for d, users in accounts_per_device.items() if users & members]
    assert all(accounts_per_device[d] <= members for d in ring_devices)  # a farm phone is the farm's
    assert max(len(accounts_per_device[d]) for d in ring_devices) >= 5
    ordinary_devices = [users for users in accounts_per_device.values() if not users & members]
    assert all(len(users) == 1 for users in ordinary_devices)
    crowds = [users for users in accounts_per_ip.values() if len(users - members) >= 40]
    assert len(crowds) >= 3  # campus NATs and the carrier's gateway: a naive "same IP" rule fails here


def test_same_seed_same_traffic_and_other_scenarios_keep_their_clicks():
    first = [(e.topic, e.value) for e in generate("brushing", seed=3, duration_ms=HOUR // 2, shoppers=5_000)]
    again = [(e.topic, e.value) for e in generate("brushing", seed=3, duration_ms=HOUR // 2, shoppers=5_000)]
    assert first == again
    plain = [orjson.loads(e.value) for e in generate("normal", seed=3, duration_ms=HOUR // 2, shoppers=5_000)
             if e.topic == "clickstream"]
    assert plain and all("device_id" not in click for click in plain)
