"""`shopstream alerts forward`: the `alerts` topic into Alertmanager and PagerDuty.

A plain Kafka consumer in its own consumer group (`SHOPSTREAM_FORWARD_GROUP`): offsets
are committed only after every message up to them has been forwarded to every
destination, so a restart resumes exactly where the last one stopped. Forwarding is
idempotent by `alert_id`: an id already forwarded (a repeat after the engine replayed
its last snapshot, or a message read again after a forwarder crash) is skipped, using
`alerts:forwarded:{group}:{alert_id}` in Redis, set after the destinations accepted it.

A destination that fails (connection refused, timeout, 429, 5xx) is retried with
exponential backoff up to `SHOPSTREAM_FORWARD_RETRY_MAX_S` between tries, for as long
as it takes: input waits, nothing is dropped, and the backlog shows in the forwarder's
metrics (lag, age of the oldest unforwarded alert). A message a destination refuses as
invalid (another 4xx) cannot succeed by retrying: it is logged, counted
(`shopstream_forward_rejected_total`) and kept in the Redis list
`alerts:forward:rejected`, and forwarding goes on.

Every `SHOPSTREAM_FORWARD_RESEND_S` the alerts still firing are posted to Alertmanager
again (their `endsAt` moves ahead), and the firing set is compared with `alerts:active`,
the engine's own view: an alert the engine no longer holds is resolved downstream too.
Acknowledgements set by on-call (`alerts:ack:{dedup_key}`) become PagerDuty
`acknowledge` events.
"""

from __future__ import annotations

import http.client
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

from prometheus_client import Counter, Gauge, Histogram

from operators.alert_forwarding import alertmanager_alert, pagerduty_event, resolved_now
from shopstream.settings import Settings
from state.serde import dumps, loads

log = logging.getLogger(__name__)

FORWARDED_TTL_S = 7 * 24 * 3600  # outlives the longest replay of the engine or the forwarder
REJECTED_KEY = "alerts:forward:rejected"
REJECTED_KEEP = 1000
ACTIVE_KEY = "alerts:active"
BATCH_MAX = 500
HTTP_TIMEOUT_S = 5.0
RETRY_FIRST_S = 0.25
# A firing alert stays active in Alertmanager this many resend intervals without a re-post.
HOLD_RESENDS = 4

FORWARDED = Counter("shopstream_forward_sent", "Alert messages accepted by a destination", ["destination", "action"])
FAILURES = Counter("shopstream_forward_failures", "Failed tries to deliver to a destination (retried)", ["destination"])
REJECTED = Counter("shopstream_forward_rejected", "Alert messages a destination refused as invalid", ["destination"])
DUPLICATES = Counter("shopstream_forward_duplicates", "Alert messages skipped: alert_id already forwarded")
LAG = Gauge("shopstream_forward_lag_messages", "Messages on the alerts topic not yet forwarded (committed)")
OLDEST = Gauge("shopstream_forward_oldest_unforwarded_seconds",
               "Age of the oldest alert message read but not yet forwarded (0: none waiting)")
FIRING = Gauge("shopstream_forward_firing", "Alerts the forwarder holds as firing (re-posted to Alertmanager)")
LATENCY = Histogram("shopstream_forward_latency_seconds",
                    "From the alert message's Kafka timestamp to accepted by every destination",
                    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300))


class DeliveryFailed(Exception):
    """A destination did not accept; `permanent` when retrying cannot help (a 4xx)."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class HttpJson:
    """One keep-alive HTTP connection posting JSON; reconnects after any failure."""

    def __init__(self, url: str, timeout_s: float = HTTP_TIMEOUT_S):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._connection: http.client.HTTPConnection | None = None

    def post(self, body: Any, path: str | None = None) -> tuple[int, bytes]:
        if self._connection is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            self._connection = cls(self._host, self._port, timeout=self._timeout_s)
        try:
            self._connection.request("POST", path or self._path, body=dumps(body),
                                     headers={"Content-Type": "application/json"})
            response = self._connection.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise DeliveryFailed(f"{type(err).__name__}: {err}") from None

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _check(status: int, body: bytes, what: str) -> None:
    if 200 <= status < 300:
        return
    permanent = 400 <= status < 500 and status not in (408, 429)
    raise DeliveryFailed(f"{what} answered {status}: {body[:300].decode(errors='replace')}", permanent)


class Destination(Protocol):
    name: str

    def forward(self, alerts: list[dict], now_ms: int) -> None: ...

    def resend(self, firing: list[dict], ended: list[dict], acked: list[dict], now_ms: int) -> None: ...

    def close(self) -> None: ...


class Alertmanager:
    """Alertmanager API v2; one POST per batch (only each dedup key's last state)."""

    name = "alertmanager"

    def __init__(self, url: str, hold_ms: int):
        self._http = HttpJson(url.rstrip("/") + "/api/v2/alerts")
        self._hold_ms = hold_ms
        self.posted: dict[str, dict] = {}  # dedup_key -> the alert as last posted while firing

    def _post(self, alerts: list[dict]) -> None:
        if alerts:
            status, body = self._http.post(alerts)
            _check(status, body, "Alertmanager")

    def forward(self, alerts: list[dict], now_ms: int) -> None:
        latest: dict[str, dict] = {}
        for alert in alerts:
            latest[alert["dedup_key"]] = alert
        out = []
        for key, alert in latest.items():
            am = alertmanager_alert(alert, now_ms, self._hold_ms)
            before = self.posted.get(key)
            if before is not None and before["labels"] != am["labels"]:
                out.append(resolved_now(before, now_ms))  # severity changed: the old labels end
            out.append(am)
        self._post(out)
        for key, alert in latest.items():
            if alert["status"] == "resolved":
                self.posted.pop(key, None)
            else:
                self.posted[key] = alertmanager_alert(alert, now_ms, self._hold_ms)
        FORWARDED.labels(self.name, "post").inc(len(latest))

    def resend(self, firing: list[dict], ended: list[dict], acked: list[dict], now_ms: int) -> None:
        out = [alertmanager_alert(a, now_ms, self._hold_ms) for a in firing]
        out += [resolved_now(alertmanager_alert(a, now_ms, self._hold_ms), now_ms) for a in ended]
        self._post(out)
        for alert in ended:
            self.posted.pop(alert["dedup_key"], None)

    def close(self) -> None:
        self._http.close()


class PagerDuty:
    """PagerDuty Events API v2: one event per state change, in order."""

    name = "pagerduty"

    def __init__(self, url: str, routing_key: str):
        self._http = HttpJson(url)
        self._routing_key = routing_key
        self.acknowledged: set[tuple[str, int]] = set()  # (dedup_key, first_seen_ts) sent as acknowledge
        self._done = 0  # events of the current batch already accepted (a retry resumes after them)

    def _send(self, event: dict) -> None:
        status, body = self._http.post(event)
        _check(status, body, "PagerDuty")
        FORWARDED.labels(self.name, event["event_action"]).inc()

    def forward(self, alerts: list[dict], now_ms: int) -> None:
        for alert in alerts[self._done:]:
            self._send(pagerduty_event(alert, self._routing_key))
            if alert["status"] == "resolved":
                self.acknowledged.discard((alert["dedup_key"], alert["first_seen_ts"]))
            self._done += 1
        self._done = 0

    def skip_one(self) -> None:
        """The next event was refused for good: go on after it."""
        self._done += 1

    def resend(self, firing: list[dict], ended: list[dict], acked: list[dict], now_ms: int) -> None:
        for alert in ended:
            self._send(pagerduty_event(alert, self._routing_key, "resolve"))
        for alert in acked:
            episode = (alert["dedup_key"], alert["first_seen_ts"])
            if episode not in self.acknowledged:
                self._send(pagerduty_event(alert, self._routing_key, "acknowledge"))
                self.acknowledged.add(episode)

    def close(self) -> None:
        self._http.close()


@dataclass
class ForwarderConfig:
    group: str
    resend_ms: int = 60_000
    retry_max_s: float = 10.0
    ack_poll_ms: int = 5_000
    poll_timeout_s: float = 0.05
    # An alert missing from alerts:active is resolved downstream only after this long
    # without a message for it (the engine writes Kafka and Redis separately).
    reconcile_grace_ms: int = 120_000

    @classmethod
    def from_settings(cls, settings: Settings) -> "ForwarderConfig":
        resend_ms = settings.forward_resend_s * 1000
        return cls(group=settings.forward_group, resend_ms=resend_ms, retry_max_s=settings.forward_retry_max_s,
                   ack_poll_ms=min(5_000, resend_ms), reconcile_grace_ms=max(2 * resend_ms, 10_000))


@dataclass
class _Tracked:
    alert: dict
    seen_wall_ms: int


@dataclass
class Forwarder:
    settings: Settings
    config: ForwarderConfig
    destinations: list[Any]
    now_ms: Callable[[], int] = field(default=lambda: time.time_ns() // 1_000_000)
    stop_event: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        from confluent_kafka import Consumer

        from state.redis_store import connect

        self.redis = connect(self.settings)
        self.topic = self.settings.topic("alerts")
        self.consumer = Consumer({
            **self.settings.kafka_config(),
            "group.id": self.config.group,
            "enable.auto.commit": False,
            # A new group forwards the topic's history (resolved alerts end at once downstream).
            "auto.offset.reset": "earliest",
            # The loop stops polling while a destination is down: stay in the group meanwhile.
            "max.poll.interval.ms": 86_400_000,
            "fetch.wait.max.ms": 50,
        })
        self.firing: dict[str, _Tracked] = {}
        self._pending_ts: list[int] = []
        self._last_resend = 0
        self._last_ack_poll = 0
        self._last_lag = 0.0
        OLDEST.set_function(self._oldest_age_s)
        FIRING.set_function(lambda: len(self.firing))

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        self.consumer.subscribe([self.topic])
        self._seed_from_active()
        try:
            while not self.stop_event.is_set():
                messages = self.consumer.consume(BATCH_MAX, self.config.poll_timeout_s)
                batch = [m for m in messages if m.error() is None and m.value() is not None]
                for m in messages:
                    if m.error() is not None and not m.error().code() == -191:  # _PARTITION_EOF
                        log.warning("Kafka consumer: %s", m.error())
                if batch:
                    self._handle(batch)
                self._periodic()
        finally:
            self.close()

    def close(self) -> None:
        try:
            self.consumer.close()
        except Exception:  # noqa: BLE001 - already closed
            pass
        for destination in self.destinations:
            destination.close()
        self.redis.close()

    def _handle(self, batch) -> None:
        self._pending_ts = [m.timestamp()[1] for m in batch]
        alerts = []
        for m in batch:
            try:
                alert = loads(m.value())
                alert["alert_id"], alert["dedup_key"], alert["status"]  # noqa: B018 - required fields
                alerts.append(alert)
            except Exception as err:  # noqa: BLE001 - not ours to judge; say so
                log.error("skipping an unusable alerts message at %d:%d: %s", m.partition(), m.offset(), err)
        fresh = self._retry("redis", lambda: self._not_forwarded(alerts))
        if fresh:
            for destination in self.destinations:
                self._deliver(destination, fresh)
            self._retry("redis", lambda: self._mark_forwarded(fresh))
            now = self.now_ms()
            for alert in fresh:
                self._track(alert, now)
        self._retry("kafka", lambda: self.consumer.commit(asynchronous=False))
        now_s = time.time()
        for ts in self._pending_ts:
            if ts > 0:
                LATENCY.observe(max(0.0, now_s - ts / 1000))
        self._pending_ts = []

    def _deliver(self, destination, alerts: list[dict]) -> None:
        while True:
            try:
                self._retry(destination.name, lambda: destination.forward(alerts, self.now_ms()),
                            permanent_ok=True)
                return
            except DeliveryFailed as err:  # refused for good: keep it in Redis, go on
                if isinstance(destination, PagerDuty):
                    rejected = alerts[destination._done]
                    destination.skip_one()
                    REJECTED.labels(destination.name).inc()
                    self._reject(destination.name, [rejected], str(err))
                elif len(alerts) > 1:  # one bad alert fails the whole post: find it
                    for alert in alerts:
                        self._deliver(destination, [alert])
                    return
                else:
                    REJECTED.labels(destination.name).inc()
                    self._reject(destination.name, alerts, str(err))
                    return

    def _retry(self, what: str, action: Callable[[], Any], permanent_ok: bool = False) -> Any:
        """Run `action` until it succeeds, backing off; a permanent DeliveryFailed is raised."""
        delay = RETRY_FIRST_S
        while True:
            try:
                return action()
            except DeliveryFailed as err:
                if err.permanent and permanent_ok:
                    raise
                failure = str(err)
            except Exception as err:  # noqa: BLE001 - Redis and Kafka errors: transient here
                failure = f"{type(err).__name__}: {err}"
            FAILURES.labels(what).inc()
            log.warning("%s failed (%s); retrying in %.1f s", what, failure, delay)
            self._update_lag()
            if self.stop_event.wait(delay):
                raise _Stopped()
            delay = min(delay * 2, self.config.retry_max_s)

    # -- idempotency ------------------------------------------------------------------------
    def _marker(self, alert_id: str) -> str:
        return self.settings.redis_key(f"alerts:forwarded:{self.config.group}:{alert_id}")

    def _not_forwarded(self, alerts: list[dict]) -> list[dict]:
        if not alerts:
            return []
        done = self.redis.mget([self._marker(a["alert_id"]) for a in alerts])
        seen: set[str] = set()
        fresh = []
        for alert, marker in zip(alerts, done):
            if marker is not None or alert["alert_id"] in seen:
                DUPLICATES.inc()
                continue
            seen.add(alert["alert_id"])
            fresh.append(alert)
        return fresh

    def _mark_forwarded(self, alerts: list[dict]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for alert in alerts:
            pipe.set(self._marker(alert["alert_id"]), b"1", ex=FORWARDED_TTL_S)
        pipe.execute()

    def _reject(self, destination: str, alerts: list[dict], reason: str) -> None:
        log.error("%s refused %d alert message(s) for good: %s; kept in %s", destination, len(alerts), reason,
                  REJECTED_KEY)
        key = self.settings.redis_key(REJECTED_KEY)

        def push() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for alert in alerts:
                pipe.lpush(key, dumps({"destination": destination, "reason": reason[:500], "alert": alert}))
            pipe.ltrim(key, 0, REJECTED_KEEP - 1)
            pipe.execute()

        self._retry("redis", push)

    # -- firing set, resends, acknowledgements ---------------------------------------------------
    def _track(self, alert: dict, now: int) -> None:
        if alert["status"] == "resolved":
            self.firing.pop(alert["dedup_key"], None)
        else:
            self.firing[alert["dedup_key"]] = _Tracked(alert, now)

    def _seed_from_active(self) -> None:
        """Start with what the engine holds as open, so it is re-posted from the start."""
        try:
            active = self.redis.hgetall(self.settings.redis_key(ACTIVE_KEY))
        except Exception as err:  # noqa: BLE001 - the topic will tell us anyway
            log.warning("cannot read %s at start: %s", ACTIVE_KEY, err)
            return
        now = self.now_ms()
        for raw in active.values():
            try:
                alert = loads(raw)
                self.firing[alert["dedup_key"]] = _Tracked(alert, now)
            except Exception:  # noqa: BLE001
                continue

    def _periodic(self) -> None:
        now = self.now_ms()
        if time.monotonic() - self._last_lag >= 1.0:
            self._update_lag()
        due_resend = now - self._last_resend >= self.config.resend_ms
        due_acks = now - self._last_ack_poll >= self.config.ack_poll_ms
        if not (due_resend or due_acks):
            return
        self._last_ack_poll = now
        acked = self._acked()
        ended: list[dict] = []
        if due_resend:
            self._last_resend = now
            ended = self._ended(now)
        firing = [t.alert for t in self.firing.values()] if due_resend else []
        for destination in self.destinations:
            if isinstance(destination, Alertmanager) and not due_resend:
                continue
            try:
                destination.resend(firing, ended, acked, now)
            except DeliveryFailed as err:  # tried again at the next interval
                FAILURES.labels(destination.name).inc()
                log.warning("%s: periodic update failed (%s); next try in %.0f s", destination.name, err,
                            self.config.resend_ms / 1000)
                if due_resend:
                    self._last_resend = now - self.config.resend_ms + min(self.config.resend_ms, 5_000)
                return
        for alert in ended:
            self.firing.pop(alert["dedup_key"], None)

    def _acked(self) -> list[dict]:
        keys = [k for k, t in self.firing.items() if t.alert.get("key") != "*"]
        if not keys:
            return []
        try:
            values = self.redis.mget([self.settings.redis_key(f"alerts:ack:{k}") for k in keys])
        except Exception as err:  # noqa: BLE001 - next time
            log.warning("cannot read acknowledgements: %s", err)
            return []
        acked = []
        for key, value in zip(keys, values):
            if value is None:
                continue
            alert = self.firing[key].alert
            try:
                first_seen = loads(value).get("first_seen_ts")
            except Exception:  # noqa: BLE001 - a bare value acknowledges the open episode
                first_seen = None
            if first_seen is None or first_seen == alert.get("first_seen_ts"):
                acked.append(alert)
        return acked

    def _ended(self, now: int) -> list[dict]:
        """Alerts held as firing that the engine no longer holds (past the grace)."""
        stale = [t for t in self.firing.values() if now - t.seen_wall_ms >= self.config.reconcile_grace_ms]
        if not stale:
            return []
        try:
            active = set(k.decode() for k in self.redis.hkeys(self.settings.redis_key(ACTIVE_KEY)))
        except Exception as err:  # noqa: BLE001 - decide nothing without the engine's view
            log.warning("cannot read %s: %s", ACTIVE_KEY, err)
            return []
        rules = {k.split(":", 1)[0] for k in active}
        ended = []
        for tracked in stale:
            alert = tracked.alert
            present = alert["rule"] in rules if alert.get("key") == "*" else alert["dedup_key"] in active
            if not present:
                ended.append({**alert, "status": "resolved", "ts": now})
        return ended

    # -- backlog visibility -----------------------------------------------------------------
    def _update_lag(self) -> None:
        from confluent_kafka import TopicPartition

        self._last_lag = time.monotonic()
        try:
            assigned = self.consumer.assignment()
            if not assigned:
                return
            committed = self.consumer.committed(assigned, timeout=2)
            total = 0
            for tp in committed:
                low, high = self.consumer.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=2)
                position = tp.offset if tp.offset >= 0 else low
                total += max(0, high - position)
            LAG.set(total)
        except Exception as err:  # noqa: BLE001 - the broker may be the thing that is down
            log.debug("cannot measure the forwarding lag: %s", err)

    def _oldest_age_s(self) -> float:
        stamps = [ts for ts in self._pending_ts if ts > 0]
        return max(0.0, time.time() - min(stamps) / 1000) if stamps else 0.0


class _Stopped(Exception):
    """Stop requested while waiting to retry."""


def destinations_from_settings(settings: Settings, config: ForwarderConfig) -> list:
    destinations: list = []
    if settings.alertmanager_url:
        destinations.append(Alertmanager(settings.alertmanager_url, HOLD_RESENDS * config.resend_ms))
    if settings.pagerduty_routing_key:
        destinations.append(PagerDuty(settings.pagerduty_url, settings.pagerduty_routing_key))
    return destinations


def write_sd_file(settings: Settings, port: int) -> None:
    import json

    path = settings.metrics_sd_dir / "forwarder.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"],
                                      "labels": {"job": "shopstream", "flow": "forwarder", "process": "0"}}]))
    temporary.replace(path)


def run_forwarder(settings: Settings) -> int:
    """`shopstream alerts forward`: until SIGTERM or Ctrl-C."""
    from prometheus_client import start_http_server

    from shopstream.settings import ConfigError

    config = ForwarderConfig.from_settings(settings)
    destinations = destinations_from_settings(settings, config)
    if not destinations:
        raise ConfigError("nothing to forward to: set SHOPSTREAM_ALERTMANAGER_URL (e.g. http://localhost:9093) "
                          "and/or SHOPSTREAM_PAGERDUTY_ROUTING_KEY")
    if settings.forward_metrics_port > 0:
        start_http_server(settings.forward_metrics_port, addr="127.0.0.1")
        write_sd_file(settings, settings.forward_metrics_port)
    forwarder = Forwarder(settings, config, destinations)

    def stop(signum, frame):
        forwarder.stop_event.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    names = ", ".join(d.name for d in destinations)
    print(f"forwarding {settings.topic('alerts')} to {names} (consumer group {config.group})", flush=True)
    try:
        forwarder.run()
    except _Stopped:
        pass
    return 0
