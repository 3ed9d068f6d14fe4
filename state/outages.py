"""Waiting out short outages of Redis and Kafka instead of failing the flow.

A sink that cannot write simply does not return: Bytewax then reads no more input
(backpressure), and the flow resumes where it was once the write goes through. Only
a continuous outage longer than `SHOPSTREAM_OUTAGE_LIMIT_S` raises `OutageError`,
which stops the flow so the runner (or on-call) sees it.

Retrying is safe because every write is idempotent by design (absolute values,
"newer wins", and "dedupe key + effect" in one Lua script; Kafka outputs carry
deterministic ids that consumers dedupe on), so repeating a batch that was partly
applied before the connection broke changes nothing.

Each outage is logged twice: once when it starts, once when it ends, with its
duration; the retries in between are quiet.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, TypeVar

import redis

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_DELAY_S = 0.1
MAX_DELAY_S = 5.0


class OutageError(RuntimeError):
    """A dependency stayed unreachable for longer than the outage limit."""


# Redis errors that mean "not reachable right now", not "this write is wrong".
# (A read-only replica or a full memory are configuration problems: they fail.)
REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                   redis.exceptions.BusyLoadingError, TimeoutError, ConnectionError)


def is_redis_transient(err: BaseException) -> bool:
    # redis-py's AuthenticationError is a ConnectionError subclass but will not heal by waiting.
    if isinstance(err, (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)):
        return False
    return isinstance(err, REDIS_TRANSIENT)


def backoff_delays(first_s: float = FIRST_DELAY_S, max_s: float = MAX_DELAY_S):
    """first, 2*first, 4*first, ... capped at max_s, forever."""
    delay = first_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)


class OutageGuard:
    """Retries an attempt while it fails transiently, for at most `limit_s` of continuous outage.

    The outage begins when the first failing attempt began (a Redis call that timed out
    after 5 s was already 5 s into the outage) and ends at the next success. State
    persists across calls, so an outage spanning several batches is one outage.
    """

    def __init__(self, what: str, limit_s: float, *, first_delay_s: float = FIRST_DELAY_S,
                 max_delay_s: float = MAX_DELAY_S, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep, logger: logging.Logger = log):
        self.what = what
        self.limit_s = limit_s
        self._first_delay_s = first_delay_s
        self._max_delay_s = max_delay_s
        self._clock = clock
        self._sleep = sleep
        self._log = logger
        self.outage_started: float | None = None  # clock time, while an outage lasts
        self.outages = 0  # how many outages this guard has seen end (for tests and metrics)
        self.last_outage_s: float | None = None

    def call(self, attempt: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        delays = backoff_delays(self._first_delay_s, self._max_delay_s)
        while True:
            began = self._clock()
            try:
                result = attempt()
            except Exception as err:
                if not is_transient(err):
                    raise
                self._failed(err, began)
                self._sleep(self._next_delay(delays))
                continue
            self._recovered()
            return result

    def _next_delay(self, delays) -> float:
        """The next backoff, but never sleeping past the limit by more than needed."""
        delay = next(delays)
        remaining = self.outage_started + self.limit_s - self._clock()
        return max(0.0, min(delay, remaining + 0.001)) if remaining > 0 else delay

    def _failed(self, err: BaseException, began: float) -> None:
        now = self._clock()
        if self.outage_started is None:
            self.outage_started = began
            self._log.warning("%s unreachable (%s: %s); holding input and retrying for up to %.0f s",
                              self.what, type(err).__name__, err, self.limit_s)
        lasted = now - self.outage_started
        if lasted >= self.limit_s:
            self.outage_started = None
            raise OutageError(f"{self.what} unreachable for {lasted:.0f} s (limit {self.limit_s:.0f} s, "
                              f"SHOPSTREAM_OUTAGE_LIMIT_S); last error: {type(err).__name__}: {err}") from err

    def _recovered(self) -> None:
        if self.outage_started is None:
            return
        lasted = self._clock() - self.outage_started
        self.outage_started = None
        self.outages += 1
        self.last_outage_s = lasted
        self._log.warning("%s reachable again after an outage of %.1f s", self.what, lasted)
