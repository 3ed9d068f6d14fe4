"""Alert candidates on the internal `alert-candidates` topic, keyed by dedup_key."""

from __future__ import annotations

from operators.alerts import AlertCandidate
from state.kafka import OutboundMessage
from state.serde import dumps, loads

TOPIC = "alert-candidates"


def candidate_message(candidate: AlertCandidate) -> OutboundMessage:
    return OutboundMessage(TOPIC, candidate.dedup_key.encode(), dumps(candidate.to_dict()))


def decode_candidate(value: bytes) -> AlertCandidate:
    return AlertCandidate.from_dict(loads(value))
