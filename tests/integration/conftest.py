"""Real Kafka and Redis for integration tests, started by the same launcher as
`shopstream services up`, on free loopback ports in a temporary directory."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from shopstream import services
from shopstream.settings import Settings
from tests.integration.ports import free_port

_test_ids = itertools.count()


@pytest.fixture(scope="session")
def service_settings(tmp_path_factory) -> Settings:
    settings = Settings.from_env(
        {},
        kafka_bootstrap_servers=f"127.0.0.1:{free_port(span=2)}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        services_dir=tmp_path_factory.mktemp("services"),
        partitions=2,
        # No fixed metrics ports in tests (other test runs share the machine); tests that
        # want them pick free ones.
        flow_api_port_base=0,
        forward_metrics_port=0,
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


