"""The linked-account graph: accounts joined by what they share, on event time over a horizon.

Accounts and keys (an IP address, a device id, a card fingerprint) form a bipartite
graph; a link is "account A used key K", stamped with the minute it was last seen. A
link older than the horizon no longer counts (a ring shrinks as its links age out) and
is dropped by the next sweep.

**Rarity.** What two accounts share says more the fewer accounts share it. A key of kind
`k` used by `n` accounts within the horizon weighs

    weight = kind_weight[k] * (1 - ln(n) / ln(crowd_limit[k] + 1))

and links its accounts only while `n <= crowd_limit[k]`. Beyond that it is a *crowd*
(a campus or office NAT, a carrier's gateway, a shop-floor kiosk): it links nobody, and
its members are no longer kept (it stays a crowd until a whole horizon passes without a
new sighting). IPs weigh least and become crowds soonest (default: more than 8 accounts);
devices and cards, which ordinary people rarely share, weigh most and stay links up to
100 and 50 accounts. A component's *cohesion* is the summed weight of its keys' links
(a key shared by n accounts contributes n - 1 links of its weight) over members - 1: an
average link weight, high when accounts share devices or cards, low when they only
share a busy address.

**Bounded state.** An account keeps at most `max_keys_per_account` keys (the oldest
goes, and it leaves that key's members too): one account with 10,000 IPs costs 32 links.
A key keeps at most `crowd_limit + 1` members before it turns into a crowd marker: one IP
with 100,000 accounts costs one entry. Ring searches stop at `max_ring_members`.

Ids are hashed to 64-bit integers (the kind in the low bits) and links packed, so a
million accounts fit in a few hundred bytes each (see BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

IP, DEVICE, CARD = 0, 1, 2
KIND_NAMES = ("ip", "device", "card")
MINUTE_MS = 60_000
_MINUTE_MASK = (1 << 32) - 1
_LINK = struct.Struct("<QI")  # key hash, minute last seen


def account_hash(user_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(user_id.encode(), digest_size=8).digest(), "little")


def key_hash(kind: int, value: str) -> int:
    raw = int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little")
    return (raw & ~3) | kind


def kind_of(key: int) -> int:
    return key & 3


@dataclass(frozen=True)
class LinkRules:
    horizon_ms: int = 7 * 86_400_000
    crowd_limit: tuple[int, int, int] = (8, 100, 50)  # ip, device, card
    kind_weight: tuple[float, float, float] = (0.6, 1.0, 1.0)
    max_keys_per_account: int = 32
    max_ring_members: int = 2_000

    def __post_init__(self) -> None:
        if self.horizon_ms < MINUTE_MS:
            raise ValueError("the link horizon must be at least a minute")
        if min(self.crowd_limit) < 2:
            raise ValueError("a crowd limit below 2 would link nobody")

    def weight(self, kind: int, members: int) -> float:
        limit = self.crowd_limit[kind]
        if members < 2 or members > limit:
            return 0.0
        return self.kind_weight[kind] * (1.0 - math.log(members) / math.log(limit + 1))


class Component(NamedTuple):
    """The accounts linked to one account, as found now."""

    members: frozenset[int]
    cohesion: float
    shared_keys: tuple[int, int, int]  # linking keys per kind (ip, device, card)
    most_per_device: int  # the most accounts on one shared device
    truncated: bool  # the search stopped at max_ring_members


@dataclass
class LinkGraph:
    rules: LinkRules
    keys: dict[int, "int | dict[int, int]"] = field(default_factory=dict)  # key -> packed (account, minute) or {account: minute}
    crowds: dict[int, int] = field(default_factory=dict)  # key -> minute last seen
    accounts: dict[int, bytes] = field(default_factory=dict)  # account -> packed links (key, minute)

    @property
    def horizon_minutes(self) -> int:
        return self.rules.horizon_ms // MINUTE_MS

    # -- links ----------------------------------------------------------------------------
    def link(self, account: int, key: int, ts: int) -> None:
        minute = ts // MINUTE_MS
        oldest = minute - self.horizon_minutes
        crowds = self.crowds
        if key in crowds:
            if minute > crowds[key]:
                crowds[key] = minute
            return
        keys = self.keys
        entry = keys.get(key)
        if entry is None:
            keys[key] = account << 32 | minute
        elif type(entry) is int:
            other, seen = entry >> 32, entry & _MINUTE_MASK
            if other == account or seen < oldest:
                keys[key] = account << 32 | max(minute, seen if other == account else 0)
                if other != account:
                    self._forget(other, key)
            else:
                keys[key] = {other: seen, account: minute}
        else:
            if entry.get(account, -1) < minute:
                entry[account] = minute
            if len(entry) > self.rules.crowd_limit[kind_of(key)]:
                for member in [m for m, seen in entry.items() if seen < oldest]:
                    del entry[member]
                    self._forget(member, key)
                if len(entry) > self.rules.crowd_limit[kind_of(key)]:
                    # A crowd: it links nobody, so its members need not be kept.
                    del keys[key]
                    crowds[key] = minute
                    for member in entry:
                        self._forget(member, key)
                    return
        self._remember(account, key, minute)

    def _remember(self, account: int, key: int, minute: int) -> None:
        packed = self.accounts.get(account)
        links = {} if packed is None else dict(_LINK.iter_unpack(packed))
        if links.get(key, -1) >= minute:
            return
        links[key] = minute
        if len(links) > self.rules.max_keys_per_account:
            # The oldest link goes (ties: the smaller key), and the account leaves that key.
            oldest_key = min(links, key=lambda k: (links[k], k))
            del links[oldest_key]
            self._leave(oldest_key, account)
        self.accounts[account] = b"".join(_LINK.pack(k, m) for k, m in links.items())

    def _forget(self, account: int, key: int) -> None:
        """The account's side of a link that ended on the key's side."""
        packed = self.accounts.get(account)
        if packed is None:
            return
        links = [(k, m) for k, m in _LINK.iter_unpack(packed) if k != key]
        if links:
            self.accounts[account] = b"".join(_LINK.pack(k, m) for k, m in links)
        else:
            del self.accounts[account]

    def _leave(self, key: int, account: int) -> None:
        """The key's side of a link the account dropped."""
        entry = self.keys.get(key)
        if entry is None:
            return
        if type(entry) is int:
            if entry >> 32 == account:
                del self.keys[key]
            return
        entry.pop(account, None)
        if len(entry) == 1:
            (other, seen), = entry.items()
            self.keys[key] = other << 32 | seen

    # -- reading ---------------------------------------------------------------------------
    def live_members(self, key: int, oldest: int) -> list[int]:
        entry = self.keys.get(key)
        if entry is None or type(entry) is int:
            return []
        return sorted(m for m, seen in entry.items() if seen >= oldest)

    def live_keys(self, account: int, oldest: int) -> list[int]:
        packed = self.accounts.get(account)
        if packed is None:
            return []
        return [k for k, m in _LINK.iter_unpack(packed) if m >= oldest]

    def is_linked(self, account: int, now_ms: int) -> bool:
        """Cheap test: does the account share any live, non-crowd key with another account?"""
        oldest = now_ms // MINUTE_MS - self.horizon_minutes
        keys = self.keys
        for key in self.live_keys(account, oldest):
            entry = keys.get(key)
            if entry is not None and type(entry) is not int:
                if sum(1 for seen in entry.values() if seen >= oldest) >= 2:
                    return True
        return False

    def component(self, account: int, now_ms: int) -> Component:
        """Every account reachable over live linking keys (breadth first, in sorted order)."""
        rules = self.rules
        oldest = now_ms // MINUTE_MS - self.horizon_minutes
        members = {account}
        frontier = [account]
        seen_keys: set[int] = set()
        strength = 0.0
        per_kind = [0, 0, 0]
        most_per_device = 0
        truncated = False
        while frontier and not truncated:
            next_frontier = []
            for member in frontier:
                for key in sorted(self.live_keys(member, oldest)):
                    if key in seen_keys:
                        continue
                    seen_keys.add(key)
                    linked = self.live_members(key, oldest)
                    if len(linked) < 2:
                        continue
                    kind = kind_of(key)
                    strength += rules.weight(kind, len(linked)) * (len(linked) - 1)
                    per_kind[kind] += 1
                    if kind == DEVICE:
                        most_per_device = max(most_per_device, len(linked))
                    for other in linked:
                        if other not in members:
                            if len(members) >= rules.max_ring_members:
                                truncated = True
                                break
                            members.add(other)
                            next_frontier.append(other)
            frontier = next_frontier
        cohesion = strength / (len(members) - 1) if len(members) > 1 else 0.0
        return Component(frozenset(members), min(1.0, cohesion), (per_kind[0], per_kind[1], per_kind[2]),
                         most_per_device, truncated)

    # -- forgetting -------------------------------------------------------------------------
    def sweep(self, now_ms: int) -> None:
        """Drop every link older than the horizon, and crowds not seen for a horizon."""
        oldest = now_ms // MINUTE_MS - self.horizon_minutes
        for key in [k for k, seen in self.crowds.items() if seen < oldest]:
            del self.crowds[key]
        keys = self.keys
        for key in list(keys):
            entry = keys[key]
            if type(entry) is int:
                if entry & _MINUTE_MASK < oldest:
                    del keys[key]
                continue
            live = {m: seen for m, seen in entry.items() if seen >= oldest}
            if not live:
                del keys[key]
            elif len(live) == 1:
                (other, seen), = live.items()
                keys[key] = other << 32 | seen
            elif len(live) < len(entry):
                keys[key] = live
        accounts = self.accounts
        for account in list(accounts):
            packed = accounts[account]
            links = [(k, m) for k, m in _LINK.iter_unpack(packed) if m >= oldest and k not in self.crowds]
            if not links:
                del accounts[account]
            elif len(links) * _LINK.size < len(packed):
                accounts[account] = b"".join(_LINK.pack(k, m) for k, m in links)

    def sizes(self) -> dict[str, int]:
        return {"accounts": len(self.accounts), "keys": len(self.keys), "crowds": len(self.crowds)}


def link_all(graph: LinkGraph, account: int, keys: Iterable[int], ts: int) -> None:
    for key in keys:
        graph.link(account, key, ts)
