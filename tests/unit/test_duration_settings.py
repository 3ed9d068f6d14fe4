"""Horizons and delays in any unit (issue 16), the whole-day settings still working."""

import pytest

from shopstream.settings import ConfigError, Settings

HOUR = 3_600_000
DAY = 24 * HOUR


def test_durations_in_any_unit_and_the_day_settings_still_work():
    assert Settings.from_env({"SHOPSTREAM_FRAUD_LABEL_HORIZON": "6h"}).fraud_label_horizon_ms == 6 * HOUR
    assert Settings.from_env({"SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS": "2"}).fraud_label_horizon_ms == 2 * DAY
    assert Settings.from_env({}).fraud_label_horizon_ms == 30 * DAY
    settings = Settings.from_env({"SHOPSTREAM_CHURN_HORIZON": "1d12h", "SHOPSTREAM_CHURN_RESCORE": "30m"})
    assert settings.churn_horizon_ms == 36 * HOUR and settings.churn_rescore_ms == 30 * 60_000


@pytest.mark.parametrize("env, says", [
    ({"SHOPSTREAM_FRAUD_LABEL_HORIZON": "6 hours"}, "SHOPSTREAM_FRAUD_LABEL_HORIZON must be a duration"),
    ({"SHOPSTREAM_CHURN_RESCORE": "0h"}, "SHOPSTREAM_CHURN_RESCORE must be longer than 0"),
    ({"SHOPSTREAM_FRAUD_LABEL_HORIZON": "6h", "SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS": "1"},
     "remove SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS"),
])
def test_a_bad_or_doubled_duration_says_what_to_change(env, says):
    with pytest.raises(ConfigError, match=says):
        Settings.from_env(env)


def test_a_child_process_environment_keeps_a_duration_in_any_unit():
    # `shopstream run` starts each flow with `to_env()`; with both names in it the flow refused to start.
    settings = Settings.from_env({"SHOPSTREAM_FRAUD_LABEL_HORIZON": "6h", "SHOPSTREAM_CHURN_HORIZON": "45d",
                                  "SHOPSTREAM_CHURN_RESCORE": "12h"})
    child = Settings.from_env(settings.to_env())
    assert child == settings and child.fraud_label_horizon_ms == 6 * HOUR and child.churn_rescore_ms == 12 * HOUR
