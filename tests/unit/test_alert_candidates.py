import pytest

from operators.alerts import AlertCandidate
from state.alert_candidates import candidate_message, decode_candidate


def test_candidates_round_trip_through_their_topic():
    candidate = AlertCandidate(
        ts=5, rule="stock.out", key="sku-9", active=True, severity="critical",
        summary="sku-9 is out of stock", value=0, threshold=0, detail={"suggested_restock": 40},
    )
    message = candidate_message(candidate)
    assert message.topic == "alert-candidates" and message.key == b"stock.out:sku-9"
    assert decode_candidate(message.value) == candidate


def test_unknown_severity_is_refused():
    with pytest.raises(ValueError, match="severity"):
        AlertCandidate(ts=1, rule="r", key="k", active=True, severity="panic", summary="s")
