"""The input records of docs/contract.md as typed, immutable, validated records.

`parse_event(topic, obj)` turns a decoded JSON object into a record or raises
`InvalidEvent` with a reason short enough for a dead letter. Unknown extra fields
are ignored. JSON itself is handled in `state.serde`; this module never sees bytes.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import Any, Callable, ClassVar, Mapping

CLICK_TYPES = frozenset(
    {
        "page_view",
        "search",
        "product_view",
        "add_to_cart",
        "remove_from_cart",
        "checkout_start",
        "shipping_quote",
    }
)
ORDER_STATUSES = frozenset({"created", "paid", "cancelled", "refund_requested", "refunded"})
PAYMENT_STATUSES = frozenset({"requested", "succeeded", "failed", "chargeback"})
INVENTORY_KINDS = frozenset({"set", "restock", "adjust"})
STOCK_POOLS = frozenset({"spot", "presale"})
DEFAULT_CURRENCY = "CNY"

# -- what a number in an input can mean ---------------------------------------
# Anything outside these bounds is a dead letter with the reason, so no flow ever does
# arithmetic on (or encodes) a number the contract cannot mean: sums of bounded values
# stay far inside 64-bit integers and finite floats. Documented in the README (intake).
MAX_QUANTITY = 1_000_000_000  # |units| of a click, an order item, an inventory event, safety_stock
MAX_MONEY = 1e12  # amount, price, unit_price, shipping_fee: finite, 0 <= value <= this
MAX_SIGNAL = 1e12  # |value| of a numeric payment signal
MAX_SIGNALS = 256  # numeric signals per payment (each is a fraud-model feature)
MIN_TS_MS = 0  # event time (`ts`, `account_created_ts`): whole milliseconds since the epoch...
MAX_TS_MS = 4_102_444_800_000  # ...before 2100-01-01T00:00:00Z
MAX_ORDER_ITEMS = 1_000  # items of one order
MAX_JSON_DEPTH = 1_024  # nesting of a message (state.serde refuses deeper ones before parsing)
# Strings become Redis keys, metric dimensions and alert keys, copied into outputs: a 900 kB
# channel name would make an input-count record too large for Kafka.
MAX_STRING_CHARS = 1_000  # every string field: ids, dimensions, free text, experiment and signal names
MAX_EXPERIMENTS = 64  # entries of a click's `experiment` map


class InvalidEvent(ValueError):
    """The input cannot be used; the message is the dead-letter reason."""


# -- field readers: each returns the typed value or raises InvalidEvent ------


def _req_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise InvalidEvent(f"missing field '{name}'")
    if not isinstance(value, str) or not value:
        raise InvalidEvent(f"field '{name}' must be a non-empty string, got {_show(value)}")
    return _short(name, value)


def _opt_str(obj: Mapping[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidEvent(f"field '{name}' must be a string, got {_show(value)}")
    return _short(name, value)


def _short(name: str, value: str) -> str:
    if len(value) > MAX_STRING_CHARS:
        raise InvalidEvent(f"field '{name}' has {len(value)} characters, more than {MAX_STRING_CHARS}")
    return value


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"field '{name}' must be an integer, got {_show(value)}")
    if isinstance(value, float):
        if not value.is_integer():
            raise InvalidEvent(f"field '{name}' must be an integer, got {_show(value)}")
        value = int(value)
    return value


def _req_int(obj: Mapping[str, Any], name: str, minimum: int, maximum: int) -> int:
    value = obj.get(name)
    if value is None:
        raise InvalidEvent(f"missing field '{name}'")
    number = _as_int(name, value)
    if number < minimum:
        raise InvalidEvent(f"field '{name}' must be >= {minimum}, got {_show(number)}")
    if number > maximum:
        raise InvalidEvent(f"field '{name}' must be <= {maximum}, got {_show(number)}")
    return number


def _opt_int(obj: Mapping[str, Any], name: str, minimum: int, maximum: int) -> int | None:
    if obj.get(name) is None:
        return None
    return _req_int(obj, name, minimum, maximum)


def _as_money(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidEvent(f"field '{name}' must be a number, got {_show(value)}")
    if not 0 <= value <= MAX_MONEY:  # NaN fails both comparisons
        raise InvalidEvent(f"field '{name}' must be a finite number >= 0 and <= {MAX_MONEY:.0f}, got {_show(value)}")
    return float(value)


def _req_money(obj: Mapping[str, Any], name: str) -> float:
    value = obj.get(name)
    if value is None:
        raise InvalidEvent(f"missing field '{name}'")
    return _as_money(name, value)


def _opt_money(obj: Mapping[str, Any], name: str) -> float | None:
    value = obj.get(name)
    return None if value is None else _as_money(name, value)


def _req_choice(obj: Mapping[str, Any], name: str, allowed: frozenset[str]) -> str:
    value = _req_str(obj, name)
    if value not in allowed:
        raise InvalidEvent(f"field '{name}' has unknown value {_show(value)}")
    return value


def _opt_choice(obj: Mapping[str, Any], name: str, allowed: frozenset[str], default: str) -> str:
    if obj.get(name) is None:
        return default
    return _req_choice(obj, name, allowed)


_SHOW = reprlib.Repr()  # bounded in depth and length: hostile values may be huge or nested 1,000 deep
_SHOW.maxlevel, _SHOW.maxstring, _SHOW.maxother, _SHOW.maxlong = 2, 40, 40, 40


def _show(value: Any) -> str:
    text = _SHOW.repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def event_time(obj: Mapping[str, Any]) -> int:
    """The checked reader's event time of a record: field `ts`, whole milliseconds, MIN_TS_MS..MAX_TS_MS."""
    return _req_int(obj, "ts", MIN_TS_MS, MAX_TS_MS)


# -- the fast path -------------------------------------------------------------
# Clicks, orders, inventory and prices are decoded once per message by every flow that reads them, so
# their common shape (exact JSON types, every value in range) is checked inline and the
# record built by writing its slots directly: a frozen dataclass's __init__ pays one
# object.__setattr__ per field, twice the cost. Anything else (a float count, a bad
# value, a missing field) takes the field readers above, which give the same record or
# the same InvalidEvent as before.

# Every bound below is the checked readers' bound: what they refuse, the fast path sends to them.
_MAX_MONEY_INT = int(MAX_MONEY)  # exact as a float (below 2**53)
_MAX_STR = MAX_STRING_CHARS


def _money_or_none(value: Any) -> float | None:
    """A valid money value as the readers would return it; None when the slow path must judge."""
    if type(value) is float:
        return value if 0.0 <= value <= MAX_MONEY else None  # NaN fails both comparisons
    if type(value) is int and 0 <= value <= _MAX_MONEY_INT:
        return float(value)
    return None


def _slot_writer(cls: type) -> Callable[..., Any]:
    """cls(*values) for values already validated, without the frozen __init__'s per-field cost."""
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    namespace.update({f"_set_{name}": cls.__dict__[name].__set__ for name in names})
    body = "".join(f"    _set_{name}(record, {name})\n" for name in names)
    exec(f"def build({', '.join(names)}):\n    record = _new(_cls)\n{body}    return record\n", namespace)
    return namespace["build"]


# -- records ----------------------------------------------------------------


class _Record:
    """Shared encoding: a record becomes the contract's JSON object, None fields left out."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, tuple):
                value = [v.to_dict() if isinstance(v, _Record) else v for v in value]
            elif isinstance(value, MappingProxyType):
                value = dict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True, slots=True)
class ClickEvent(_Record):
    TOPIC: ClassVar[str] = "clickstream"

    event_id: str
    ts: int
    user_id: str
    session_id: str
    type: str
    channel: str
    region: str
    device: str
    sku: str | None = None
    category: str | None = None
    price: float | None = None
    quantity: int | None = None
    query: str | None = None
    ip: str | None = None
    experiment: Mapping[str, str] | None = None
    device_id: str | None = None  # the app's or browser's device id, when the storefront knows it

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "ClickEvent":
        return _click_event_fast(obj) or cls._from_dict_checked(obj)

    @classmethod
    def _from_dict_checked(cls, obj: Mapping[str, Any]) -> "ClickEvent":
        experiment = obj.get("experiment")
        if experiment is not None:
            if not isinstance(experiment, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in experiment.items()
            ):
                raise InvalidEvent("field 'experiment' must be an object of name -> variant strings")
            if len(experiment) > MAX_EXPERIMENTS:
                raise InvalidEvent(f"field 'experiment' has {len(experiment)} entries, more than {MAX_EXPERIMENTS}")
            for name, variant in experiment.items():
                _short("experiment", name), _short("experiment", variant)
        return cls(
            event_id=_req_str(obj, "event_id"),
            ts=event_time(obj),
            user_id=_req_str(obj, "user_id"),
            session_id=_req_str(obj, "session_id"),
            type=_req_choice(obj, "type", CLICK_TYPES),
            channel=_req_str(obj, "channel"),
            region=_req_str(obj, "region"),
            device=_req_str(obj, "device"),
            sku=_opt_str(obj, "sku"),
            category=_opt_str(obj, "category"),
            price=_opt_money(obj, "price"),
            quantity=_opt_int(obj, "quantity", 0, MAX_QUANTITY),
            query=_opt_str(obj, "query"),
            ip=_opt_str(obj, "ip"),
            experiment=None if experiment is None else MappingProxyType(experiment),
            device_id=_opt_str(obj, "device_id"),
        )


@dataclass(frozen=True, slots=True)
class OrderItem(_Record):
    sku: str
    quantity: int
    unit_price: float
    pool: str = "spot"

    @classmethod
    def from_dict(cls, obj: Any) -> "OrderItem":
        values = _order_item_values_fast(obj)
        return cls._from_dict_checked(obj) if values is None else _new_order_item(*values)

    @classmethod
    def _from_dict_checked(cls, obj: Any) -> "OrderItem":
        if not isinstance(obj, dict):
            raise InvalidEvent(f"each of 'items' must be an object, got {_show(obj)}")
        return cls(
            sku=_req_str(obj, "sku"),
            quantity=_req_int(obj, "quantity", 1, MAX_QUANTITY),
            unit_price=_req_money(obj, "unit_price"),
            pool=_opt_choice(obj, "pool", STOCK_POOLS, "spot"),
        )


@dataclass(frozen=True, slots=True)
class OrderEvent(_Record):
    TOPIC: ClassVar[str] = "orders"

    event_id: str
    ts: int
    order_id: str
    user_id: str
    status: str
    items: tuple[OrderItem, ...]
    amount: float
    currency: str = DEFAULT_CURRENCY
    session_id: str | None = None
    channel: str | None = None
    region: str | None = None
    coupon_code: str | None = None
    shipping_fee: float | None = None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "OrderEvent":
        return _order_event_fast(obj) or cls._from_dict_checked(obj)

    @classmethod
    def _from_dict_checked(cls, obj: Mapping[str, Any]) -> "OrderEvent":
        items = obj.get("items")
        if items is None:
            raise InvalidEvent("missing field 'items'")
        if not isinstance(items, list):
            raise InvalidEvent(f"field 'items' must be a list, got {_show(items)}")
        if len(items) > MAX_ORDER_ITEMS:
            raise InvalidEvent(f"field 'items' has {len(items)} items, more than {MAX_ORDER_ITEMS}")
        return cls(
            event_id=_req_str(obj, "event_id"),
            ts=event_time(obj),
            order_id=_req_str(obj, "order_id"),
            user_id=_req_str(obj, "user_id"),
            status=_req_choice(obj, "status", ORDER_STATUSES),
            items=tuple(OrderItem.from_dict(item) for item in items),
            amount=_req_money(obj, "amount"),
            currency=_opt_str(obj, "currency") or DEFAULT_CURRENCY,
            session_id=_opt_str(obj, "session_id"),
            channel=_opt_str(obj, "channel"),
            region=_opt_str(obj, "region"),
            coupon_code=_opt_str(obj, "coupon_code"),
            shipping_fee=_opt_money(obj, "shipping_fee"),
        )


@dataclass(frozen=True, slots=True)
class PaymentEvent(_Record):
    TOPIC: ClassVar[str] = "payments"

    event_id: str
    ts: int
    payment_id: str
    order_id: str
    user_id: str
    status: str
    amount: float
    method: str
    currency: str = DEFAULT_CURRENCY
    card_fingerprint: str | None = None
    card_bin: str | None = None
    card_last4: str | None = None
    device_id: str | None = None
    ip: str | None = None
    country: str | None = None
    billing_country: str | None = None
    account_created_ts: int | None = None
    failure_reason: str | None = None
    signals: Mapping[str, float] | None = None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "PaymentEvent":
        return cls(
            event_id=_req_str(obj, "event_id"),
            ts=event_time(obj),
            payment_id=_req_str(obj, "payment_id"),
            order_id=_req_str(obj, "order_id"),
            user_id=_req_str(obj, "user_id"),
            status=_req_choice(obj, "status", PAYMENT_STATUSES),
            amount=_req_money(obj, "amount"),
            method=_req_str(obj, "method"),
            currency=_opt_str(obj, "currency") or DEFAULT_CURRENCY,
            card_fingerprint=_opt_str(obj, "card_fingerprint"),
            card_bin=_opt_str(obj, "card_bin"),
            card_last4=_opt_str(obj, "card_last4"),
            device_id=_opt_str(obj, "device_id"),
            ip=_opt_str(obj, "ip"),
            country=_opt_str(obj, "country"),
            billing_country=_opt_str(obj, "billing_country"),
            account_created_ts=_opt_int(obj, "account_created_ts", MIN_TS_MS, MAX_TS_MS),
            failure_reason=_opt_str(obj, "failure_reason"),
            signals=_numeric_signals(obj.get("signals")),
        )


def _numeric_signals(value: Any) -> Mapping[str, float] | None:
    """Keep every numeric signal; upstream providers may add non-numeric ones we ignore.
    A numeric one the model cannot use (beyond MAX_SIGNAL, or too many) makes a dead letter."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidEvent(f"field 'signals' must be an object, got {_show(value)}")
    signals = {}
    for name, v in value.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            _short("signals", name)
            if not -MAX_SIGNAL <= v <= MAX_SIGNAL:  # NaN fails both comparisons
                raise InvalidEvent(f"signal {_show(name)} must be a finite number from -{MAX_SIGNAL:.0f} "
                                   f"to {MAX_SIGNAL:.0f}, got {_show(v)}")
            signals[name] = float(v)
    if len(signals) > MAX_SIGNALS:
        raise InvalidEvent(f"field 'signals' has {len(signals)} numeric signals, more than {MAX_SIGNALS}")
    return MappingProxyType(signals)


@dataclass(frozen=True, slots=True)
class InventoryEvent(_Record):
    TOPIC: ClassVar[str] = "inventory"

    event_id: str
    ts: int
    sku: str
    kind: str
    quantity: int
    pool: str = "spot"
    safety_stock: int | None = None
    warehouse: str | None = None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "InventoryEvent":
        return _inventory_event_fast(obj) or cls._from_dict_checked(obj)

    @classmethod
    def _from_dict_checked(cls, obj: Mapping[str, Any]) -> "InventoryEvent":
        kind = _req_choice(obj, "kind", INVENTORY_KINDS)
        # `adjust` carries a signed delta; `set` and `restock` cannot be negative.
        minimum = -MAX_QUANTITY if kind == "adjust" else 0
        return cls(
            event_id=_req_str(obj, "event_id"),
            ts=event_time(obj),
            sku=_req_str(obj, "sku"),
            kind=kind,
            quantity=_req_int(obj, "quantity", minimum, MAX_QUANTITY),
            pool=_opt_choice(obj, "pool", STOCK_POOLS, "spot"),
            safety_stock=_opt_int(obj, "safety_stock", 0, MAX_QUANTITY),
            warehouse=_opt_str(obj, "warehouse"),
        )


_new_click_event = _slot_writer(ClickEvent)
_new_order_item = _slot_writer(OrderItem)
_new_order_event = _slot_writer(OrderEvent)
_new_inventory_event = _slot_writer(InventoryEvent)


def _click_event_fast(obj: Mapping[str, Any]) -> ClickEvent | None:
    """The click when it has the common shape, else None (the checked reader decides).
    Clicks are most of the traffic, and every flow that reads them decodes each one."""
    values = click_values_fast(obj)
    if values is None:
        return None
    experiment = values[14]
    if experiment is not None:
        return _new_click_event(*values[:14], MappingProxyType(experiment), values[15])
    return _new_click_event(*values)


def click_values_fast(obj: Any) -> tuple | None:
    """A click's field values in `ClickEvent` order (`experiment` a plain dict) when the
    JSON object has the common shape, else None. For a flow that needs a few fields of
    every click without the record: None means exactly that `ClickEvent.from_dict` must
    judge (it gives the same values, or an InvalidEvent)."""
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id = get("event_id")
    ts = get("ts")
    user_id = get("user_id")
    session_id = get("session_id")
    kind = get("type")
    channel = get("channel")
    region = get("region")
    device = get("device")
    sku = get("sku")
    category = get("category")
    price = get("price")
    quantity = get("quantity")
    query = get("query")
    ip = get("ip")
    experiment = get("experiment")
    device_id = get("device_id")
    if price is not None:
        price = _money_or_none(price)
        if price is None:
            return None
    if experiment is not None:
        if type(experiment) is not dict or len(experiment) > MAX_EXPERIMENTS:
            return None
        for name, variant in experiment.items():
            if type(name) is not str or type(variant) is not str or len(name) > _MAX_STR or len(variant) > _MAX_STR:
                return None
    if not (
        type(event_id) is str and event_id
        and type(ts) is int and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(user_id) is str and user_id
        and type(session_id) is str and session_id
        and type(kind) is str and kind in CLICK_TYPES
        and type(channel) is str and channel
        and type(region) is str and region
        and type(device) is str and device
        and (sku is None or type(sku) is str)
        and (category is None or type(category) is str)
        and (quantity is None or (type(quantity) is int and 0 <= quantity <= MAX_QUANTITY))
        and (query is None or type(query) is str)
        and (ip is None or type(ip) is str)
        and (device_id is None or type(device_id) is str)
    ):
        return None
    # Within the bound together, so each one is (cheaper than a bound per field); else the checked reader judges.
    if (len(event_id) + len(user_id) + len(session_id) + len(channel) + len(region) + len(device)
            + (sku is not None and len(sku)) + (category is not None and len(category))
            + (query is not None and len(query)) + (ip is not None and len(ip))
            + (device_id is not None and len(device_id))) > _MAX_STR:
        return None
    return (event_id, ts, user_id, session_id, kind, channel, region, device, sku, category, price, quantity, query,
            ip, experiment, device_id)


def _order_item_values_fast(obj: Any) -> tuple | None:
    """(sku, quantity, unit_price, pool) of an item with the common shape, else None (the checked reader decides)."""
    if type(obj) is not dict:
        return None
    sku = obj.get("sku")
    quantity = obj.get("quantity")
    pool = obj.get("pool")
    if pool is None:
        pool = "spot"
    elif type(pool) is not str or pool not in STOCK_POOLS:
        return None
    unit_price = _money_or_none(obj.get("unit_price"))
    if (type(sku) is not str or not 0 < len(sku) <= _MAX_STR or type(quantity) is not int
            or not 1 <= quantity <= MAX_QUANTITY or unit_price is None):
        return None
    return sku, quantity, unit_price, pool


def _order_event_fast(obj: Mapping[str, Any]) -> OrderEvent | None:
    values = order_values_fast(obj)
    if values is None:
        return None
    items = tuple([_new_order_item(*item) for item in values[5]])
    return _new_order_event(*values[:5], items, *values[6:])


def order_values_fast(obj: Any) -> tuple | None:
    """An order event's field values, in `OrderEvent` order with the items as value tuples,
    when it has the common shape; None sends it to the checked reader. For readers that
    need a few fields of every order without building the records (the churn replay)."""
    if type(obj) is not dict:
        return None
    get = obj.get
    raw_items = get("items")
    if type(raw_items) is not list or len(raw_items) > MAX_ORDER_ITEMS:
        return None
    items = []
    for raw_item in raw_items:
        item = _order_item_values_fast(raw_item)
        if item is None:
            return None
        items.append(item)
    event_id = get("event_id")
    ts = get("ts")
    order_id = get("order_id")
    user_id = get("user_id")
    status = get("status")
    amount = _money_or_none(get("amount"))
    currency = get("currency")
    session_id = get("session_id")
    channel = get("channel")
    region = get("region")
    coupon_code = get("coupon_code")
    shipping_fee = get("shipping_fee")
    if shipping_fee is not None:
        shipping_fee = _money_or_none(shipping_fee)
        if shipping_fee is None:
            return None
    if currency is None or currency == "":
        currency = DEFAULT_CURRENCY
    if not (
        type(event_id) is str and event_id
        and type(ts) is int and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(order_id) is str and order_id
        and type(user_id) is str and user_id
        and type(status) is str and status in ORDER_STATUSES
        and amount is not None
        and type(currency) is str
        and (session_id is None or type(session_id) is str)
        and (channel is None or type(channel) is str)
        and (region is None or type(region) is str)
        and (coupon_code is None or type(coupon_code) is str)
    ):
        return None
    # Within the bound together, so each one is; else the checked reader judges.
    if (len(event_id) + len(order_id) + len(user_id) + len(currency) + (session_id is not None and len(session_id))
            + (channel is not None and len(channel)) + (region is not None and len(region))
            + (coupon_code is not None and len(coupon_code))) > _MAX_STR:
        return None
    return (event_id, ts, order_id, user_id, status, items, amount, currency, session_id, channel, region,
            coupon_code, shipping_fee)


def _inventory_event_fast(obj: Mapping[str, Any]) -> InventoryEvent | None:
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id = get("event_id")
    ts = get("ts")
    sku = get("sku")
    kind = get("kind")
    quantity = get("quantity")
    pool = get("pool")
    safety_stock = get("safety_stock")
    warehouse = get("warehouse")
    if pool is None:
        pool = "spot"
    if not (
        type(event_id) is str and 0 < len(event_id) <= _MAX_STR
        and type(ts) is int and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(sku) is str and 0 < len(sku) <= _MAX_STR
        and type(kind) is str and kind in INVENTORY_KINDS
        and type(quantity) is int and -MAX_QUANTITY <= quantity <= MAX_QUANTITY and (quantity >= 0 or kind == "adjust")
        and type(pool) is str and pool in STOCK_POOLS
        and (safety_stock is None or (type(safety_stock) is int and 0 <= safety_stock <= MAX_QUANTITY))
        and (warehouse is None or (type(warehouse) is str and len(warehouse) <= _MAX_STR))
    ):
        return None
    return _new_inventory_event(event_id, ts, sku, kind, quantity, pool, safety_stock, warehouse)


@dataclass(frozen=True, slots=True)
class PriceEvent(_Record):
    """One price observation: our own (`seller` = `self`, maybe with our `floor`) or a rival's,
    from a crawler. A price must be above zero: a zero or negative price is a dead letter."""

    TOPIC: ClassVar[str] = "prices"
    OWN_SELLER: ClassVar[str] = "self"

    event_id: str
    ts: int
    sku: str
    seller: str
    price: float
    currency: str = DEFAULT_CURRENCY
    list_price: float | None = None
    floor: float | None = None  # the lowest price we may sell at (our own observations only)
    promo: str | None = None  # the rival's promotion, if any (`true` reads as "promo")

    @property
    def own(self) -> bool:
        return self.seller == self.OWN_SELLER

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> "PriceEvent":
        return _price_event_fast(obj) or cls._from_dict_checked(obj)

    @classmethod
    def _from_dict_checked(cls, obj: Mapping[str, Any]) -> "PriceEvent":
        price = _req_money(obj, "price")
        if price <= 0:
            raise InvalidEvent(f"field 'price' must be above 0, got {_show(price)}")
        floor = _opt_money(obj, "floor")
        if floor is not None and floor <= 0:
            raise InvalidEvent(f"field 'floor' must be above 0, got {_show(floor)}")
        return cls(
            event_id=_req_str(obj, "event_id"),
            ts=event_time(obj),
            sku=_req_str(obj, "sku"),
            seller=_req_str(obj, "seller"),
            price=price,
            currency=_opt_str(obj, "currency") or DEFAULT_CURRENCY,
            list_price=_opt_money(obj, "list_price"),
            floor=floor,
            promo=_promo(obj.get("promo")),
        )


_new_price_event = _slot_writer(PriceEvent)


def _price_event_fast(obj: Mapping[str, Any]) -> PriceEvent | None:
    """The price observation when it has the common shape, else None (the checked reader
    decides). A crawler's feed is tens of thousands of observations a second."""
    if type(obj) is not dict:
        return None
    get = obj.get
    event_id = get("event_id")
    ts = get("ts")
    sku = get("sku")
    seller = get("seller")
    price = _money_or_none(get("price"))
    currency = get("currency")
    list_price = get("list_price")
    floor = get("floor")
    promo = get("promo")
    if currency is None:
        currency = DEFAULT_CURRENCY
    if list_price is not None:
        list_price = _money_or_none(list_price)
        if list_price is None:
            return None
    if floor is not None:
        floor = _money_or_none(floor)
        if floor is None or floor <= 0:
            return None
    if not (
        type(event_id) is str and 0 < len(event_id) <= _MAX_STR
        and type(ts) is int and MIN_TS_MS <= ts <= MAX_TS_MS
        and type(sku) is str and 0 < len(sku) <= _MAX_STR
        and type(seller) is str and 0 < len(seller) <= _MAX_STR
        and price is not None and price > 0
        and type(currency) is str and 0 < len(currency) <= _MAX_STR
        and (promo is None or (type(promo) is str and 0 < len(promo) <= _MAX_STR))
    ):
        return None
    return _new_price_event(event_id, ts, sku, seller, price, currency, list_price, floor, promo)


def _promo(value: Any) -> str | None:
    """`promo` is the promotion's name, or a plain flag: true means "promo", false none."""
    if value is None or value is False:
        return None
    if value is True:
        return "promo"
    if not isinstance(value, str):
        raise InvalidEvent(f"field 'promo' must be a string or a boolean, got {_show(value)}")
    return _short("promo", value) or None


InputEvent = ClickEvent | OrderEvent | PaymentEvent | InventoryEvent | PriceEvent

# Contract topic name -> the record it carries.
RECORD_FOR_TOPIC: dict[str, Callable[[Mapping[str, Any]], InputEvent]] = {
    record.TOPIC: record.from_dict for record in (ClickEvent, OrderEvent, PaymentEvent, InventoryEvent, PriceEvent)
}


def parse_event(topic: str, obj: Any) -> InputEvent:
    """Validate one decoded JSON value from contract topic `topic`."""
    if not isinstance(obj, dict):
        raise InvalidEvent(f"expected a JSON object, got {type(obj).__name__}")
    try:
        parser = RECORD_FOR_TOPIC[topic]
    except KeyError:
        raise InvalidEvent(f"no record type for topic {_show(topic)}") from None
    return parser(obj)
