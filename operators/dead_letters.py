"""The dead-letter record: an input that could not be used, kept with the reason."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeadLetter:
    ts: int  # the input's Kafka timestamp (-1 if it has none): a bad event may carry no usable `ts`
    source_topic: str
    partition: int
    offset: int
    error: str
    raw: str  # the original value, or its first bytes when `raw_truncated`
    raw_encoding: str = "utf-8"  # "base64" when the value was not valid UTF-8
    raw_truncated: bool = False  # `raw` holds only the first SHOPSTREAM_DEAD_LETTER_RAW_BYTES of the value
    raw_length: int | None = None  # bytes in the whole original value
    raw_sha256: str | None = None  # hex SHA-256 of the whole original value

    @property
    def dead_letter_id(self) -> str:
        """Deterministic: the same bad input gives the same id on every replay."""
        return f"{self.source_topic}:{self.partition}:{self.offset}"

    def to_dict(self) -> dict:
        out = {
            "dead_letter_id": self.dead_letter_id,
            "ts": self.ts,
            "source_topic": self.source_topic,
            "partition": self.partition,
            "offset": self.offset,
            "error": self.error,
            "raw": self.raw,
        }
        if self.raw_encoding != "utf-8":
            out["raw_encoding"] = self.raw_encoding
        out["raw_truncated"] = self.raw_truncated
        if self.raw_length is not None:
            out["raw_length"] = self.raw_length
        if self.raw_sha256 is not None:
            out["raw_sha256"] = self.raw_sha256
        return out
