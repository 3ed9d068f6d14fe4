"""alerts: the on-call router, and the detectors no other flow owns.

Reads the internal `alert-candidates` topic (every detector's candidates) and the
intake flow's `{"metric": "input"}` windows on `metrics`; owns the contract's
`alerts` topic and the Redis keys `alerts:active`, `stream:alerts` and (clearing
only) `alerts:ack:{dedup_key}`.

    records ─ decode ─┬─ input windows ─┬─ detectors (traffic.drop, input.dead_letters) ─┐
                      │                 └─ stream ticks ───────────────────────────────┤
      lag poller ─────┼──────────────────── detectors (lag) ──────────────────────────┤
                      └─ candidates ──────────────────────────────────────────────── router ─ alerts, Redis

Both stateful steps hold one key (`all`): the whole alert volume is small (a storm
of 100,000 candidates a minute is ~1,700/s, coalesced per batch), and one owner
gives one stream-wide event-time clock for escalations and reminders.

With expected producers (`SHOPSTREAM_ALERT_PRODUCERS`, set by `shopstream run`) the
router holds what they send and applies it in event-time order up to their progress
markers (`operators/alert_hold.py`); the intake's input windows then come from
`alert-candidates` too (keyed `intake`, with markers) instead of `metrics`.

Run it the Bytewax way: `python -m bytewax.run flows.alerts:flow -r DIR -s 5 -b 0`.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, Source, StatelessSourcePartition
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from operators.alert_detectors import (
    DeadLetterConfig,
    DeadLetterDetector,
    InputDetectors,
    InputWindow,
    LagConfig,
    LagDetector,
    LagSample,
    TrafficDropConfig,
    TrafficDropDetector,
)
from operators.alert_router import (
    Ack,
    AckCleared,
    AckLookup,
    ActiveAlert,
    AlertMessage,
    AlertRouter,
    GroupKeys,
    RouterConfig,
    RouterOutput,
    StreamTick,
    coalesce,
)
from operators.alerts import AlertCandidate
from operators.clock import Clock, from_ms, wall_clock_ms
from shopstream.settings import Settings
from operators.alert_hold import ProgressMarker, ReleaseGate, Sourced
from state.alert_candidates import INTAKE
from state.alert_candidates import TOPIC as CANDIDATES_TOPIC
from state.alert_candidates import decode_record as decode_candidate_record
from state.kafka import InputRecord, KafkaInputSource, KafkaOutputSink, OutboundMessage
from state.redis_store import (
    DeleteHashField,
    DeleteUnlessNewer,
    KeyReader,
    RedisSink,
    RedisWrite,
    SetHashField,
    SetValue,
    StreamAddOnce,
)
from state.serde import dumps, loads

log = logging.getLogger(__name__)


INPUT_TOPICS = (CANDIDATES_TOPIC, "metrics")
ACTIVE_KEY = "alerts:active"
STREAM_KEY = "stream:alerts"


def ack_key(dedup_key: str) -> str:
    return f"alerts:ack:{dedup_key}"


def group_key(rule: str) -> str:
    """Every key of the rule's latest grouped message (README: Alert storms)."""
    return f"alerts:group:{rule}"


@dataclass(frozen=True)
class AlertsConfig:
    router: RouterConfig = field(default_factory=RouterConfig)
    traffic: TrafficDropConfig = field(default_factory=TrafficDropConfig)
    dead_letters: DeadLetterConfig = field(default_factory=DeadLetterConfig)
    lag: LagConfig = field(default_factory=LagConfig)
    lag_endpoints: tuple[tuple[str, int], ...] = ()  # (flow name, dataflow API port on loopback)
    lag_poll_ms: int = 5_000
    producers: tuple[str, ...] = ()  # flows whose progress markers the router waits for; () = no hold
    producer_timeout_ms: int = 60_000  # an expected producer silent this long (wall time) is down
    # `stream:alerts` dedupe keys must outlive the longest replay after a crash.
    stream_dedupe_ttl_s: int = 7 * 24 * 3600
    stream_max_len: int = 100_000

    @classmethod
    def from_settings(cls, settings: Settings) -> "AlertsConfig":
        return cls(
            router=RouterConfig(
                escalate_after_ms=settings.alert_escalate_s * 1000,
                warning_limit_ms=settings.alert_warning_limit_s * 1000,
                reminder_ms=settings.alert_reminder_s * 1000,
                group_wait_ms=settings.alert_group_wait_s * 1000,
                group_interval_ms=settings.alert_group_interval_s * 1000,
                rule_max_per_min=settings.alert_rule_max_per_min,
            ),
            traffic=TrafficDropConfig(drop_ratio=settings.alert_traffic_drop_pct / 100),
            lag=LagConfig(
                threshold_messages=settings.alert_lag_messages,
                sustain_ms=settings.alert_lag_sustain_s * 1000,
            ),
            lag_endpoints=lag_endpoints(settings),
            producers=settings.alert_producer_names,
            producer_timeout_ms=settings.alert_producer_timeout_s * 1000,
        )


def lag_endpoints(settings: Settings) -> tuple[tuple[str, int], ...]:
    """(flow, port) of every flow process's dataflow API, as `shopstream run` assigns them."""
    from shopstream.runner import api_ports

    return tuple((name, port) for name, ports in api_ports(settings).items() for port in ports)


# -- decoding ---------------------------------------------------------------------------------

Decoded = AlertCandidate | InputWindow | Sourced | ProgressMarker


def decode_batch(records: list[InputRecord]) -> list[Decoded]:
    """Candidates (bare or with their producer), progress markers and input windows;
    anything else on these topics is skipped.

    Both topics are written by our own flows: a record that does not decode is a
    bug to log, never a reason to stop paging."""
    out: list[Decoded] = []
    for record in records:
        if not isinstance(record, InputRecord):
            continue  # a source's partition report: this router's clock follows event times only
        try:
            if record.topic == CANDIDATES_TOPIC:
                out.append(decode_candidate_record(record.value))
                continue
            obj = loads(record.value)
            if obj.get("metric") == "input":
                out.append(InputWindow.from_dict(obj))
        except Exception as err:  # noqa: BLE001 - any malformed record is skipped, loudly
            log.warning("skipping unusable %s record %d:%d: %s", record.topic, record.partition, record.offset, err)
    return out


# -- acknowledgements -------------------------------------------------------------------------


def redis_ack_lookup(reader: KeyReader) -> AckLookup:
    """Acknowledgements for a few dedup keys in one MGET.

    If Redis cannot be read the alerts count as unacknowledged: a page too many
    beats a silent pager. Reading live state makes a replay see acks given since;
    that can only stop a repeat, never invent a page, and every id stays the same."""

    def lookup(dedup_keys: Sequence[str]) -> dict[str, Ack]:
        keys = list(dedup_keys)
        try:
            values = reader.get_many([ack_key(k) for k in keys])
        except Exception as err:  # noqa: BLE001 - redis-py raises many kinds
            log.warning("cannot read acknowledgements, treating %d alert(s) as unacknowledged: %s", len(keys), err)
            return {}
        return {key: parse_ack(value) for key, value in zip(keys, values) if value is not None}

    return lookup


def parse_ack(value: bytes) -> Ack:
    """`{"first_seen_ts": ...}` from `shopstream alerts ack`, or anything (e.g. "1") by hand."""
    try:
        obj = loads(value)
        return Ack(int(obj["first_seen_ts"]))
    except Exception:  # noqa: BLE001 - a bare value acknowledges the open episode
        return Ack(None)


# -- outputs ----------------------------------------------------------------------------------


def router_outputs(item: RouterOutput, config: AlertsConfig) -> tuple[list[OutboundMessage], list[RedisWrite]]:
    if isinstance(item, AlertMessage):
        payload = dumps(item.to_dict())
        return [OutboundMessage("alerts", item.dedup_key.encode(), payload)], [
            StreamAddOnce(
                dedupe_key=f"alerts:sent:{item.alert_id}",
                stream=STREAM_KEY,
                fields={
                    "alert_id": item.alert_id,
                    "dedup_key": item.dedup_key,
                    "status": item.status,
                    "severity": item.severity,
                    "alert": payload.decode(),
                },
                dedupe_ttl_s=config.stream_dedupe_ttl_s,
                max_len=config.stream_max_len,
            )
        ]
    if isinstance(item, ActiveAlert):
        if item.alert is None:
            return [], [DeleteHashField(ACTIVE_KEY, item.dedup_key)]
        return [], [SetHashField(ACTIVE_KEY, item.dedup_key, dumps(item.alert.to_dict()))]
    if isinstance(item, AckCleared):
        return [], [DeleteUnlessNewer(ack_key(item.dedup_key), "first_seen_ts", item.first_seen_ts)]
    if isinstance(item, GroupKeys):
        return [], [SetValue(group_key(item.rule), dumps(item.to_dict()), config.stream_dedupe_ttl_s)]
    raise TypeError(f"unexpected router output {item!r}")


# -- Bytewax adapters -------------------------------------------------------------------------


@dataclass
class AlertingState:
    detectors: InputDetectors
    router: AlertRouter
    gate: ReleaseGate | None = None  # the hold, when producers are expected

    def step(self, value: Decoded | LagSample, now: int, acks: AckLookup) -> list[RouterOutput]:
        """One input item; the router's outputs, in order."""
        gate = self.gate
        if gate is None or not gate.enabled:
            return self._unheld(value, now, acks)
        ungrouped: list[AlertCandidate] = []
        at_once: list[AlertCandidate] = []
        if isinstance(value, (ProgressMarker, Sourced)):
            if isinstance(value, Sourced) and isinstance(value.item, InputWindow) and INTAKE not in gate.expected:
                return []  # the router uses the intake's windows from `metrics` then
            late = gate.offer(value, now)
            if late is not None:
                at_once = self._candidates(late, now)
        elif isinstance(value, AlertCandidate):
            ungrouped = [value]  # no producer: the runner's `engine.flow_down`, on wall time
        elif isinstance(value, InputWindow):
            if INTAKE in gate.expected:
                return []  # it comes on `alert-candidates`, in order, with the intake's markers
            at_once = self.detectors.add([value], now)  # outside the hold, as without one
        else:
            ungrouped = self.detectors.add([value], now)  # lag, on wall time
        return self.release(now, acks, at_once, ungrouped)

    def release(self, now: int, acks: AckLookup, at_once=(), ungrouped=()) -> list[RouterOutput]:
        gate = self.gate
        held, point = gate.point(now)
        if not held:
            # Every expected producer is down: the router's own clock, as without a hold.
            items = [c for s in gate.release_all() for c in self._candidates(s, now)]
            out = self.router.add([*ungrouped, *at_once, *items], now, acks)
            horizon = self.router.clock.high_water_ms
            if horizon is not None:
                gate.pass_to(horizon)
            return out
        items = [c for s in gate.release(point) for c in self._candidates(s, now)]
        return self.router.release(items, point, now, acks, at_once=at_once, ungrouped=ungrouped)

    def _candidates(self, sourced: Sourced, now: int) -> list[AlertCandidate]:
        if isinstance(sourced.item, InputWindow):
            return self.detectors.add([sourced.item], now)
        return [sourced.item]

    def _unheld(self, value: Decoded | LagSample, now: int, acks: AckLookup) -> list[RouterOutput]:
        if isinstance(value, ProgressMarker):
            return []
        if isinstance(value, Sourced):
            if isinstance(value.item, InputWindow):
                return []  # the intake's copy for a hold; the router reads `metrics`
            value = value.item
        if isinstance(value, AlertCandidate):
            return self.router.add([value], now, acks)
        router_input: list[AlertCandidate | StreamTick] = list(self.detectors.add([value], now))
        if isinstance(value, InputWindow):
            # Closed input windows carry the stream's event time to the router even
            # when no candidate arrives, so escalations and reminders keep event time.
            router_input.append(StreamTick(value.window_end))
        return self.router.add(router_input, now, acks)

    def advance(self, now: int, acks: AckLookup) -> list[RouterOutput]:
        if self.gate is None or not self.gate.enabled:
            return self.router.advance(now, acks)
        return self.release(now, acks)

    def next_wake_ms(self, now: int) -> int | None:
        gate = self.gate
        if gate is None or not gate.enabled:
            return self.router.next_wake_ms(now)
        held, _ = gate.point(now)
        # Held: only markers move the release point, or a producer timing out.
        return gate.next_timeout_ms() if held else self.router.next_wake_ms(now)


class _AlertingLogic(StatefulBatchLogic[Decoded | LagSample, RouterOutput, AlertingState]):
    """Bytewax adapter: the detectors and the router in one step, fed in input order,
    so what the router sees never depends on how two paths interleave (one worker or
    several). Wall time and Redis enter only here."""

    def __init__(self, state: AlertingState, now_ms: Clock, acks: AckLookup):
        self._state = state
        self._now_ms = now_ms
        self._acks = acks

    def on_batch(self, values):
        # Item by item: what the router emits must not depend on how Bytewax groups
        # items into batches (one worker or several), e.g. whether an episode already
        # existed when acknowledgements were read.
        now = self._now_ms()
        out: list[RouterOutput] = []
        for value in values:
            out.extend(self._state.step(value, now, self._acks))
        return coalesce(out), self.RETAIN

    def on_notify(self):
        return self._state.advance(self._now_ms(), self._acks), self.RETAIN

    def on_eof(self):
        return self._state.advance(self._now_ms(), self._acks), self.RETAIN

    def notify_at(self) -> datetime | None:
        wake = self._state.next_wake_ms(self._now_ms())
        return None if wake is None else from_ms(wake)

    def snapshot(self) -> AlertingState:
        return copy.deepcopy(self._state)


def alerting_for(resumed: AlertingState | None, config: AlertsConfig, now_ms: int) -> AlertingState:
    return AlertingState(
        detectors=detectors_for(resumed.detectors if resumed else None, config, now_ms),
        router=router_for(resumed.router if resumed else None, config, now_ms),
        gate=gate_for(getattr(resumed, "gate", None), config, now_ms),
    )


def gate_for(resumed: ReleaseGate | None, config: AlertsConfig, now_ms: int) -> ReleaseGate:
    """The hold under the current producers; a resumed one keeps what it holds and knows."""
    if resumed is None:
        return ReleaseGate.start(config.producers, config.producer_timeout_ms, now_ms)
    resumed.configure(config.producers, config.producer_timeout_ms)
    resumed.resume(now_ms)
    return resumed


def router_for(resumed: AlertRouter | None, config: AlertsConfig, now_ms: int) -> AlertRouter:
    """The resumed router under the current configuration (timers already set keep theirs)."""
    if resumed is None:
        return AlertRouter(config.router)
    resumed.config = config.router
    resumed.resume(now_ms)
    return resumed


def detectors_for(resumed: InputDetectors | None, config: AlertsConfig, now_ms: int) -> InputDetectors:
    if resumed is None:
        return InputDetectors(
            TrafficDropDetector(config.traffic), DeadLetterDetector(config.dead_letters), LagDetector(config.lag)
        )
    resumed.traffic.config = config.traffic
    resumed.dead_letters.config = config.dead_letters
    resumed.lag.config = config.lag
    resumed.resume(now_ms)
    return resumed


# -- lag poller -------------------------------------------------------------------------------


LagFetch = Callable[[int], dict]  # port -> {(topic, partition): messages behind}


class _LagPartition(StatelessSourcePartition[LagSample]):
    def __init__(self, endpoints, interval_ms: int, fetch: LagFetch, now_ms: Clock):
        self._endpoints = endpoints
        self._interval_ms = interval_ms
        self._fetch = fetch
        self._now_ms = now_ms
        self._next_poll = now_ms()

    def next_batch(self) -> list[LagSample]:
        now = self._now_ms()
        if now < self._next_poll:
            return []
        self._next_poll = now + self._interval_ms
        totals: dict[str, float] = {}
        for flow_name, port in self._endpoints:
            try:
                lag = self._fetch(port)
            except Exception as err:  # noqa: BLE001 - a flow that is down or starting has no lag to read
                log.debug("no lag from %s on port %d: %s", flow_name, port, err)
                continue
            totals[flow_name] = totals.get(flow_name, 0.0) + sum(lag.values())
        return [LagSample(now, name, total) for name, total in totals.items()]

    def next_awake(self) -> datetime | None:
        return datetime.fromtimestamp(self._next_poll / 1000, tz=timezone.utc)


class LagSource(DynamicSource[LagSample]):
    """Polls each flow's dataflow API (`bytewax_kafka_consumer_lag`); worker 0 only."""

    def __init__(self, endpoints, interval_ms: int, fetch: LagFetch | None = None, now_ms: Clock = wall_clock_ms):
        self._endpoints = tuple(endpoints)
        self._interval_ms = interval_ms
        self._fetch = fetch
        self._now_ms = now_ms

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _LagPartition:
        from state.flow_metrics import consumer_lag

        endpoints = self._endpoints if worker_index == 0 else ()
        return _LagPartition(endpoints, self._interval_ms, self._fetch or consumer_lag, self._now_ms)


# -- the flow ---------------------------------------------------------------------------------


def build_flow(
    records: Source[InputRecord],
    kafka_sink: Sink[OutboundMessage],
    redis_sink: Sink[RedisWrite],
    config: AlertsConfig,
    now_ms: Clock = wall_clock_ms,
    acks: AckLookup | None = None,
    lag_samples: Source[LagSample] | None = None,
) -> Dataflow:
    from operators.alert_router import no_acks

    acks = acks or no_acks
    flow = Dataflow("alerts")
    decoded = op.flat_map_batch("decode", op.input("records", flow, records), decode_batch)
    if lag_samples is not None:
        decoded = op.merge("with_lag", decoded, op.input("lag", flow, lag_samples))
    routed = op.stateful_batch(
        "alerting",
        op.key_on("all", decoded, lambda _: "all"),
        lambda resumed: _AlertingLogic(alerting_for(resumed, config, now_ms()), now_ms, acks),
    )
    outputs = op.map("outputs", op.key_rm("unkey", routed), lambda item: router_outputs(item, config))
    op.output("kafka", op.flat_map("alert_msgs", outputs, lambda out: out[0]), kafka_sink)
    op.output("redis", op.flat_map("alert_writes", outputs, lambda out: out[1]), redis_sink)
    return flow


def flow_from_settings(settings: Settings) -> Dataflow:
    config = AlertsConfig.from_settings(settings)
    lag = LagSource(config.lag_endpoints, config.lag_poll_ms) if config.lag_endpoints else None
    return build_flow(
        KafkaInputSource(settings, INPUT_TOPICS),
        KafkaOutputSink(settings),
        RedisSink(settings),
        config,
        acks=redis_ack_lookup(KeyReader(settings)),
        lag_samples=lag,
    )


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.alerts:flow` builds the flow from the environment
    # on first access, so importing this module for tests needs no configuration.
    if name == "flow":
        return flow_from_settings(Settings.from_env())
    raise AttributeError(name)
