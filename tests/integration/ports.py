"""Free loopback ports for services started by tests."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"
ATTEMPTS = 100


def free_port(span: int = 1) -> int:
    """A loopback port that is free right now, together with the `span - 1` ports after it.

    Kafka needs `span=2`: its KRaft controller listens on the client port + 1. The port is
    only free at the time of asking; tests start the service right away, and the kernel hands
    out ephemeral ports in rotation, so a collision in between is unlikely.
    """
    for _ in range(ATTEMPTS):
        first = _ephemeral_port()
        if first + span - 1 <= 65535 and all(_is_free(first + offset) for offset in range(1, span)):
            return first
    raise RuntimeError(f"found no {span} consecutive free loopback ports in {ATTEMPTS} attempts")


def _ephemeral_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
        return True
