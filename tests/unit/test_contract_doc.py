"""docs/contract.md names everything the code puts on the wire, and the docs stay inside the repository.

Other teams build against docs/contract.md alone: a topic, status, alert rule, metric or
reason code the engine emits but the page does not name is a broken promise.
"""
import re
from pathlib import Path

import pytest

from operators import events, fraud_rules
from operators.traffic_behaviour import SCORE_WEIGHTS
from shopstream.settings import INPUT_TOPICS, OUTPUT_TOPICS

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = (ROOT / "docs" / "contract.md").read_text()
SOURCES = [p for package in ("operators", "flows", "shopstream", "state") for p in (ROOT / package).rglob("*.py")
           if "benchmarks" not in p.parts]


def mentioned(word: str) -> bool:
    return f"`{word}`" in CONTRACT or re.search(rf"(?<![\w.]){re.escape(word)}(?![\w.])", CONTRACT) is not None


@pytest.mark.parametrize("topic", INPUT_TOPICS + OUTPUT_TOPICS)
def test_every_topic_has_its_section(topic):
    assert re.search(rf"^### `{re.escape(topic)}`", CONTRACT, re.M), f"docs/contract.md has no section for {topic}"


@pytest.mark.parametrize("values", [events.CLICK_TYPES, events.ORDER_STATUSES, events.PAYMENT_STATUSES,
                                    events.INVENTORY_KINDS, events.STOCK_POOLS])
def test_every_accepted_value_is_named(values):
    assert [value for value in sorted(values) if not mentioned(value)] == []


def _rules_in_code() -> set[str]:
    pattern = re.compile(r'(?:\brule=|\b[A-Z_]*RULE = )"([a-z_]+(?:\.[a-z_]+)?)"')
    return {rule for path in SOURCES for rule in pattern.findall(path.read_text())}


def test_every_alert_rule_the_code_raises_is_listed():
    rules = _rules_in_code()
    assert {"stock.out", "fraud.spike", "lag", "engine.flow_down", "price.undercut"} <= rules  # the scan works
    rules_section = CONTRACT[CONTRACT.index("- Rules:"):CONTRACT.index("### `metrics`")]
    assert sorted(rule for rule in rules if f"`{rule}`" not in rules_section) == []


def test_every_metric_kind_is_in_the_metrics_table():
    pattern = re.compile(r'"metric":\s*"([a-z_]+)"')
    kinds = {kind for path in SOURCES for kind in pattern.findall(path.read_text())}
    assert {"input", "funnel", "kpi", "fraud", "traffic", "order_success"} <= kinds
    assert sorted(kind for kind in kinds if f"| `{kind}` |" not in CONTRACT) == []


def test_every_reason_code_is_named():
    fraud_codes = {value for name, value in vars(fraud_rules).items()
                   if name.isupper() and isinstance(value, str) and value != fraud_rules.__name__}
    assert "cards.device" in fraud_codes
    assert sorted(code for code in fraud_codes | set(SCORE_WEIGHTS) if f"`{code}`" not in CONTRACT) == []


@pytest.mark.parametrize("document", ["README.md", "docs/contract.md", "simulators/README.md", "BENCHMARKS.md"])
def test_links_stay_inside_the_repository_and_resolve(document):
    path = ROOT / document
    text = path.read_text()
    assert "../shared" not in text and "/work/" not in text
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        assert (path.parent / target).resolve().is_relative_to(ROOT), target
        assert (path.parent / target).exists(), f"{document} links to a missing {target}"
