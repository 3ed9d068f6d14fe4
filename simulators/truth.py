"""Ground truth: what the simulator knows about the traffic it generated.

Each record is a frozen dataclass with a `kind` and an event-time `ts`; `to_dict()`
gives the JSON-lines form `{"kind": ..., "ts": ..., ...}`. A simulation releases
records in event-time order as its output passes their `ts`, so a run cut short
(`--max-events`) has truth for what it produced. Kinds:

- `cart_abandoned`  a cart left unpaid: `ts` is the shopper's last action, with
                    the stage (cart/checkout/payment) and the visible reason.
- `cart_recovered`  an abandoned cart bought later without help: `ts` = paid.
- `fraud_payment`   every payment attempt made by a fraudster (`ts` = requested),
                    with its pattern and the chargeback time if one is in the run.
- `friendly_chargeback`  a chargeback on a legitimate payment (label noise).
- `stockout` / `stock_restored`  a SKU pool's level reached 0 / left 0 again,
                    at the `ts` of the order or inventory event that did it.
- `incident`        a scenario window (`start_ts`..`end_ts`, `ts` = start).
- `lapsing_customer`  a shopper whose visit rate is decaying (at first visit).
- `bad_event`       a malformed message injected on purpose (`--bad-rate`).
- `ring_member`     an account of a brushing ring or click farm (at its first session).
- `fake_order`      an order placed by a brushing ring (`ts` = created), with its SKU,
                    payment time and refund time if the refund falls inside the run.
- `fake_session`    a click-farm session (`ts` = its first click), with the SKUs viewed.
- `price_undercut`  (`price_war`) a rival dropped a SKU of ours well under our price:
                    `ts` = the rival's change (not the crawl that saw it), until `end_ts`.
- `price_promo_wave`  (`price_war`) a rival started promotions on many of our SKUs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Mapping

from state.serde import dumps


class _Truth:
    __slots__ = ()
    kind: ClassVar[str]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class CartAbandoned(_Truth):
    kind: ClassVar[str] = "cart_abandoned"
    ts: int
    user_id: str
    session_id: str
    stage: str  # cart | checkout | payment
    reason: str  # left | comparison | shipping_fee | out_of_stock | left_at_payment | payment_failed | channel_outage
    skus: tuple[str, ...]
    value: float
    channel: str
    visit: str  # normal | new (account made this visit) | flash | stolen_card | account_takeover
    order_id: str | None = None  # set when an order was created but never paid


@dataclass(frozen=True, slots=True)
class CartRecovered(_Truth):
    kind: ClassVar[str] = "cart_recovered"
    ts: int
    user_id: str
    session_id: str  # the session that abandoned the cart
    abandoned_ts: int
    recovery_session_id: str
    order_id: str


@dataclass(frozen=True, slots=True)
class FraudPayment(_Truth):
    kind: ClassVar[str] = "fraud_payment"
    ts: int
    payment_id: str
    order_id: str
    user_id: str
    pattern: str  # card_testing | stolen_card | account_takeover
    amount: float
    outcome: str  # succeeded | failed
    device_id: str
    ip: str
    chargeback_ts: int | None = None  # only when the chargeback falls inside the run
    burst_id: str | None = None


@dataclass(frozen=True, slots=True)
class FriendlyChargeback(_Truth):
    kind: ClassVar[str] = "friendly_chargeback"
    ts: int  # the chargeback's event time
    payment_id: str
    order_id: str
    user_id: str
    paid_ts: int


@dataclass(frozen=True, slots=True)
class Stockout(_Truth):
    kind: ClassVar[str] = "stockout"
    ts: int
    sku: str
    pool: str


@dataclass(frozen=True, slots=True)
class StockRestored(_Truth):
    kind: ClassVar[str] = "stock_restored"
    ts: int
    sku: str
    pool: str


@dataclass(frozen=True, slots=True)
class Incident(_Truth):
    kind: ClassVar[str] = "incident"
    ts: int
    name: str  # double11 | flash_sale | card_testing | payment_outage | traffic_drop
    start_ts: int
    end_ts: int
    detail: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class LapsingCustomer(_Truth):
    kind: ClassVar[str] = "lapsing_customer"
    ts: int
    user_id: str
    prior_orders: int
    last_order_ts: int | None
    half_life_days: float


@dataclass(frozen=True, slots=True)
class BadEvent(_Truth):
    kind: ClassVar[str] = "bad_event"
    ts: int
    topic: str
    topic_index: int  # position among this run's messages on `topic` (the offset on a fresh 1-partition topic)
    defect: str  # bad_json | missing_field | wrong_type | unknown_value | negative_quantity
    raw: str  # as dead letters show it: UTF-8 text, or base64 when raw_encoding says so
    raw_encoding: str = "utf-8"
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class RingMember(_Truth):
    kind: ClassVar[str] = "ring_member"
    ts: int
    ring_id: str
    user_id: str
    ring_kind: str  # brushing | click_farm


@dataclass(frozen=True, slots=True)
class FakeOrder(_Truth):
    kind: ClassVar[str] = "fake_order"
    ts: int
    ring_id: str
    order_id: str
    user_id: str
    session_id: str
    sku: str
    amount: float
    paid_ts: int
    refunded_ts: int | None = None


@dataclass(frozen=True, slots=True)
class FakeSession(_Truth):
    kind: ClassVar[str] = "fake_session"
    ts: int
    ring_id: str
    session_id: str
    user_id: str
    skus: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PriceUndercut(_Truth):
    kind: ClassVar[str] = "price_undercut"
    ts: int  # the rival changed its price
    sku: str
    rival: str
    end_ts: int  # ... and went back (or the run ended)
    price: float
    our_price: float


@dataclass(frozen=True, slots=True)
class PromoWave(_Truth):
    kind: ClassVar[str] = "price_promo_wave"
    ts: int  # the first SKU's promotion may start up to three minutes later
    rival: str
    skus: tuple[str, ...]


TruthRecord = (CartAbandoned | CartRecovered | FraudPayment | FriendlyChargeback | Stockout
               | StockRestored | Incident | LapsingCustomer | BadEvent | RingMember | FakeOrder | FakeSession
               | PriceUndercut | PromoWave)


class TruthWriter:
    """Ground truth as JSON lines, one record per line, written as records are released."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("wb")
        self.count = 0

    def write(self, record: TruthRecord) -> None:
        self._file.write(dumps(record.to_dict()) + b"\n")
        self.count += 1

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "TruthWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
