"""Real Kafka and Redis for integration tests, started by the same launcher as
`shopstream services up`, on free loopback ports in a temporary directory."""

from __future__ import annotations

import itertools
import socket
from dataclasses import replace

import pytest

from shopstream import services
from shopstream.settings import Settings

_test_ids = itertools.count()


def _port_pair_free(port: int) -> bool:
    for candidate in (port, port + 1):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def _free_kafka_port() -> int:
    """Kafka's controller listens on port + 1, so both must be free."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 65535 and _port_pair_free(port):
            return port
    raise RuntimeError("no free pair of loopback ports for Kafka")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory) -> Settings:
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=f"127.0.0.1:{_free_kafka_port()}",
        redis_url=f"redis://127.0.0.1:{_free_port()}/0",
        services_dir=tmp_path_factory.mktemp("services"),
        partitions=2,
    )
    services.up(settings)
    yield settings
    services.down(settings, wipe=True)


@pytest.fixture
def settings(service_settings, tmp_path) -> Settings:
    """Per-test topics and Redis keys (own prefixes), recovery store and short windows."""
    test_id = next(_test_ids)
    isolated = replace(
        service_settings,
        topic_prefix=f"t{test_id}.",
        redis_prefix=f"test{test_id}:",
        recovery_dir=tmp_path / "recovery",
        snapshot_interval_s=2,
        input_window_s=1,
        allowed_lateness_s=2,
    )
    services.create_topics(isolated)
    return isolated


@pytest.fixture
def redis_client(settings):
    from state.redis_store import connect

    client = connect(settings)
    yield client
    client.close()


