"""The one place that touches orjson: bytes <-> JSON values <-> records."""

from __future__ import annotations

import base64

import orjson

from operators.events import InputEvent, InvalidEvent, parse_event


dumps = orjson.dumps  # value -> JSON bytes
loads = orjson.loads  # JSON bytes or str -> value
JSONDecodeError = orjson.JSONDecodeError


def decode_event(topic: str, raw: bytes | None) -> InputEvent:
    """Bytes from contract topic `topic` -> validated record, or InvalidEvent with the reason."""
    if raw is None:
        raise InvalidEvent("empty message (no value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidEvent(f"bad JSON: {err}") from None
    return parse_event(topic, obj)


def encode_event(event: InputEvent) -> bytes:
    return orjson.dumps(event.to_dict())


def raw_text(raw: bytes | None) -> tuple[str, str]:
    """The original value as text for a dead letter, and its encoding: utf-8, else base64."""
    if raw is None:
        return "", "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
