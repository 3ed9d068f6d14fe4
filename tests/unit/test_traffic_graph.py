"""The linked-account graph: rarity-weighted links, crowds that link nobody, links that age
out of the horizon, and state that stays bounded under hostile input."""

from __future__ import annotations

import pickle

from operators.events import ClickEvent, PaymentEvent
from operators.traffic_engine import TrafficConfig, TrafficEngine
from operators.traffic_graph import CARD, DEVICE, IP, LinkGraph, LinkRules, account_hash, key_hash

T0 = 1_731_000_000_000
MINUTE = 60_000
DAY = 86_400_000


def graph(**rules) -> LinkGraph:
    return LinkGraph(LinkRules(**rules))


def test_rare_keys_link_and_crowds_do_not():
    g = graph()
    device = key_hash(DEVICE, "phone-1")
    nat = key_hash(IP, "10.0.0.1")
    for i in range(6):
        g.link(account_hash(f"ring{i}"), device, T0)
    for i in range(9):  # one more than the IP crowd limit (8)
        g.link(account_hash(f"campus{i}"), nat, T0)
    ring = g.component(account_hash("ring0"), T0)
    assert ring.members == {account_hash(f"ring{i}") for i in range(6)}
    assert ring.shared_keys == (0, 1, 0) and ring.most_per_device == 6
    assert 0 < ring.cohesion < 1
    assert not g.is_linked(account_hash("campus0"), T0)
    assert g.component(account_hash("campus0"), T0).members == {account_hash("campus0")}
    assert nat in g.crowds and nat not in g.keys


def test_weight_falls_with_how_many_share_a_key():
    rules = LinkRules()
    assert rules.weight(DEVICE, 2) > rules.weight(DEVICE, 12) > rules.weight(DEVICE, 90) > 0
    assert rules.weight(IP, 2) < rules.weight(DEVICE, 2)  # addresses say less than devices
    assert rules.weight(IP, 9) == 0 and rules.weight(CARD, 51) == 0 and rules.weight(DEVICE, 1) == 0


def test_links_age_out_of_the_horizon_and_the_ring_shrinks():
    g = graph(horizon_ms=DAY)
    card = key_hash(CARD, "fp-1")
    g.link(account_hash("a"), card, T0)
    g.link(account_hash("b"), card, T0)
    g.link(account_hash("c"), card, T0 + DAY // 2)
    assert len(g.component(account_hash("c"), T0 + DAY // 2).members) == 3
    later = T0 + DAY + 2 * MINUTE
    assert g.component(account_hash("c"), later).members == {account_hash("c")}  # a and b aged out
    g.sweep(T0 + 3 * DAY)
    assert g.sizes() == {"accounts": 0, "keys": 0, "crowds": 0}


def test_one_account_with_10000_ips_and_one_ip_with_100000_accounts_stay_bounded():
    g = graph()
    heavy = account_hash("heavy")
    for i in range(10_000):
        g.link(heavy, key_hash(IP, f"ip-{i}"), T0 + i)
    assert len(g.live_keys(heavy, T0 // MINUTE - 10_000)) == LinkRules().max_keys_per_account
    assert len(g.keys) == LinkRules().max_keys_per_account
    gateway = key_hash(IP, "gateway")
    for i in range(100_000):
        g.link(account_hash(f"u{i}"), gateway, T0)
    assert gateway in g.crowds and gateway not in g.keys
    assert len(g.accounts) == 1 + 0  # the crowd's members keep no link to it
    assert len(pickle.dumps(g)) < 10_000


def click(user: str, session: str, ts: int, ip: str | None, device_id: str | None = None) -> ClickEvent:
    return ClickEvent(event_id=f"{session}-{ts}", ts=ts, user_id=user, session_id=session, type="page_view",
                      channel="app", region="east", device="android", ip=ip, device_id=device_id)


def test_hostile_input_neither_crashes_the_engine_nor_grows_it_without_bound():
    engine = TrafficEngine(TrafficConfig())
    events = [click("one", f"s{i}", T0 + i, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(10_000)]
    events += [click(f"u{i}", f"t{i}", T0 + i, "1.2.3.4") for i in range(100_000)]
    events += [click(f"v{i}", f"w{i}", T0 + i, None) for i in range(1_000)]  # no IP at all
    events.append(PaymentEvent(event_id="p", ts=T0, payment_id="p", order_id="o", user_id="one", status="requested",
                               amount=1.0, method="card"))
    for i in range(0, len(events), 5_000):
        engine.process(events[i:i + 5_000], 0)
    out = engine.flush()
    assert out.flags == []
    sizes = engine.sizes()
    assert sizes["keys"] <= 40 and sizes["crowds"] == 1 and sizes["open_sessions"] == 0
    # A day later every profile is older than nothing new, and a horizon on, gone.
    engine.process([click("late", "late", T0 + 8 * DAY, "9.9.9.9")], 0)
    engine.flush()
    assert engine.sizes()["profiles"] <= 2 and engine.sizes()["crowds"] == 0


def test_a_flood_of_open_sessions_is_capped():
    engine = TrafficEngine(TrafficConfig(max_open_sessions=1_000))
    engine.process([click(f"u{i}", f"s{i}", T0 + 100 * i, None) for i in range(5_000)], 0)
    assert len(engine.open_sessions) <= 1_000
    assert "s4000" in engine.open_sessions and "s0" not in engine.open_sessions  # the oldest went first


def test_a_session_that_never_ends_keeps_bounded_stage_marks():
    """A bot clicking once a minute for a week stays one open session; the funnel stages it
    keeps per window stop at MAX_STAGE_WINDOWS."""
    from operators.traffic_behaviour import MAX_STAGE_WINDOWS

    engine = TrafficEngine(TrafficConfig())
    for day in range(7):
        engine.process([click("bot", "forever", T0 + day * DAY + m * MINUTE, "7.7.7.7") for m in range(1440)], 0)
    marks = engine.open_sessions["forever"].stages
    assert type(marks) is tuple and len(marks) == 2 * MAX_STAGE_WINDOWS
