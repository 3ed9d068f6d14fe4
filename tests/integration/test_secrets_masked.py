"""A failed start prints no secret: `shopstream run` against the real broker with a
password in REDIS_URL (Redis down), and with a Kafka SASL password and the pseudonym
key (the broker refuses SASL); stdout and stderr are grepped for each secret."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.integration.ports import free_port

pytestmark = pytest.mark.integration

REDIS_SECRET = "the-Real-Secret"
KAFKA_SECRET = "the-Kafka-Secret-123"
KEY_SECRET = "the-Pseudonym-Key-0123456789"


def run(settings, flow, extra_env, *flags):
    env = {**os.environ, **settings.to_env(), **extra_env}
    done = subprocess.run(["shopstream", *flags, "run", flow], env=env, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_a_redis_password_is_not_printed_when_redis_is_down(settings):
    port = free_port()  # nothing listens there
    code, output = run(settings, "intake", {"REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:{port}/0",
                                            "SHOPSTREAM_PSEUDONYM_KEY": KEY_SECRET})
    assert code == 2
    assert f"Redis at redis://:***@127.0.0.1:{port}/0 is not reachable" in output
    assert REDIS_SECRET not in output and KEY_SECRET not in output


def test_a_sasl_password_and_the_pseudonym_key_are_not_printed_by_a_failing_start(settings):
    code, output = run(settings, "fraud", {
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "shop", "KAFKA_SASL_PASSWORD": KAFKA_SECRET,
        "SHOPSTREAM_PSEUDONYM_KEY": KEY_SECRET,
    }, "-v")  # debug logging too
    assert code == 2
    assert f"Kafka at {settings.kafka_bootstrap_servers} is not reachable" in output
    assert KAFKA_SECRET not in output and KEY_SECRET not in output
