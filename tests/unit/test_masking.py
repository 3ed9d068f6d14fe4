"""Secrets never printed: the Redis password, Kafka secrets and the pseudonym key are
masked in URLs, settings, log lines, tracebacks and the command line's errors."""

from __future__ import annotations

import io
import logging

import pytest

from shopstream import cli
from shopstream.masking import MASK, Masker, mask_kafka_config, mask_url
from shopstream.settings import ConfigError, Settings

REDIS_SECRET = "the-Real-Secret"
KAFKA_SECRET = "the-Kafka-Secret-123"
KEY_SECRET = "the-Pseudonym-Key-0123456789"
ENV = {
    "REDIS_URL": f"redis://:{REDIS_SECRET}@127.0.0.1:6390/0",
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "PLAIN",
    "KAFKA_SASL_USERNAME": "shop",
    "KAFKA_SASL_PASSWORD": KAFKA_SECRET,
    "SHOPSTREAM_PSEUDONYM_KEY": KEY_SECRET,
}


def no_secret(text: str) -> bool:
    return all(secret not in text for secret in (REDIS_SECRET, KAFKA_SECRET, KEY_SECRET))


@pytest.mark.parametrize("url, masked", [
    (f"redis://:{REDIS_SECRET}@127.0.0.1:6390/0", "redis://:***@127.0.0.1:6390/0"),
    ("rediss://alice:p%40ss%2Fw0rd@redis.internal:6380/2", "rediss://alice:***@redis.internal:6380/2"),
    ("redis://localhost:6379/0", "redis://localhost:6379/0"),
    ("redis://bob@localhost/0", "redis://bob@localhost/0"),
    ("redis://localhost/0?password=hunter22&db=1", "redis://localhost/0?password=***&db=1"),
    ("unix:///tmp/redis.sock?password=hunter22", "unix:///tmp/redis.sock?password=***"),
])
def test_urls_keep_everything_but_the_password(url, masked):
    assert mask_url(url) == masked


def test_the_secrets_of_an_environment_are_masked_in_any_text():
    masker = Masker.from_env(ENV)
    text = (f"Redis at {ENV['REDIS_URL']} is not reachable; sasl.password={KAFKA_SECRET}; key {KEY_SECRET}; "
            f"as a URL rediss://x:{REDIS_SECRET}@h; percent-encoded the-Real-Secret")
    redacted = masker.redact(text)
    assert no_secret(redacted) and "Redis at redis://:***@127.0.0.1:6390/0" in redacted
    assert "sasl.password=***" in redacted and "username" not in redacted
    # A URL's password is masked even when it is no configured secret; ports are not passwords.
    assert Masker().redact("at redis://u:other-pass@host:1/0 and http://host:8080/x") == \
        "at redis://u:***@host:1/0 and http://host:8080/x"


def test_kafka_secret_properties_are_masked_and_the_rest_shown():
    shown = mask_kafka_config({"sasl.username": "shop", "sasl.password": "p", "ssl.key.password": "k",
                               "sasl.oauthbearer.client.secret": "s", "security.protocol": "SASL_SSL"})
    assert shown == {"sasl.username": "shop", "sasl.password": MASK, "ssl.key.password": MASK,
                     "sasl.oauthbearer.client.secret": MASK, "security.protocol": "SASL_SSL"}


def test_settings_never_print_their_secrets():
    settings = Settings.from_env(ENV)
    assert no_secret(repr(settings)) and no_secret(str(settings)) and no_secret(f"{settings!r}")
    assert "redis://:***@127.0.0.1:6390/0" in repr(settings) and "'sasl.username': 'shop'" in repr(settings)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"REDIS_URL": f"http://:{REDIS_SECRET}@127.0.0.1/0"})
    assert "REDIS_URL must start with" in str(err.value) and REDIS_SECRET not in str(err.value)


def test_log_lines_and_tracebacks_are_masked():
    stream = io.StringIO()
    logger = logging.getLogger("test_masking")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        Masker.from_env(ENV).install(logger)
        logger.warning("connecting to %s with %r", ENV["REDIS_URL"], {"sasl.password": KAFKA_SECRET})
        try:
            raise RuntimeError(f"bad pseudonym key {KEY_SECRET}")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "connecting to redis://:***@127.0.0.1:6390/0" in out and "RuntimeError: bad pseudonym key ***" in out
    assert no_secret(out)


def test_the_command_line_masks_every_error_it_prints(monkeypatch, capsys):
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)

    def failing_run(args, settings):
        raise ConfigError(f"Redis at {settings.redis_url} is not reachable; settings {settings.kafka_security} "
                          f"key {settings.pseudonym_key}")

    monkeypatch.setattr(cli, "_cmd_run", failing_run)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_run(parser()))
    assert cli.main(["run", "intake"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: Redis at redis://:***@127.0.0.1:6390/0 is not reachable" in err
    assert no_secret(err)
    # A bad REDIS_URL scheme, the real path through Settings.validate.
    monkeypatch.setenv("REDIS_URL", f"http://:{REDIS_SECRET}@127.0.0.1/0")
    assert cli.main(["services", "status"]) == 2
    err = capsys.readouterr().err
    assert "REDIS_URL must start with" in err and no_secret(err)


def _with_run(parser):
    """The parser with `run` bound to the (patched) module-level handler."""
    for action in parser._subparsers._group_actions:
        action.choices["run"].set_defaults(handler=cli._cmd_run)
    return parser
