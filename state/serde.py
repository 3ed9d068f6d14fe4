"""The one place that touches orjson: bytes <-> JSON values <-> records."""

from __future__ import annotations

import base64
import hashlib
from itertools import accumulate, count
from operator import sub
from typing import NamedTuple

import orjson

from operators.events import MAX_JSON_DEPTH, InputEvent, InvalidEvent, parse_event


dumps = orjson.dumps  # value -> JSON bytes
JSONDecodeError = orjson.JSONDecodeError

_parse = orjson.loads
_BRACKETS_ONLY = bytes(b for b in range(256) if b not in b"[]{}")  # translate()'s delete argument
_DEPTH_STEP = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth_exceeds(raw: bytes | bytearray | memoryview | str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `limit` (brackets inside
    strings do not count). orjson 3.8 parses any depth recursively on the C stack: a value
    nested 100,000 deep (200 kB) crashes the whole process with a segmentation fault, and a
    shallower one still costs Python recursion downstream. Every message passes here, so the
    common case is two C-level checks: fewer than `limit` + 1 brackets cannot nest deeper."""
    if len(raw) <= limit:
        return False
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Escapes first (an escaped backslash, then an escaped quote), then every other piece
    # between quotes is string content; what remains between strings is the structure.
    structure = b"".join(data.replace(b"\\\\", b"").replace(b'\\"', b"").split(b'"')[::2])
    steps = structure.translate(_DEPTH_STEP, _BRACKETS_ONLY)  # 2 per opener, 0 per closer
    # depth after k brackets = openers - closers = (sum of steps) - k
    return max(map(sub, accumulate(steps), count(1)), default=0) > limit


def loads(raw: bytes | bytearray | memoryview | str):
    """JSON bytes or str -> value; JSONDecodeError for bad JSON and for nesting deeper than
    MAX_JSON_DEPTH (refused before orjson sees it, see `json_depth_exceeds`)."""
    if json_depth_exceeds(raw):
        raise orjson.JSONDecodeError(f"nested deeper than {MAX_JSON_DEPTH} levels", "", 0)
    return _parse(raw)


def decode_event(topic: str, raw: bytes | None) -> InputEvent:
    """Bytes from contract topic `topic` -> validated record, or InvalidEvent with the reason."""
    if raw is None:
        raise InvalidEvent("empty message (no value)")
    try:
        obj = loads(raw)
    except orjson.JSONDecodeError as err:
        raise InvalidEvent(f"bad JSON: {err}") from None
    return parse_event(topic, obj)


def encode_event(event: InputEvent) -> bytes:
    return orjson.dumps(event.to_dict())


class RawExcerpt(NamedTuple):
    """What a dead letter keeps of an input value: at most `limit` bytes of it, as text."""

    text: str
    encoding: str  # "utf-8", or "base64" when the whole value is not valid UTF-8
    truncated: bool
    length: int  # bytes in the whole value
    sha256: str  # hex, of the whole value


def raw_excerpt(raw: bytes | None, limit: int) -> RawExcerpt:
    """The first `limit` bytes of the value as text (never a split UTF-8 character), so a
    dead letter fits a Kafka message whatever the input; its length and hash identify the whole."""
    value = b"" if raw is None else bytes(raw)
    digest = hashlib.sha256(value).hexdigest()
    head = value[:limit]
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return RawExcerpt(base64.b64encode(head).decode("ascii"), "base64", len(head) < len(value), len(value), digest)
    # The whole value is UTF-8, so only a character cut at the end can fail to decode.
    return RawExcerpt(head.decode("utf-8", "ignore"), "utf-8", len(head) < len(value), len(value), digest)


def raw_text(raw: bytes | None) -> tuple[str, str]:
    """The original value as text for a dead letter, and its encoding: utf-8, else base64."""
    if raw is None:
        return "", "utf-8"
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"
