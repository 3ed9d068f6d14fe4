"""Secrets never printed: the one place that knows what a secret looks like.

The secrets are the password (and a `password=` query parameter) in REDIS_URL, the
Kafka security settings that hold secrets (`sasl.password`, `ssl.key.password`,
`sasl.oauthbearer.client.secret`, `sasl.jaas.config`, ...) and SHOPSTREAM_PSEUDONYM_KEY.
Every message that shows a URL or a configuration goes through `mask_url` or
`Masker.redact`; the command line installs `Masker.log_filter()` on every log handler
and redacts every error it prints, so a secret that reaches a message some other way
(a library's exception text) is caught there too.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping
from urllib.parse import parse_qsl, quote, unquote, urlsplit

MASK = "***"

# librdkafka properties (after KAFKA_ -> lower, _ -> .) whose values are secrets.
_SECRET_PARTS = ("password", "secret", "jaas", "pem", "token", "oauthbearer.config")
# user:password@ in any URL inside a text, whatever the scheme.
_URL_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)(?P<password>[^\s@/]+)(?=@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&\s'\"]+)", re.IGNORECASE)
_MIN_REDACTED_LEN = 4  # shorter values are too common as plain text to replace everywhere


def is_secret_property(prop: str) -> bool:
    """A Kafka security property whose value must never be printed."""
    return any(part in prop.lower() for part in _SECRET_PARTS)


def mask_url(url: str) -> str:
    """The URL with its password (userinfo or `password=` parameter) replaced by ***."""
    scheme, sep, rest = url.partition("://")
    if sep:
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        netloc, tail = rest[:cut], rest[cut:]
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, colon, _ = userinfo.partition(":")
            if colon:
                netloc = f"{user}:{MASK}@{host}"
        url = f"{scheme}://{netloc}{tail}"
    return _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", url)


def mask_kafka_config(config: Mapping[str, str]) -> dict[str, str]:
    return {prop: (MASK if is_secret_property(prop) else value) for prop, value in config.items()}


@dataclass(frozen=True)
class Masker:
    """Replaces known secret values (and any URL's password) in text."""

    secrets: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Masker":
        """The secrets of an environment (os.environ, or `Settings.to_env()`)."""
        values: list[str] = []
        redis_url = env.get("REDIS_URL", "")
        if redis_url:
            values += _url_secrets(redis_url)
        for name, value in env.items():
            if name.startswith("KAFKA_") and is_secret_property(name[len("KAFKA_"):].replace("_", ".")):
                values.append(value)
        values.append(env.get("SHOPSTREAM_PSEUDONYM_KEY", ""))
        values.append(env.get("SHOPSTREAM_DASHBOARD_TOKEN", ""))
        values.append(env.get("SHOPSTREAM_PAGERDUTY_ROUTING_KEY", ""))
        return cls.of(values)

    @classmethod
    def of(cls, values: Iterable[str]) -> "Masker":
        found: set[str] = set()
        for value in values:
            if value and len(value) >= _MIN_REDACTED_LEN:
                found.update({value, quote(value, safe=""), unquote(value)})
        # Longest first: a secret that contains another is replaced whole.
        return cls(tuple(sorted((v for v in found if len(v) >= _MIN_REDACTED_LEN), key=lambda v: (-len(v), v))))

    def redact(self, text: str) -> str:
        text = _URL_CREDENTIALS.sub(rf"\g<head>{MASK}", text)
        text = _QUERY_PASSWORD.sub(rf"\g<head>{MASK}", text)
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def excepthook(self, kind, value, tb) -> None:
        """`sys.excepthook` for a crash: the traceback, masked, on stderr."""
        import sys
        import traceback

        sys.stderr.write(self.redact("".join(traceback.format_exception(kind, value, tb))))

    def log_filter(self) -> "RedactingFilter":
        return RedactingFilter(self)

    def install(self, logger: logging.Logger | None = None) -> None:
        """Redact every record that reaches the handlers of `logger` (default: root)."""
        logger = logger or logging.getLogger()
        for handler in logger.handlers:
            if not any(isinstance(f, RedactingFilter) for f in handler.filters):
                handler.addFilter(self.log_filter())


class RedactingFilter(logging.Filter):
    """A handler filter: the record's message and traceback with secrets masked."""

    def __init__(self, masker: Masker):
        super().__init__()
        self._masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._masker.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._masker.redact(record.exc_text)
        return True


def _url_secrets(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    values = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        _, sep, password = userinfo.partition(":")
        if sep:
            values.append(password)
    values += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k.lower() == "password"]
    return values
