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
INPUT_TOPICS = ("clickstream", "orders", "payments", "inventory", "prices")
OUTPUT_TOPICS = (
    "fraud-decisions",
    "coupons",
    "alerts",
    "metrics",
    "churn-scores",
    "traffic-flags",
    "dead-letters",
    "price-suggestions",
)

# Topics between our own flows (not part of the contract): detectors publish alert
# candidates here and the alert router turns them into on-call alerts.
INTERNAL_TOPICS = ("alert-candidates",)
ALL_TOPICS = INPUT_TOPICS + OUTPUT_TOPICS + INTERNAL_TOPICS

# A dead letter's `raw` is cut to SHOPSTREAM_DEAD_LETTER_RAW_BYTES, at most this: six times
# it (every byte a JSON escape) plus the metadata stays under Kafka's default 1 MB message.
MAX_DEAD_LETTER_RAW_BYTES = 131_072

# librdkafka property families that carry security settings; env vars
# KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_* map onto them.
_KAFKA_PASSTHROUGH_FAMILIES = ("security.", "sasl.", "ssl.")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and how to fix it."""


# Durations in any unit and the whole-day settings they replace: at most one of each pair is set.
_DURATION_PAIRS = (("SHOPSTREAM_FRAUD_LABEL_HORIZON", "SHOPSTREAM_FRAUD_LABEL_HORIZON_DAYS"),
                   ("SHOPSTREAM_CHURN_HORIZON", "SHOPSTREAM_CHURN_HORIZON_DAYS"),
                   ("SHOPSTREAM_CHURN_RESCORE", "SHOPSTREAM_CHURN_RESCORE_DAYS"))


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
    dead_letter_raw_bytes: int = 65_536  # bytes of a bad input kept in its dead letter (at most 131072)
    idle_key_report_s: int = 3600
    alert_escalate_s: int = 300
    alert_warning_limit_s: int = 1800
    alert_reminder_s: int = 900
    alert_group_wait_s: int = 10
    alert_group_interval_s: int = 60
    alert_rule_max_per_min: int = 5
    alert_traffic_drop_pct: int = 30
    alert_lag_messages: int = 100_000
    alert_lag_sustain_s: int = 60
    # Producer flows whose progress markers the alert router waits for (comma list; empty:
    # no hold). `shopstream run` sets it to the producers among the flows it runs.
    alert_producers: str = ""
    alert_producer_timeout_s: int = 60  # an expected producer silent this long (wall time) is down
    flow_api_port_base: int = 9460
    # alert forwarding and metrics (issue 20): `shopstream alerts forward`, Prometheus
    alertmanager_url: str = ""
    pagerduty_url: str = "https://events.pagerduty.com/v2/enqueue"
    pagerduty_routing_key: str = ""
    forward_group: str = "shopstream-alerts-forward"
    forward_resend_s: int = 60
    forward_retry_max_s: int = 10
    forward_metrics_port: int = 9459
    metrics_sd_dir: Path = Path(".shopstream/prometheus")
    # outages and supervision (issue 15): sinks wait out outages, the runner restarts flows
    outage_limit_s: int = 180
    restart_limit: int = 5
    restart_window_s: int = 600
    restart_backoff_s: int = 1
    restart_backoff_max_s: int = 60
    stock_buckets: int = 16
    stock_retention_s: int = 600
    stock_default_safety_stock: int = 0
    stock_urgent_percent: int = 50
    stock_urgent_minutes: int = 30
    stock_velocity_window_s: int = 300
    stock_velocity_min_units: int = 5
    stock_replenish_cover_min: int = 120
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
    fraud_label_horizon: str = ""  # any unit (`6h`, `30d`); overrides fraud_label_horizon_days
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
    # traffic flow (issue 22): brushing rings and click farms
    traffic_horizon_days: int = 7  # links between accounts count this long (event time)
    traffic_session_idle_s: int = 600  # a click session without a click this long is finished
    traffic_min_ring_members: int = 5
    traffic_order_threshold_pct: int = 60  # an order's score (0-100) at which it is flagged
    traffic_session_threshold_pct: int = 60
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
    # price watch (flows/pricing.py, issue 23)
    price_undercut_pct: int = 5
    price_undercut_hold_s: int = 60
    price_max_jump_factor: int = 3
    price_jump_confirm_s: int = 60
    price_default_floor_pct: int = 20
    price_raise_pct_warning: int = 3
    price_raise_pct_urgent: int = 8
    price_follow_up_pct: int = 1
    price_match_pct: int = 2
    price_fast_velocity_per_min: int = 1
    price_sellout_minutes: int = 60
    price_promo_window_s: int = 300
    price_promo_min_skus: int = 10
    price_foreign_horizon_s: int = 21600
    # order success and refund response (flows/order_success.py, issue 23)
    order_window_s: int = 300
    order_outcome_timeout_s: int = 2400
    order_retry_grace_s: int = 120
    order_success_pct_min: str = "99.9"
    order_success_min_orders: int = 1000
    order_decline_reasons: str = (
        "card_declined,insufficient_funds,expired_card,risk_declined,insufficient_balance,payment_password_error"
    )
    refund_response_p95_s: int = 60
    refund_wait_s: int = 600
    refund_min_requests: int = 20
    # churn (customer value tiers, churn risk, win-back offers; see README)
    churn_buckets: int = 8
    churn_horizon_days: int = 90
    churn_rfm_horizons_days: str = "28,91,364"
    churn_slot_days: int = 7
    churn_activity_days: int = 28
    churn_rescore_days: int = 7
    churn_horizon: str = ""  # any unit (`90d`, `12w`); overrides churn_horizon_days
    churn_rescore: str = ""  # any unit (`1d`, `6h`); overrides churn_rescore_days
    churn_label_period_days: int = 30
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
        for name in ("recovery_dir", "services_dir", "cache_dir", "fraud_model_dir", "churn_model_dir",
                     "metrics_sd_dir"):
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

    def __repr__(self) -> str:
        # Never print a credential: the Redis password, Kafka secrets, the pseudonym key.
        from shopstream.masking import MASK, mask_kafka_config, mask_url

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["redis_url"] = mask_url(self.redis_url)
        shown["kafka_security"] = mask_kafka_config(self.kafka_security)
        shown["pseudonym_key"] = MASK if self.pseudonym_key else ""
        shown["pagerduty_routing_key"] = MASK if self.pagerduty_routing_key else ""
        return f"Settings({', '.join(f'{name}={value!r}' for name, value in shown.items())})"

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in a child process."""
        env = {spec.env: str(getattr(self, spec.name)) for spec in _SPECS}
        for new, old in _DURATION_PAIRS:
            if env[new]:
                env[old] = ""  # set both and the child refuses to start (from_env)
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
        for new, old in _DURATION_PAIRS:
            if env.get(new) and env.get(old):
                raise ConfigError(f"both {new} and {old} are set: keep {new} (any unit, e.g. 6h, 30d) and "
                                  f"remove {old}")
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    @property
    def alert_producer_names(self) -> tuple[str, ...]:
        return tuple(sorted({name.strip() for name in self.alert_producers.split(",") if name.strip()}))

    # Durations in any unit, or the older whole-day settings (kept working).
    @property
    def fraud_label_horizon_ms(self) -> int:
        return _duration_or_days(self.fraud_label_horizon, "SHOPSTREAM_FRAUD_LABEL_HORIZON",
                                 self.fraud_label_horizon_days)

    @property
    def churn_horizon_ms(self) -> int:
        return _duration_or_days(self.churn_horizon, "SHOPSTREAM_CHURN_HORIZON", self.churn_horizon_days)

    @property
    def churn_rescore_ms(self) -> int:
        return _duration_or_days(self.churn_rescore, "SHOPSTREAM_CHURN_RESCORE", self.churn_rescore_days)

    def validate(self) -> None:
        for name in ("fraud_label_horizon_ms", "churn_horizon_ms", "churn_rescore_ms"):
            getattr(self, name)  # a malformed duration fails here, with the setting's name
        _check_host_port("KAFKA_BOOTSTRAP_SERVERS", self.kafka_bootstrap_servers)
        if not re.fullmatch(r"[1-9][0-9]*[kKmMgG]", self.kafka_heap):
            raise ConfigError(f"SHOPSTREAM_KAFKA_HEAP must look like 512m or 2g, got {self.kafka_heap!r}")
        parsed = urlparse(self.redis_url)
        if parsed.scheme not in ("redis", "rediss", "unix"):
            raise ConfigError(
                f"REDIS_URL must start with redis://, rediss:// or unix://, got {mask_url(self.redis_url)!r}"
            )
        if not 0 < self.alert_traffic_drop_pct < 100:
            raise ConfigError(
                f"SHOPSTREAM_ALERT_TRAFFIC_DROP_PCT must be between 1 and 99, got {self.alert_traffic_drop_pct}"
            )
        unknown = [name for name in self.alert_producer_names if name not in ALERT_PRODUCERS]
        if unknown:
            raise ConfigError(f"SHOPSTREAM_ALERT_PRODUCERS names no producer flow: {', '.join(unknown)}; "
                              f"choose from {', '.join(ALERT_PRODUCERS)}")
        _check_coupon_policy(self.coupon_policy)
        if self.fraud_review_good_bp < self.fraud_block_good_bp or self.fraud_review_good_bp >= 10_000:
            raise ConfigError(
                "SHOPSTREAM_FRAUD_REVIEW_GOOD_BP must be at least SHOPSTREAM_FRAUD_BLOCK_GOOD_BP and below 10000, "
                f"got {self.fraud_review_good_bp} (block {self.fraud_block_good_bp})"
            )
        if self.pseudonym_key and len(self.pseudonym_key) < 16:
            raise ConfigError("SHOPSTREAM_PSEUDONYM_KEY must be at least 16 characters (a random secret)")
        if self.dead_letter_raw_bytes > MAX_DEAD_LETTER_RAW_BYTES:
            # JSON-escaped, a byte of text can take 6 (\u0001): more would not fit Kafka's 1 MB message
            raise ConfigError(
                f"SHOPSTREAM_DEAD_LETTER_RAW_BYTES must be from 0 to {MAX_DEAD_LETTER_RAW_BYTES} "
                f"(bytes of a bad input kept in its dead letter), got {self.dead_letter_raw_bytes}"
            )
        self._validate_funnel()
        if self.restart_backoff_max_s < self.restart_backoff_s:
            raise ConfigError(
                "SHOPSTREAM_RESTART_BACKOFF_MAX_S must be at least SHOPSTREAM_RESTART_BACKOFF_S "
                f"({self.restart_backoff_s}), got {self.restart_backoff_max_s}"
            )
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


# The flows that write alert candidates (or, intake, input windows) with progress markers.
ALERT_PRODUCERS = ("intake", "stock", "funnel", "fraud", "traffic", "pricing", "order_success")

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
    _Spec("dead_letter_raw_bytes", "SHOPSTREAM_DEAD_LETTER_RAW_BYTES", int, 0),
    _Spec("idle_key_report_s", "SHOPSTREAM_IDLE_KEY_REPORT_S", int, 0),
    _Spec("alert_escalate_s", "SHOPSTREAM_ALERT_ESCALATE_S", int, 1),
    _Spec("alert_warning_limit_s", "SHOPSTREAM_ALERT_WARNING_LIMIT_S", int, 1),
    _Spec("alert_reminder_s", "SHOPSTREAM_ALERT_REMINDER_S", int, 0),
    _Spec("alert_group_wait_s", "SHOPSTREAM_ALERT_GROUP_WAIT_S", int, 0),
    _Spec("alert_group_interval_s", "SHOPSTREAM_ALERT_GROUP_INTERVAL_S", int, 1),
    _Spec("alert_rule_max_per_min", "SHOPSTREAM_ALERT_RULE_MAX_PER_MIN", int, 1),
    _Spec("alert_traffic_drop_pct", "SHOPSTREAM_ALERT_TRAFFIC_DROP_PCT", int, 1),
    _Spec("alert_lag_messages", "SHOPSTREAM_ALERT_LAG_MESSAGES", int, 1),
    _Spec("alert_lag_sustain_s", "SHOPSTREAM_ALERT_LAG_SUSTAIN_S", int, 0),
    _Spec("alert_producers", "SHOPSTREAM_ALERT_PRODUCERS", str),
    _Spec("alert_producer_timeout_s", "SHOPSTREAM_ALERT_PRODUCER_TIMEOUT_S", int, 1),
    _Spec("flow_api_port_base", "SHOPSTREAM_FLOW_API_PORT_BASE", int, 0),
    _Spec("alertmanager_url", "SHOPSTREAM_ALERTMANAGER_URL", str),
    _Spec("pagerduty_url", "SHOPSTREAM_PAGERDUTY_URL", str),
    _Spec("pagerduty_routing_key", "SHOPSTREAM_PAGERDUTY_ROUTING_KEY", str),
    _Spec("forward_group", "SHOPSTREAM_FORWARD_GROUP", str),
    _Spec("forward_resend_s", "SHOPSTREAM_FORWARD_RESEND_S", int, 1),
    _Spec("forward_retry_max_s", "SHOPSTREAM_FORWARD_RETRY_MAX_S", int, 1),
    _Spec("forward_metrics_port", "SHOPSTREAM_FORWARD_METRICS_PORT", int, 0),
    _Spec("metrics_sd_dir", "SHOPSTREAM_METRICS_SD_DIR", Path),
    _Spec("outage_limit_s", "SHOPSTREAM_OUTAGE_LIMIT_S", int, 1),
    _Spec("restart_limit", "SHOPSTREAM_RESTART_LIMIT", int, 0),
    _Spec("restart_window_s", "SHOPSTREAM_RESTART_WINDOW_S", int, 1),
    _Spec("restart_backoff_s", "SHOPSTREAM_RESTART_BACKOFF_S", int, 0),
    _Spec("restart_backoff_max_s", "SHOPSTREAM_RESTART_BACKOFF_MAX_S", int, 1),
    _Spec("stock_buckets", "SHOPSTREAM_STOCK_BUCKETS", int, 1),
    _Spec("stock_retention_s", "SHOPSTREAM_STOCK_RETENTION_S", int, 0),
    _Spec("stock_default_safety_stock", "SHOPSTREAM_STOCK_DEFAULT_SAFETY_STOCK", int, 0),
    _Spec("stock_urgent_percent", "SHOPSTREAM_STOCK_URGENT_PERCENT", int, 0),
    _Spec("stock_urgent_minutes", "SHOPSTREAM_STOCK_URGENT_MINUTES", int, 0),
    _Spec("stock_velocity_window_s", "SHOPSTREAM_STOCK_VELOCITY_WINDOW_S", int, 10),
    _Spec("stock_velocity_min_units", "SHOPSTREAM_STOCK_VELOCITY_MIN_UNITS", int, 1),
    _Spec("stock_replenish_cover_min", "SHOPSTREAM_STOCK_REPLENISH_COVER_MIN", int, 1),
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
    _Spec("fraud_label_horizon", "SHOPSTREAM_FRAUD_LABEL_HORIZON", str),
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
    _Spec("traffic_horizon_days", "SHOPSTREAM_TRAFFIC_HORIZON_DAYS", int, 1),
    _Spec("traffic_session_idle_s", "SHOPSTREAM_TRAFFIC_SESSION_IDLE_S", int, 1),
    _Spec("traffic_min_ring_members", "SHOPSTREAM_TRAFFIC_MIN_RING_MEMBERS", int, 2),
    _Spec("traffic_order_threshold_pct", "SHOPSTREAM_TRAFFIC_ORDER_THRESHOLD_PCT", int, 1),
    _Spec("traffic_session_threshold_pct", "SHOPSTREAM_TRAFFIC_SESSION_THRESHOLD_PCT", int, 1),
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
    # price watch (flows/pricing.py)
    _Spec("price_undercut_pct", "SHOPSTREAM_PRICE_UNDERCUT_PCT", int, 1),
    _Spec("price_undercut_hold_s", "SHOPSTREAM_PRICE_UNDERCUT_HOLD_S", int, 0),
    _Spec("price_max_jump_factor", "SHOPSTREAM_PRICE_MAX_JUMP_FACTOR", int, 2),
    _Spec("price_jump_confirm_s", "SHOPSTREAM_PRICE_JUMP_CONFIRM_S", int, 0),
    _Spec("price_default_floor_pct", "SHOPSTREAM_PRICE_DEFAULT_FLOOR_PCT", int, 0),
    _Spec("price_raise_pct_warning", "SHOPSTREAM_PRICE_RAISE_PCT_WARNING", int, 0),
    _Spec("price_raise_pct_urgent", "SHOPSTREAM_PRICE_RAISE_PCT_URGENT", int, 0),
    _Spec("price_follow_up_pct", "SHOPSTREAM_PRICE_FOLLOW_UP_PCT", int, 0),
    _Spec("price_match_pct", "SHOPSTREAM_PRICE_MATCH_PCT", int, 0),
    _Spec("price_fast_velocity_per_min", "SHOPSTREAM_PRICE_FAST_VELOCITY_PER_MIN", int, 1),
    _Spec("price_sellout_minutes", "SHOPSTREAM_PRICE_SELLOUT_MINUTES", int, 0),
    _Spec("price_promo_window_s", "SHOPSTREAM_PRICE_PROMO_WINDOW_S", int, 1),
    _Spec("price_promo_min_skus", "SHOPSTREAM_PRICE_PROMO_MIN_SKUS", int, 1),
    _Spec("price_foreign_horizon_s", "SHOPSTREAM_PRICE_FOREIGN_HORIZON_S", int, 1),
    # order success and refund response (flows/order_success.py)
    _Spec("order_window_s", "SHOPSTREAM_ORDER_WINDOW_S", int, 1),
    _Spec("order_outcome_timeout_s", "SHOPSTREAM_ORDER_OUTCOME_TIMEOUT_S", int, 1),
    _Spec("order_retry_grace_s", "SHOPSTREAM_ORDER_RETRY_GRACE_S", int, 0),
    _Spec("order_success_pct_min", "SHOPSTREAM_ORDER_SUCCESS_PCT_MIN", str),
    _Spec("order_success_min_orders", "SHOPSTREAM_ORDER_SUCCESS_MIN_ORDERS", int, 1),
    _Spec("order_decline_reasons", "SHOPSTREAM_ORDER_DECLINE_REASONS", str),
    _Spec("refund_response_p95_s", "SHOPSTREAM_REFUND_RESPONSE_P95_S", int, 1),
    _Spec("refund_wait_s", "SHOPSTREAM_REFUND_WAIT_S", int, 1),
    _Spec("refund_min_requests", "SHOPSTREAM_REFUND_MIN_REQUESTS", int, 1),
    # churn (customer value tiers, churn risk, win-back offers; see README)
    _Spec("churn_buckets", "SHOPSTREAM_CHURN_BUCKETS", int, 1),
    _Spec("churn_horizon_days", "SHOPSTREAM_CHURN_HORIZON_DAYS", int, 1),
    _Spec("churn_rfm_horizons_days", "SHOPSTREAM_CHURN_RFM_HORIZONS_DAYS", str),
    _Spec("churn_slot_days", "SHOPSTREAM_CHURN_SLOT_DAYS", int, 1),
    _Spec("churn_activity_days", "SHOPSTREAM_CHURN_ACTIVITY_DAYS", int, 1),
    _Spec("churn_rescore_days", "SHOPSTREAM_CHURN_RESCORE_DAYS", int, 1),
    _Spec("churn_horizon", "SHOPSTREAM_CHURN_HORIZON", str),
    _Spec("churn_rescore", "SHOPSTREAM_CHURN_RESCORE", str),
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


_DURATION_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 7 * 86_400_000}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_ms(text: str, env: str) -> int:
    """`6h`, `30d`, `1d12h`, `90s`, `2w` -> milliseconds (positive)."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ConfigError(f"{env} must be a duration such as 6h, 30d or 1d12h, got {text!r}")
    total = int(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))
    if total <= 0:
        raise ConfigError(f"{env} must be longer than 0, got {text!r}")
    return total


def _duration_or_days(text: str, env: str, days: int) -> int:
    return parse_duration_ms(text, env) if text else days * 86_400_000


def mask_url(url: str) -> str:
    from shopstream.masking import mask_url as mask

    return mask(url)


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
