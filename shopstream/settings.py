"""One frozen settings object, read from the environment and validated at start.

Every knob of shopstream lives here with its default; flows receive a `Settings`
instead of reading the environment themselves. A bad value raises `ConfigError`
naming the variable and what to put there.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

# The contract's topic names, before the prefix is applied.
INPUT_TOPICS = ("clickstream", "orders", "payments", "inventory")
OUTPUT_TOPICS = (
    "fraud-decisions",
    "coupons",
    "alerts",
    "metrics",
    "churn-scores",
    "dead-letters",
)

# Topics between our own flows (not part of the contract): detectors publish alert
# candidates here and the alert router turns them into on-call alerts.
INTERNAL_TOPICS = ("alert-candidates",)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS + INTERNAL_TOPICS

# librdkafka property families that carry security settings; env vars
# KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_* map onto them.
_KAFKA_PASSTHROUGH_FAMILIES = ("security.", "sasl.", "ssl.")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str = "localhost:9092"
    redis_url: str = "redis://localhost:6379/0"
    topic_prefix: str = ""
    redis_prefix: str = "shopstream:"
    processes: int = 1
    workers_per_process: int = 1
    partitions: int = 4
    recovery_dir: Path = Path(".shopstream/recovery")
    snapshot_interval_s: int = 5
    backup_interval_s: int = 0
    services_dir: Path = Path(".shopstream/services")
    cache_dir: Path = Path.home() / ".cache" / "shopstream"
    kafka_version: str = "3.9.1"
    kafka_heap: str = "512m"
    input_window_s: int = 60
    allowed_lateness_s: int = 10
    max_event_ahead_s: int = 3600
    idle_key_report_s: int = 3600
    alert_escalate_s: int = 300
    alert_warning_limit_s: int = 1800
    alert_reminder_s: int = 900
    alert_traffic_drop_pct: int = 30
    alert_lag_messages: int = 100_000
    alert_lag_sustain_s: int = 60
    flow_api_port_base: int = 0
    stock_buckets: int = 16
    stock_retention_s: int = 600
    stock_default_safety_stock: int = 0
    stock_urgent_percent: int = 50
    stock_urgent_minutes: int = 30
    stock_velocity_window_s: int = 300
    stock_velocity_min_units: int = 5
    stock_replenish_cover_min: int = 120
    partition_idle_ms: int = 500
    stock_caught_up_ms: int = 5000
    startup_grace_ms: int = 5000
    history_length: int = 120
    # coupons (shared by the abandoned-cart and churn win-back flows)
    coupon_cap_s: int = 86_400
    coupon_dedupe_ttl_s: int = 604_800
    # abandoned-cart coupons (flows/coupons.py)
    coupon_abandon_after_s: int = 1800
    coupon_lateness_ms: int = 250
    coupon_buckets: int = 16
    coupon_policy: str = ""
    coupon_metrics_window_s: int = 3600
    # fraud flow (flows/fraud.py)
    fraud_label_horizon_days: int = 30
    fraud_block_good_bp: int = 10
    fraud_review_good_bp: int = 100
    fraud_card_test_cards: int = 5
    fraud_card_test_attempts: int = 10
    fraud_history_days: int = 90
    fraud_flag_ttl_days: int = 30
    fraud_checkpoint_interval_s: int = 300
    fraud_model_dir: Path = Path(".shopstream/models")
    fraud_metrics_window_s: int = 60
    fraud_spike_factor: int = 5
    fraud_spike_min_blocks: int = 5
    fraud_client_timeout_ms: int = 80
    fraud_fail_open_amount: int = 500
    fraud_nice: int = 0
    pseudonym_key: str = ""
    # funnel flow
    funnel_window_s: int = 60
    funnel_rolling_s: int = 900
    funnel_session_timeout_s: int = 1800
    funnel_order_retention_s: int = 3600
    funnel_buckets: int = 8
    funnel_payment_span_s: int = 300
    funnel_payment_min_attempts: int = 30
    funnel_payment_failure_pct: int = 15
    funnel_dropoff_min_sessions: int = 200
    funnel_dropoff_pct: int = 50
    funnel_experiment_min_sessions: int = 1000
    # churn (customer value tiers, churn risk, win-back offers; see README)
    churn_buckets: int = 8
    churn_horizon_days: int = 90
    churn_rfm_horizons_days: str = "28,91,364"
    churn_slot_days: int = 7
    churn_activity_days: int = 28
    churn_rescore_days: int = 7
    churn_label_period_days: int = 90
    churn_tier_monetary: str = "10000,3000,800"
    churn_tier_orders: str = "12,6,2"
    churn_risk_bands: str = "0.4,0.7"
    churn_learning_rate: str = "0.2"
    churn_learn_batch: int = 256
    churn_learn_wait_days: int = 7
    churn_winback: str = "diamond:percent_off:20:300:14,gold:amount_off:50:300:14"
    churn_currency: str = "CNY"
    churn_emit_features: int = 0
    churn_model_dir: Path = Path(".shopstream/models")
    kafka_security: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Paths may arrive as strings from code (overrides); normalise them once here.
        for name in ("recovery_dir", "services_dir", "cache_dir", "fraud_model_dir", "churn_model_dir"):
            value = getattr(self, name)
            if not isinstance(value, Path):
                object.__setattr__(self, name, Path(value).expanduser())

    # -- derived -----------------------------------------------------------
    def topic(self, name: str) -> str:
        """The real topic name for a contract topic name."""
        return f"{self.topic_prefix}{name}"

    def redis_key(self, key: str) -> str:
        return f"{self.redis_prefix}{key}"

    @property
    def total_workers(self) -> int:
        return self.processes * self.workers_per_process

    @property
    def topic_partitions(self) -> int:
        """Partitions per topic: never fewer than the workers that read them."""
        return max(self.partitions, self.total_workers)

    def kafka_config(self) -> dict[str, str]:
        """librdkafka settings shared by every client: brokers plus security."""
        return {"bootstrap.servers": self.kafka_bootstrap_servers, **self.kafka_security}

    @property
    def kafka_host_port(self) -> tuple[str, int]:
        first = self.kafka_bootstrap_servers.split(",")[0].strip()
        host, _, port = first.rpartition(":")
        return host or "localhost", int(port)

    @property
    def redis_host_port(self) -> tuple[str, int]:
        parsed = urlparse(self.redis_url)
        return parsed.hostname or "localhost", parsed.port or 6379

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {spec.env: str(getattr(self, spec.name)) for spec in _SPECS}
        for prop, value in self.kafka_security.items():
            env["KAFKA_" + prop.replace(".", "_").upper()] = value
        return env

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides) -> "Settings":
        env = os.environ if env is None else env
        values: dict = {}
        for spec in _SPECS:
            raw = env.get(spec.env)
            if raw is not None and raw != "":
                values[spec.name] = spec.parse(raw)
        values["kafka_security"] = _kafka_security_from_env(env)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        _check_host_port("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers)
        if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]", self.kafka_heap):
            raise ConfigError(f"SHOPSTREAM_KAFKA_HEAP must look like 512m or 2g, got {self.kafka_heap!r}")
        parsed = urlparse(self.redis_url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"REDIS_URL must start with redis://, rediss:// or unix://, got {self.redis_url!r}"
            )
        if not 0 < self.alert_traffic_drop_pct < 100:
            raise ConfigError(
                f"SHOPSTREAM_ALERT_TRAFFIC_DROP_PCT must be between 1 and 99, got {self.alert_traffic_drop_pct}"
            )
        _check_coupon_policy(self.coupon_policy)
        if self.fraud_review_good_bp < self.fraud_block_good_bp or self.fraud_review_good_bp >= 10_000:
            raise ConfigError(
                "SHOPSTREAM_FRAUD_REVIEW_GOOD_BP must be at least SHOPSTREAM_FRAUD_BLOCK_GOOD_BP and below 10000, "
                f"got {self.fraud_review_good_bp} (block {self.fraud_block_good_bp})"
            )
        if self.pseudonym_key and len(self.pseudonym_key) < 16:
            raise ConfigError("SHOPSTREAM_PSEUDONYM_KEY must be at least 16 characters (a random secret)")
        self._validate_funnel()
        for spec in _SPECS:
            if spec.minimum is not None and getattr(self, spec.name) < spec.minimum:
                raise ConfigError(
                    f"{spec.env} must be at least {spec.minimum}, got {getattr(self, spec.name)}"
                )

    def _validate_funnel(self) -> None:
        if self.funnel_window_s >= 1 and self.funnel_rolling_s % self.funnel_window_s:
            raise ConfigError(
                f"SHOPSTREAM_FUNNEL_ROLLING_S must be a multiple of SHOPSTREAM_FUNNEL_WINDOW_S "
                f"({self.funnel_window_s}), got {self.funnel_rolling_s}"
            )
        if self.funnel_session_timeout_s < self.funnel_window_s + self.allowed_lateness_s:
            raise ConfigError(
                "SHOPSTREAM_FUNNEL_SESSION_TIMEOUT_S must be at least the funnel window plus the allowed lateness "
                f"({self.funnel_window_s + self.allowed_lateness_s} s), got {self.funnel_session_timeout_s}"
            )
        if not 0 < self.funnel_dropoff_pct < 100 or not 0 < self.funnel_payment_failure_pct < 100:
            raise ConfigError("SHOPSTREAM_FUNNEL_DROPOFF_PCT and SHOPSTREAM_FUNNEL_PAYMENT_FAILURE_PCT must be "
                              f"between 1 and 99, got {self.funnel_dropoff_pct} and {self.funnel_payment_failure_pct}")


@dataclass(frozen=True)
class _Spec:
    name: str
    env: str
    kind: type
    minimum: int | None = None

    def parse(self, raw: str):
        if self.kind is int:
            try:
                return int(raw)
            except ValueError:
                raise ConfigError(f"{self.env} must be an integer, got {raw!r}") from None
        if self.kind is Path:
            return Path(raw).expanduser()
        return raw


_SPECS = (
    _Spec("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS", str),
    _Spec("redis_url", "REDIS_URL", str),
    _Spec("topic_prefix", "SHOPSTREAM_TOPIC_PREFIX", str),
    _Spec("redis_prefix", "SHOPSTREAM_REDIS_PREFIX", str),
    _Spec("processes", "SHOPSTREAM_PROCESSES", int, 1),
    _Spec("workers_per_process", "SHOPSTREAM_WORKERS_PER_PROCESS", int, 1),
    _Spec("partitions", "SHOPSTREAM_PARTITIONS", int, 1),
    _Spec("recovery_dir", "SHOPSTREAM_RECOVERY_DIR", Path),
    _Spec("snapshot_interval_s", "SHOPSTREAM_SNAPSHOT_INTERVAL_S", int, 1),
    _Spec("backup_interval_s", "SHOPSTREAM_BACKUP_INTERVAL_S", int, 0),
    _Spec("services_dir", "SHOPSTREAM_SERVICES_DIR", Path),
    _Spec("cache_dir", "SHOPSTREAM_CACHE_DIR", Path),
    _Spec("kafka_version", "SHOPSTREAM_KAFKA_VERSION", str),
    _Spec("kafka_heap", "SHOPSTREAM_KAFKA_HEAP", str),
    _Spec("input_window_s", "SHOPSTREAM_INPUT_WINDOW_S", int, 1),
    _Spec("allowed_lateness_s", "SHOPSTREAM_ALLOWED_LATENESS_S", int, 0),
    _Spec("max_event_ahead_s", "SHOPSTREAM_MAX_EVENT_AHEAD_S", int, 0),
    _Spec("idle_key_report_s", "SHOPSTREAM_IDLE_KEY_REPORT_S", int, 0),
    _Spec("alert_escalate_s", "SHOPSTREAM_ALERT_ESCALATE_S", int, 1),
    _Spec("alert_warning_limit_s", "SHOPSTREAM_ALERT_WARNING_LIMIT_S", int, 1),
    _Spec("alert_reminder_s", "SHOPSTREAM_ALERT_REMINDER_S", int, 0),
    _Spec("alert_traffic_drop_pct", "SHOPSTREAM_ALERT_TRAFFIC_DROP_PCT", int, 1),
    _Spec("alert_lag_messages", "SHOPSTREAM_ALERT_LAG_MESSAGES", int, 1),
    _Spec("alert_lag_sustain_s", "SHOPSTREAM_ALERT_LAG_SUSTAIN_S", int, 0),
    _Spec("flow_api_port_base", "SHOPSTREAM_FLOW_API_PORT_BASE", int, 0),
    _Spec("stock_buckets", "SHOPSTREAM_STOCK_BUCKETS", int, 1),
    _Spec("stock_retention_s", "SHOPSTREAM_STOCK_RETENTION_S", int, 0),
    _Spec("stock_default_safety_stock", "SHOPSTREAM_STOCK_DEFAULT_SAFETY_STOCK", int, 0),
    _Spec("stock_urgent_percent", "SHOPSTREAM_STOCK_URGENT_PERCENT", int, 0),
    _Spec("stock_urgent_minutes", "SHOPSTREAM_STOCK_URGENT_MINUTES", int, 0),
    _Spec("stock_velocity_window_s", "SHOPSTREAM_STOCK_VELOCITY_WINDOW_S", int, 10),
    _Spec("stock_velocity_min_units", "SHOPSTREAM_STOCK_VELOCITY_MIN_UNITS", int, 1),
    _Spec("stock_replenish_cover_min", "SHOPSTREAM_STOCK_REPLENISH_COVER_MIN", int, 1),
    _Spec("partition_idle_ms", "SHOPSTREAM_PARTITION_IDLE_MS", int, 1),
    _Spec("stock_caught_up_ms", "SHOPSTREAM_STOCK_CAUGHT_UP_MS", int, 1),
    _Spec("startup_grace_ms", "SHOPSTREAM_STARTUP_GRACE_MS", int, 0),
    _Spec("history_length", "SHOPSTREAM_HISTORY_LENGTH", int, 1),
    # coupons (shared by the abandoned-cart and churn win-back flows)
    _Spec("coupon_cap_s", "SHOPSTREAM_COUPON_CAP_S", int, 0),
    _Spec("coupon_dedupe_ttl_s", "SHOPSTREAM_COUPON_DEDUPE_TTL_S", int, 3600),
    # abandoned-cart coupons (flows/coupons.py)
    _Spec("coupon_abandon_after_s", "SHOPSTREAM_COUPON_ABANDON_AFTER_S", int, 1),
    _Spec("coupon_lateness_ms", "SHOPSTREAM_COUPON_LATENESS_MS", int, 0),
    _Spec("coupon_buckets", "SHOPSTREAM_COUPON_BUCKETS", int, 1),
    _Spec("coupon_policy", "SHOPSTREAM_COUPON_POLICY", str),
    _Spec("coupon_metrics_window_s", "SHOPSTREAM_COUPON_METRICS_WINDOW_S", int, 1),
    # fraud flow (flows/fraud.py)
    _Spec("fraud_label_horizon_days", "SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS", int, 1),
    _Spec("fraud_block_good_bp", "SHOPSTREAM_FRAUD_BLOCK_GOOD_BP", int, 1),
    _Spec("fraud_review_good_bp", "SHOPSTREAM_FRAUD_REVIEW_GOOD_BP", int, 1),
    _Spec("fraud_card_test_cards", "SHOPSTREAM_FRAUD_CARD_TEST_CARDS", int, 2),
    _Spec("fraud_card_test_attempts", "SHOPSTREAM_FRAUD_CARD_TEST_ATTEMPTS", int, 2),
    _Spec("fraud_history_days", "SHOPSTREAM_FRAUD_HISTORY_DAYS", int, 1),
    _Spec("fraud_flag_ttl_days", "SHOPSTREAM_FRAUD_FLAG_TTL_DAYS", int, 1),
    _Spec("fraud_checkpoint_interval_s", "SHOPSTREAM_FRAUD_CHECKPOINT_INTERVAL_S", int, 1),
    _Spec("fraud_model_dir", "SHOPSTREAM_FRAUD_MODEL_DIR", Path),
    _Spec("fraud_metrics_window_s", "SHOPSTREAM_FRAUD_METRICS_WINDOW_S", int, 1),
    _Spec("fraud_spike_factor", "SHOPSTREAM_FRAUD_SPIKE_FACTOR", int, 2),
    _Spec("fraud_spike_min_blocks", "SHOPSTREAM_FRAUD_SPIKE_MIN_BLOCKS", int, 1),
    _Spec("fraud_client_timeout_ms", "SHOPSTREAM_FRAUD_CLIENT_TIMEOUT_MS", int, 1),
    _Spec("fraud_fail_open_amount", "SHOPSTREAM_FRAUD_FAIL_OPEN_AMOUNT", int, 0),
    _Spec("fraud_nice", "SHOPSTREAM_FRAUD_NICE", int, -20),
    _Spec("pseudonym_key", "SHOPSTREAM_PSEUDONYM_KEY", str),
    # funnel flow
    _Spec("funnel_window_s", "SHOPSTREAM_FUNNEL_WINDOW_S", int, 1),
    _Spec("funnel_rolling_s", "SHOPSTREAM_FUNNEL_ROLLING_S", int, 1),
    _Spec("funnel_session_timeout_s", "SHOPSTREAM_FUNNEL_SESSION_TIMEOUT_S", int, 1),
    _Spec("funnel_order_retention_s", "SHOPSTREAM_FUNNEL_ORDER_RETENTION_S", int, 0),
    _Spec("funnel_buckets", "SHOPSTREAM_FUNNEL_BUCKETS", int, 1),
    _Spec("funnel_payment_span_s", "SHOPSTREAM_FUNNEL_PAYMENT_SPAN_S", int, 1),
    _Spec("funnel_payment_min_attempts", "SHOPSTREAM_FUNNEL_PAYMENT_MIN_ATTEMPTS", int, 1),
    _Spec("funnel_payment_failure_pct", "SHOPSTREAM_FUNNEL_PAYMENT_FAILURE_PCT", int, 1),
    _Spec("funnel_dropoff_min_sessions", "SHOPSTREAM_FUNNEL_DROPOFF_MIN_SESSIONS", int, 1),
    _Spec("funnel_dropoff_pct", "SHOPSTREAM_FUNNEL_DROPOFF_PCT", int, 1),
    _Spec("funnel_experiment_min_sessions", "SHOPSTREAM_FUNNEL_EXPERIMENT_MIN_SESSIONS", int, 1),
    # churn (customer value tiers, churn risk, win-back offers; see README)
    _Spec("churn_buckets", "SHOPSTREAM_CHURN_BUCKETS", int, 1),
    _Spec("churn_horizon_days", "SHOPSTREAM_CHURN_HORIZON_DAYS", int, 1),
    _Spec("churn_rfm_horizons_days", "SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS", str),
    _Spec("churn_slot_days", "SHOPSTREAM_CHURN_SLOT_DAYS", int, 1),
    _Spec("churn_activity_days", "SHOPSTREAM_CHURN_ACTIVITY_DAYS", int, 1),
    _Spec("churn_rescore_days", "SHOPSTREAM_CHURN_RESCORE_DAYS", int, 1),
    _Spec("churn_label_period_days", "SHOPSTREAM_CHURN_LABEL_PERIOD_DAYS", int, 1),
    _Spec("churn_tier_monetary", "SHOPSTREAM_CHURN_TIER_MONETARY", str),
    _Spec("churn_tier_orders", "SHOPSTREAM_CHURN_TIER_ORDERS", str),
    _Spec("churn_risk_bands", "SHOPSTREAM_CHURN_RISK_BANDS", str),
    _Spec("churn_learning_rate", "SHOPSTREAM_CHURN_LEARNING_RATE", str),
    _Spec("churn_learn_batch", "SHOPSTREAM_CHURN_LEARN_BATCH", int, 1),
    _Spec("churn_learn_wait_days", "SHOPSTREAM_CHURN_LEARN_WAIT_DAYS", int, 0),
    _Spec("churn_winback", "SHOPSTREAM_CHURN_WINBACK", str),
    _Spec("churn_currency", "SHOPSTREAM_CHURN_CURRENCY", str),
    _Spec("churn_emit_features", "SHOPSTREAM_CHURN_EMIT_FEATURES", int, 0),
    _Spec("churn_model_dir", "SHOPSTREAM_CHURN_MODEL_DIR", Path),
)

assert {s.name for s in _SPECS} | {"kafka_security"} == {f.name for f in fields(Settings)}


def _kafka_security_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """KAFKA_SASL_USERNAME=u -> {"sasl.username": "u"}; only security families pass."""
    passthrough = {}
    for name, value in env.items():
        if not name.startswith("KAFKA_") or name == "KAFKA_BOOTSTRAP_SERVERS":
            continue
        prop = name[len("KAFKA_") :].lower().replace("_", ".")
        if prop.startswith(_KAFKA_PASSTHROUGH_FAMILIES):
            passthrough[prop] = value
    return passthrough


def _check_coupon_policy(path: str) -> None:
    """The abandoned-cart offer policy file must load and validate (empty: the built-in one)."""
    if not path:
        return
    from operators.coupon_policy import PolicyError, load_policy  # operators never import settings

    try:
        load_policy(path)
    except PolicyError as err:
        raise ConfigError(f"SHOPSTREAM_COUPON_POLICY ({path}): {err}") from None


def _check_host_port(env_name: str, servers: str) -> None:
    for server in servers.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(
                f"{env_name} must be a comma-separated list of host:port, got {servers!r}"
            )
