"""Settings: the one place that reads the environment.

``Settings.from_env(mapping)`` builds a frozen dataclass from a mapping (``os.environ``
in processes, a plain dict in tests). A missing or malformed variable raises
``SettingsError`` naming the variable and what is expected; the CLI turns that into a
one-line message and exit code 2.

Two modes:

* ``dev``: embedded defaults (SQLite file, in-process broker, embedded MongoDB-wire store).
  Nothing has to be installed.
* ``production`` (the default): every connection URL must be given explicitly, because
  silently talking to a default host in production is worse than refusing to start.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

from shiftflow.kernel.errors import SettingsError

PREFIX = "SHIFTFLOW_"


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(PREFIX + name)
    if value is None or value.strip() == "":
        return None
    return value.strip()


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...], default: str | None) -> str:
    raw = _get(env, name)
    if raw is None:
        if default is None:
            raise SettingsError(
                f"{PREFIX}{name} is not set: expected a URL starting with "
                f"{' or '.join(s + '://' for s in schemes)}"
            )
        return default
    scheme = urlsplit(raw).scheme
    if scheme not in schemes:
        raise SettingsError(
            f"{PREFIX}{name}={_redact(raw)!r} is malformed: expected a URL starting with "
            f"{' or '.join(s + '://' for s in schemes)}"
        )
    return raw


def _url_list(env: Mapping[str, str], name: str, schemes: tuple[str, ...], default: str | None) -> tuple[str, ...]:
    """One URL or several, comma-separated (a cluster's nodes, tried in order); each checked
    as ``_url`` checks one. An empty item (``a,,b``) is refused: it is a typo, not a node."""
    raw = _get(env, name)
    if raw is None or "," not in raw:
        return (_url(env, name, schemes, default),)
    items = [item.strip() for item in raw.split(",")]
    if any(not item for item in items):
        raise SettingsError(f"{PREFIX}{name} has an empty entry: expected URLs separated by single commas")
    return tuple(_url({PREFIX + name: item}, name, schemes, None) for item in items)


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is malformed: expected a whole number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{PREFIX}{name}={value} is out of range: expected {lo} to {hi}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is malformed: expected a number") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{PREFIX}{name}={value} is out of range: expected {lo} to {hi}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _get(env, name)
    if raw is None:
        return default
    if raw not in choices:
        raise SettingsError(f"{PREFIX}{name}={raw!r} is malformed: expected one of {', '.join(choices)}")
    return raw


def _str(env: Mapping[str, str], name: str, default: str) -> str:
    raw = _get(env, name)
    return default if raw is None else raw


#: Query parameter names (lowercase) whose value ``_redact`` hides when they contain one
#: of these: ``password``, ``sslpassword``, ``tlsCertificateKeyFilePassword``, ``token``...
_SECRET_PARAMETER_PARTS = ("pass", "pwd", "secret", "token", "key", "credential", "signature")


def _redact(url: str) -> str:
    """Hide secrets in a URL (its password, and the value of any query parameter whose
    name says it is one) so that error messages and ``shiftflow config`` never print them."""
    parts = urlsplit(url)
    if parts.password:
        url = url.replace(":" + parts.password + "@", ":***@", 1)
        parts = urlsplit(url)
    if not parts.query:
        return url
    fields = []
    for item in parts.query.split("&"):
        name, eq, _value = item.partition("=")
        if eq and any(p in unquote_plus(name).lower() for p in _SECRET_PARAMETER_PARTS):
            item = f"{name}=***"
        fields.append(item)
    return urlunsplit(parts._replace(query="&".join(fields)))


#: Settings holding a secret: ``public_dict`` shows only whether they are set.
_SECRET_FIELDS = frozenset({"sideshift_secret", "price_api_key", "s3_secret_access_key"})


def _commission_rate(env: Mapping[str, str]) -> str:
    """A fraction from 0 to 0.02 (SideShift's maximum of 2 %), or "" for SideShift's default."""
    raw = _get(env, "SIDESHIFT_COMMISSION_RATE")
    if raw is None:
        return ""
    try:
        value = Decimal(raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or not Decimal(0) <= value <= Decimal("0.02"):
        raise SettingsError(
            f"{PREFIX}SIDESHIFT_COMMISSION_RATE={raw!r} is malformed: expected a fraction from 0 to 0.02 "
            "(0.005 is SideShift's default of 0.5 %)"
        )
    return format(value, "f")


def _usd(env: Mapping[str, str], name: str) -> str:
    """An amount of USD of at least 0 with at most six decimal places, or "" (none set)."""
    raw = _get(env, name)
    if raw is None or not raw.strip():
        return ""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.000001")):
        raise SettingsError(f"{PREFIX}{name}={raw!r} is malformed: expected an amount of USD such as 25 or 2.50 "
                            "(at least 0, at most six decimal places)")
    return format(value, "f")


def _tool_settings(env: Mapping[str, str], data_dir: str) -> dict[str, Any]:
    """The settings of the tool layer: artifact store, SMTP, browser and media limits."""
    backend = _choice(env, "ARTIFACT_BACKEND", "local", ("local", "s3"))
    bucket = _str(env, "S3_BUCKET", "")
    if backend == "s3" and not bucket:
        raise SettingsError(f"{PREFIX}S3_BUCKET is not set: the s3 artifact backend needs a bucket name")
    return {
        "artifact_backend": backend,
        "artifact_dir": _str(env, "ARTIFACT_DIR", f"{data_dir}/artifacts"),
        "artifact_max_bytes": _int(env, "ARTIFACT_MAX_BYTES", 52_428_800, 1, 5 * 1024**3),
        "artifact_orphan_grace_hours": _int(env, "ARTIFACT_ORPHAN_GRACE_HOURS", 24, 1, 24 * 365),
        "s3_endpoint_url": _url(env, "S3_ENDPOINT_URL", ("https", "http"), "") if _get(env, "S3_ENDPOINT_URL") else "",
        "s3_bucket": bucket,
        "s3_prefix": _str(env, "S3_PREFIX", "").strip("/"),
        "s3_region": _str(env, "S3_REGION", "us-east-1"),
        "s3_access_key_id": _str(env, "S3_ACCESS_KEY_ID", ""),
        "s3_secret_access_key": _str(env, "S3_SECRET_ACCESS_KEY", ""),
        "s3_timeout_seconds": _float(env, "S3_TIMEOUT_SECONDS", 30.0, 0.1, 600.0),
        "smtp_timeout_seconds": _float(env, "SMTP_TIMEOUT_SECONDS", 30.0, 0.1, 600.0),
        "chromium_path": _str(env, "CHROMIUM_PATH", "/usr/bin/chromium"),
        "browser_page_timeout_seconds": _float(env, "BROWSER_PAGE_TIMEOUT_SECONDS", 30.0, 0.5, 600.0),
        "browser_max_calls": _int(env, "BROWSER_MAX_CALLS", 100, 1, 1_000_000),
        "browser_memory_mb": _int(env, "BROWSER_MEMORY_MB", 1024, 64, 65_536),
        "browser_js_heap_mb": _int(env, "BROWSER_JS_HEAP_MB", 256, 16, 16_384),
        "browser_max_text_bytes": _int(env, "BROWSER_MAX_TEXT_BYTES", 1_048_576, 1_024, 64 * 1024 * 1024),
        "ffmpeg_path": _str(env, "FFMPEG_PATH", "/usr/bin/ffmpeg"),
        "ffprobe_path": _str(env, "FFPROBE_PATH", "/usr/bin/ffprobe"),
        "media_max_pixels": _int(env, "MEDIA_MAX_PIXELS", 40_000_000, 1, 1_000_000_000),
        "media_max_duration_seconds": _float(env, "MEDIA_MAX_DURATION_SECONDS", 600.0, 0.1, 86_400.0),
        "media_timeout_seconds": _float(env, "MEDIA_TIMEOUT_SECONDS", 300.0, 1.0, 86_400.0),
    }


_LIMIT_ITEM = re.compile(r"^([a-z][a-z0-9_]{0,62})=(\d+(?:\.\d+)?)/(s|min)(?::(\d+))?$")

#: One integration's limits from ``SHIFTFLOW_INTEGRATION_LIMITS``: (key, per second,
#: per minute, burst), None where the variable does not say.
IntegrationLimit = tuple[str, float | None, float | None, int | None]


def _integration_limits(env: Mapping[str, str]) -> tuple[IntegrationLimit, ...]:
    """``slack=1/s:3,coingecko=30/min,coingecko=2/s``: per-integration limits, a key repeated
    to give both scales; ``:N`` sets the burst."""
    raw = _get(env, "INTEGRATION_LIMITS")
    if raw is None:
        return ()
    found: dict[str, list[Any]] = {}
    for item in (part.strip() for part in raw.split(",")):
        match = _LIMIT_ITEM.match(item)
        if not match:
            raise SettingsError(
                f"{PREFIX}INTEGRATION_LIMITS item {item!r} is malformed: expected <integration>=<rate>/s or "
                "<integration>=<rate>/min, optionally :<burst> (e.g. slack=1/s:3,coingecko=30/min)"
            )
        key, rate, unit, burst = match.groups()
        entry = found.setdefault(key, [key, None, None, None])
        entry[1 if unit == "s" else 2] = float(rate)
        if burst is not None:
            if int(burst) < 1:
                raise SettingsError(f"{PREFIX}INTEGRATION_LIMITS item {item!r}: the burst must be at least 1")
            entry[3] = int(burst)
    return tuple((e[0], e[1], e[2], e[3]) for e in found.values())


def _integration_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """The settings of the integration layer: rate limits, cool-downs, OAuth2."""
    return {
        "integration_rate_per_second": _float(env, "INTEGRATION_RATE_PER_SECOND", 10.0, 0.0, 1_000_000.0),
        "integration_rate_burst": _int(env, "INTEGRATION_RATE_BURST", 20, 1, 1_000_000),
        "integration_limits": _integration_limits(env),
        "rate_limit_cooldown_seconds": _float(env, "RATE_LIMIT_COOLDOWN_SECONDS", 10.0, 0.0, 86_400.0),
        "rate_limit_max_cooldown_seconds": _float(env, "RATE_LIMIT_MAX_COOLDOWN_SECONDS", 3600.0, 1.0, 7 * 86_400.0),
        "oauth2_timeout_seconds": _float(env, "OAUTH2_TIMEOUT_SECONDS", 10.0, 0.1, 300.0),
        "oauth2_expiry_margin_seconds": _float(env, "OAUTH2_EXPIRY_MARGIN_SECONDS", 60.0, 0.0, 86_400.0),
        "oauth2_lock_seconds": _float(env, "OAUTH2_LOCK_SECONDS", 30.0, 1.0, 3_600.0),
    }


_WORKSPACE_DAYS = re.compile(r"^([a-z0-9][a-z0-9-]{0,99})=(\d{1,5})$")


def _workspace_days(env: Mapping[str, str]) -> tuple[tuple[str, int], ...]:
    """``acme=30,big-co=365``: a retention in days per workspace slug."""
    raw = _get(env, "RETENTION_WORKSPACE_DAYS")
    if raw is None:
        return ()
    found: dict[str, int] = {}
    for item in (part.strip() for part in raw.split(",") if part.strip()):
        match = _WORKSPACE_DAYS.match(item)
        if not match:
            raise SettingsError(
                f"{PREFIX}RETENTION_WORKSPACE_DAYS item {item!r} is malformed: expected <workspace slug>=<days> "
                "(e.g. acme=30,big-co=365; 0 = forever)"
            )
        found[match.group(1)] = int(match.group(2))
    return tuple(found.items())


def _retention_settings(env: Mapping[str, str]) -> dict[str, Any]:
    """How long executions (PostgreSQL) and log documents (MongoDB TTL indexes) are kept."""
    return {
        "retention_days": _int(env, "RETENTION_DAYS", 90, 0, 36_500),
        "retention_workspace_days": _workspace_days(env),
        "dedup_window_hours": _int(env, "DEDUP_WINDOW_HOURS", 168, 1, 24 * 36_500),
        "retention_batch_size": _int(env, "RETENTION_BATCH_SIZE", 500, 1, 100_000),
        "log_retention_days": _int(env, "LOG_RETENTION_DAYS", 30, 0, 36_500),
        "analytics_retention_days": _int(env, "ANALYTICS_RETENTION_DAYS", 365, 0, 36_500),
        "usage_retention_days": _int(env, "USAGE_RETENTION_DAYS", 365, 0, 36_500),
    }


def _otlp_endpoint(env: Mapping[str, str]) -> str:
    """SHIFTFLOW_OTLP_ENDPOINT: where spans go (OTLP over HTTP); empty = tracing off."""
    raw = _str(env, "OTLP_ENDPOINT", "")
    if raw and not re.match(r"^https?://[^\s/]+", raw):
        raise SettingsError(f"{PREFIX}OTLP_ENDPOINT={raw[:100]!r} is malformed: expected an http(s) URL, "
                            "e.g. http://127.0.0.1:4318/v1/traces")
    return raw


def _affiliate_id(env: Mapping[str, str]) -> str:
    raw = _str(env, "SIDESHIFT_AFFILIATE_ID", "")
    if raw and not (raw.isascii() and raw.isalnum() and len(raw) <= 64):
        raise SettingsError(f"{PREFIX}SIDESHIFT_AFFILIATE_ID={raw!r} is malformed: expected letters and digits")
    return raw


@dataclass(frozen=True)
class Settings:
    """Every setting ShiftFlow reads, with its environment variable in the docstring table.

    Build with ``Settings.from_env(os.environ)``; tests pass a plain dict.
    """

    mode: str = "production"
    #: SHIFTFLOW_AMQP_URL: RabbitMQ, e.g. amqp://guest:guest@127.0.0.1:5672/%2F; several
    #: comma-separated URLs (a cluster's nodes) are tried in order on every (re)connect.
    #: ``amqp_url`` is the first; ``amqp_urls`` all of them.
    amqp_url: str = ""
    #: the further URLs of SHIFTFLOW_AMQP_URL, after the first
    amqp_fallback_urls: tuple[str, ...] = ()
    #: SHIFTFLOW_QUEUE_TYPE: classic (priorities; the default, for development) or quorum
    #: (replicated; production). Every process of a deployment must use the same: a queue
    #: keeps the type it was created with (docs/scaling.md: migrating to quorum queues)
    queue_type: str = "classic"
    #: SHIFTFLOW_DATABASE_URL: postgresql://... or sqlite:///path (dev); may point at a
    #: transaction-pooling PgBouncer (docs/scaling.md)
    database_url: str = ""
    #: SHIFTFLOW_DATABASE_DIRECT_URL: PostgreSQL itself, bypassing a pooler, for migrations
    #: only (their advisory lock is held by a session); empty = DATABASE_URL
    database_direct_url: str = ""
    #: SHIFTFLOW_MONGO_URL: mongodb://... (logs and analytics)
    mongo_url: str = ""
    #: SHIFTFLOW_MONGO_DB: database name inside MongoDB
    mongo_db: str = "shiftflow"
    #: SHIFTFLOW_REDIS_URL: redis://... (locks, rate limits, live updates); empty in dev mode
    redis_url: str = ""
    #: SHIFTFLOW_DATA_DIR: where dev mode keeps its SQLite file and embedded Mongo store
    data_dir: str = ".shiftflow-dev"
    #: SHIFTFLOW_SECRET_KEYS: comma-separated keys for encrypting connection secrets (newest first)
    secret_keys: tuple[str, ...] = field(default_factory=tuple)
    #: SHIFTFLOW_INGRESS_HOST / SHIFTFLOW_INGRESS_PORT: where the webhook ingress listens
    ingress_host: str = "127.0.0.1"
    ingress_port: int = 8080
    #: SHIFTFLOW_PUBLIC_URL: the base URL printed for webhook endpoints
    public_url: str = ""
    #: SHIFTFLOW_METRICS_HOST / SHIFTFLOW_METRICS_PORT: a worker pool's Prometheus exporter (port 0 = off)
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9191
    #: SHIFTFLOW_INGRESS_METRICS_PORT: the ingress's Prometheus /metrics on METRICS_HOST (0 = off);
    #: never on the public ingress port
    ingress_metrics_port: int = 9193
    #: SHIFTFLOW_METRICS_DIR: prometheus_client multiprocess directory for worker pools
    metrics_dir: str = ""
    #: SHIFTFLOW_AUTH_FAILURES_PER_ADDRESS / _PER_KEY: failed API authentications from one
    #: client address / naming one key prefix within the window before 429 (0 = no limit)
    auth_failures_per_address: int = 20
    auth_failures_per_key: int = 10
    #: SHIFTFLOW_AUTH_FAILURE_WINDOW_SECONDS: the window, from the first failure
    auth_failure_window_seconds: int = 60
    #: SHIFTFLOW_WEBHOOK_TOLERANCE_SECONDS: accepted clock skew of signed timestamps
    webhook_tolerance_seconds: int = 300
    #: SHIFTFLOW_WEBHOOK_MAX_BODY_BYTES: largest accepted webhook body
    webhook_max_body_bytes: int = 262_144
    #: SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS: how long the ingress waits for a broker confirm
    publish_timeout_seconds: float = 5.0
    #: SHIFTFLOW_PREFETCH: RabbitMQ prefetch per consumer (256 beat Dramatiq's default: docs/benchmarks.md#prefetch)
    prefetch: int = 256
    #: SHIFTFLOW_WORKER_MAX_MESSAGES: a worker process that has processed this many messages
    #: stops as on SIGTERM (running messages finish, the others return to RabbitMQ) and its
    #: supervisor starts a fresh one; 0 = never
    worker_max_messages: int = 0
    #: SHIFTFLOW_WORKER_MAX_MEMORY_MB: the same, once the process's resident memory passes
    #: this many MiB (checked after each message); 0 = no ceiling
    worker_max_memory_mb: int = 0
    #: SHIFTFLOW_TRIGGER_QUEUE_MAX_LENGTH: ready messages the ``triggers`` queue holds before
    #: RabbitMQ refuses publishes (``x-max-length`` + ``x-overflow: reject-publish``); 0 declares
    #: the queue without a bound, as before (bound it with a policy instead)
    trigger_queue_max_length: int = 100_000
    #: SHIFTFLOW_QUOTA_WEBHOOKS_PER_SECOND / _BURST: each workspace's token bucket of accepted
    #: webhooks (all its endpoints together); rate 0 = no limit. Per workspace: ``shiftflow quotas``
    quota_webhooks_per_second: float = 100.0
    quota_webhooks_burst: int = 200
    #: SHIFTFLOW_QUOTA_RUNS_PER_SECOND / _BURST: each workspace's token bucket of executions
    #: started through the management API (run, re-run); rate 0 = no limit
    quota_runs_per_second: float = 10.0
    quota_runs_burst: int = 50
    #: SHIFTFLOW_QUOTA_MAX_QUEUED_EXECUTIONS: executions of one workspace that may wait PENDING
    #: for a concurrency slot; 0 = no cap
    quota_max_queued_executions: int = 1000
    #: SHIFTFLOW_DELIVERY_LIMIT: deliveries of one step message before it is quarantined
    delivery_limit: int = 5
    #: SHIFTFLOW_CLAIM_LEASE_SECONDS: how long a step's claim holds without its process
    #: renewing it (renewed every third of it); a copy of the step's message takes the step
    #: over, and the timer loop re-publishes it, only once the lease ran out or the holder's
    #: process is provably gone
    claim_lease_seconds: float = 30.0
    #: SHIFTFLOW_CHAIN_MAX_STEPS / _SECONDS: a worker thread that finished a step whose only
    #: next step runs on the same actor runs it at once, without a broker round trip, up to
    #: this many steps (0 = never) and this long per message, then publishes as usual
    chain_max_steps: int = 20
    chain_max_seconds: float = 10.0
    #: SHIFTFLOW_STORE_RETRY_SECONDS: how long a worker that holds a step keeps retrying a
    #: write PostgreSQL refused because it was unreachable (an outage is waited out, not failed)
    store_retry_seconds: float = 600.0
    #: SHIFTFLOW_HTTP_TIMEOUT_SECONDS: default deadline of an outbound HTTP call (all of it, not per read)
    http_timeout_seconds: float = 10.0
    #: SHIFTFLOW_HTTP_ALLOW_PRIVATE: let HTTP tools reach loopback/private addresses (dev, tests)
    http_allow_private: bool = False
    #: SHIFTFLOW_STEP_MAX_INPUT_BYTES: the largest a step's rendered inputs may be (as JSON)
    step_max_input_bytes: int = 1_048_576
    #: SHIFTFLOW_STEP_MAX_OUTPUT_BYTES: the largest step output (and execution result) stored
    step_max_output_bytes: int = 2_097_152
    #: SHIFTFLOW_LOG_BATCH_SIZE / SHIFTFLOW_LOG_FLUSH_MS: batching of MongoDB log writes
    log_batch_size: int = 200
    log_flush_ms: int = 100
    #: SHIFTFLOW_TIMERS: run the timer loop (waits, retry backoffs, timeouts) in each worker pool
    timers: bool = True
    #: SHIFTFLOW_LOG_LEVEL: Python logging level
    log_level: str = "INFO"
    #: SHIFTFLOW_LOG_REPEAT_SECONDS: an identical warning or error is logged once per this many
    #: seconds, with a count of those left out (0 = log every one)
    log_repeat_seconds: float = 10.0
    #: SHIFTFLOW_SCHEDULER_METRICS_PORT: the scheduler's Prometheus /metrics (0 = off; host METRICS_HOST)
    scheduler_metrics_port: int = 9192
    #: SHIFTFLOW_SCHEDULER_TICK_MS: longest sleep of the scheduler loop between two looks at due rows
    scheduler_tick_ms: int = 200
    #: SHIFTFLOW_SCHEDULER_BATCH_SIZE: schedules one scheduler replica claims per transaction
    scheduler_batch_size: int = 1000
    #: SHIFTFLOW_SCHEDULER_MISFIRE_GRACE_SECONDS: how late a slot may fire and still be on time
    scheduler_misfire_grace_seconds: int = 60
    #: SHIFTFLOW_SIDESHIFT_BASE_URL: the SideShift v2 API root (a fake's URL in tests and dev)
    sideshift_base_url: str = "https://sideshift.ai/api/v2"
    #: SHIFTFLOW_SIDESHIFT_SECRET: the account secret sent as x-sideshift-secret (hidden in output)
    sideshift_secret: str = ""
    #: SHIFTFLOW_SIDESHIFT_AFFILIATE_ID: the SideShift account id (required to place swaps)
    sideshift_affiliate_id: str = ""
    #: SHIFTFLOW_SIDESHIFT_TIMEOUT_SECONDS: read timeout of SideShift calls (a create that
    #: times out is an unknown outcome, marked for reconciliation)
    sideshift_timeout_seconds: float = 20.0
    #: SHIFTFLOW_SIDESHIFT_SHIFTS_PER_MINUTE / _QUOTES_PER_MINUTE: client-side limits shared by
    #: every worker through Redis (SideShift's published per-IP limits: 5 and 20)
    sideshift_shifts_per_minute: int = 5
    sideshift_quotes_per_minute: int = 20
    #: SHIFTFLOW_SIDESHIFT_POLL_SECONDS / _POLL_MAX_SECONDS: first and longest interval between
    #: two status polls of an open shift (doubling while nothing changes)
    sideshift_poll_seconds: float = 10.0
    sideshift_poll_max_seconds: float = 300.0
    #: SHIFTFLOW_SIDESHIFT_COMMISSION_RATE: commissionRate as a fraction, 0 to 0.02 ("" = SideShift's 0.5 %)
    sideshift_commission_rate: str = ""
    #: SHIFTFLOW_SIDESHIFT_RATE_LIMIT_BACKOFF_SECONDS: first wait after a 429 without Retry-After
    #: (doubling per retry, up to the 60 s window)
    sideshift_rate_limit_backoff_seconds: float = 10.0
    #: SHIFTFLOW_PRICE_API_URL: a CoinGecko-compatible API root (``/api/v3/simple/price``)
    price_api_url: str = "https://api.coingecko.com"
    #: SHIFTFLOW_PRICE_API_KEY: optional CoinGecko key (sent as x-cg-demo-api-key; hidden in output)
    price_api_key: str = ""
    #: SHIFTFLOW_PRICE_CACHE_SECONDS: how long a cached price is fresh enough to skip the API
    price_cache_seconds: int = 60
    #: SHIFTFLOW_ARTIFACT_BACKEND: where tools keep the files they make: ``local`` or ``s3``
    artifact_backend: str = "local"
    #: SHIFTFLOW_ARTIFACT_DIR: the local backend's directory (default ``<DATA_DIR>/artifacts``)
    artifact_dir: str = ".shiftflow-dev/artifacts"
    #: SHIFTFLOW_ARTIFACT_MAX_BYTES: the largest artifact either backend accepts
    artifact_max_bytes: int = 52_428_800
    #: SHIFTFLOW_ARTIFACT_ORPHAN_GRACE_HOURS: a stored file without an artifact row (its step never
    #: completed) is removed by retention once it is this old (longer than any step runs)
    artifact_orphan_grace_hours: int = 24
    #: SHIFTFLOW_S3_ENDPOINT_URL: an S3-compatible endpoint ("" = AWS's own for the region)
    s3_endpoint_url: str = ""
    #: SHIFTFLOW_S3_BUCKET / SHIFTFLOW_S3_PREFIX / SHIFTFLOW_S3_REGION: where the s3 backend writes
    s3_bucket: str = ""
    s3_prefix: str = ""
    s3_region: str = "us-east-1"
    #: SHIFTFLOW_S3_ACCESS_KEY_ID / SHIFTFLOW_S3_SECRET_ACCESS_KEY: the bucket's credentials
    #: ("" = boto3's own chain: AWS_* variables, instance roles)
    s3_access_key_id: str = ""
    s3_secret_access_key: str = ""
    #: SHIFTFLOW_S3_TIMEOUT_SECONDS: connect and read timeout of each S3 request
    s3_timeout_seconds: float = 30.0
    #: SHIFTFLOW_SMTP_TIMEOUT_SECONDS: socket timeout of each SMTP command of email.send
    smtp_timeout_seconds: float = 30.0
    #: SHIFTFLOW_CHROMIUM_PATH: the Chromium binary the browser tools start
    chromium_path: str = "/usr/bin/chromium"
    #: SHIFTFLOW_BROWSER_PAGE_TIMEOUT_SECONDS: the longest one browser call may take (load included)
    browser_page_timeout_seconds: float = 30.0
    #: SHIFTFLOW_BROWSER_MAX_CALLS: calls one browser process serves before it is recycled
    browser_max_calls: int = 100
    #: SHIFTFLOW_BROWSER_MEMORY_MB: the browser's resident memory (all its processes) above
    #: which it is recycled after the current call
    browser_memory_mb: int = 1024
    #: SHIFTFLOW_BROWSER_JS_HEAP_MB: V8's old-space ceiling per page (--max-old-space-size)
    browser_js_heap_mb: int = 256
    #: SHIFTFLOW_BROWSER_MAX_TEXT_BYTES: the largest text/html browser.fetch returns (refused above)
    browser_max_text_bytes: int = 1_048_576
    #: SHIFTFLOW_FFMPEG_PATH / SHIFTFLOW_FFPROBE_PATH: the binaries media.probe and media.transcode run
    ffmpeg_path: str = "/usr/bin/ffmpeg"
    ffprobe_path: str = "/usr/bin/ffprobe"
    #: SHIFTFLOW_MEDIA_MAX_PIXELS: the most pixels (width x height) media.image reads or writes
    media_max_pixels: int = 40_000_000
    #: SHIFTFLOW_MEDIA_MAX_DURATION_SECONDS: the longest audio/video media.transcode accepts
    media_max_duration_seconds: float = 600.0
    #: SHIFTFLOW_MEDIA_TIMEOUT_SECONDS: the longest one ffmpeg/ffprobe run may take
    media_timeout_seconds: float = 300.0
    #: SHIFTFLOW_LLM_TIMEOUT_SECONDS: deadline of one LLM call (connect, wait and read) unless the step sets one
    llm_timeout_seconds: float = 120.0
    #: SHIFTFLOW_LLM_PRICES_FILE: a YAML price table laid over the shipped one (docs/llm.md); "" = shipped only
    llm_prices_file: str = ""
    #: SHIFTFLOW_TASK_MODEL: the model an agent task's planner asks unless the task names one
    task_model: str = "gpt-4o-mini"
    #: SHIFTFLOW_TASK_MAX_REPLANS: how many times a refused plan is sent back to the model
    #: with its errors before the task fails naming them
    task_max_replans: int = 2
    #: SHIFTFLOW_LLM_DAILY_BUDGET_USD: what one workspace's LLM calls may cost per UTC day unless
    #: the workspace sets its own (``workspace.llm_daily_budget_usd``); "" = no limit
    llm_daily_budget_usd: str = ""
    #: SHIFTFLOW_LLM_VALIDATION_RETRIES: calls made again, with the validation error fed back,
    #: when a prompt run's output fails its validations (then the run fails, naming the reasons)
    llm_validation_retries: int = 2
    #: SHIFTFLOW_INTEGRATION_RATE_PER_SECOND / SHIFTFLOW_INTEGRATION_RATE_BURST: the limit per
    #: connection of integrations whose catalogue entry declares none (http, oauth2, plugins); 0 = none
    integration_rate_per_second: float = 10.0
    integration_rate_burst: int = 20
    #: SHIFTFLOW_INTEGRATION_LIMITS: the catalogue's limits replaced per integration
    #: (``slack=1/s:3,coingecko=30/min``); a connection's own limits still win
    integration_limits: tuple[IntegrationLimit, ...] = ()
    #: SHIFTFLOW_RATE_LIMIT_COOLDOWN_SECONDS: how long a connection waits after an outside 429
    #: that gave no Retry-After
    rate_limit_cooldown_seconds: float = 10.0
    #: SHIFTFLOW_RATE_LIMIT_MAX_COOLDOWN_SECONDS: the longest wait a Retry-After can impose
    rate_limit_max_cooldown_seconds: float = 3600.0
    #: SHIFTFLOW_OAUTH2_TIMEOUT_SECONDS: the longest one token request may take
    oauth2_timeout_seconds: float = 10.0
    #: SHIFTFLOW_OAUTH2_EXPIRY_MARGIN_SECONDS: how long before expiry a token is refreshed
    #: (at most half its lifetime)
    oauth2_expiry_margin_seconds: float = 60.0
    #: SHIFTFLOW_OAUTH2_LOCK_SECONDS: the refresh lock's lifetime if its holder dies (at least
    #: the token timeout + 5 s); also the longest a worker waits for another's refresh
    oauth2_lock_seconds: float = 30.0
    #: SHIFTFLOW_RETENTION_DAYS: finished executions (with their steps and tool executions)
    #: older than this are deleted by ``shiftflow retention run``; 0 = kept forever
    retention_days: int = 90
    #: SHIFTFLOW_RETENTION_WORKSPACE_DAYS: per-workspace retention, ``acme=30,big-co=365``
    #: (workspace slug = days; 0 = forever); other workspaces get RETENTION_DAYS
    retention_workspace_days: tuple[tuple[str, int], ...] = ()
    #: SHIFTFLOW_DEDUP_WINDOW_HOURS: how long an execution is kept at least, whatever the
    #: retention, so that a repeated delivery of its trigger (same dedup key) is recognised; a
    #: delivery repeated after the window starts a new execution
    dedup_window_hours: int = 168
    #: SHIFTFLOW_RETENTION_BATCH_SIZE: executions deleted per transaction (small: short locks)
    retention_batch_size: int = 500
    #: SHIFTFLOW_LOG_RETENTION_DAYS / _ANALYTICS_RETENTION_DAYS / _USAGE_RETENTION_DAYS: the
    #: MongoDB TTL of execution_logs, analytics_events and integration_usage; 0 = kept forever
    log_retention_days: int = 30
    analytics_retention_days: int = 365
    usage_retention_days: int = 365
    #: SHIFTFLOW_OTLP_ENDPOINT: the OTLP/HTTP traces endpoint (e.g. http://collector:4318/v1/traces);
    #: empty = no spans are made (needs the ``tracing`` extra; docs/operations.md#tracing)
    otlp_endpoint: str = ""

    @property
    def dev(self) -> bool:
        """True in dev mode (embedded defaults, in-process broker)."""
        return self.mode == "dev"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from an environment mapping.

        Parameters:
            env: the mapping to read; ``os.environ`` when omitted.

        Raises:
            SettingsError: a variable is missing or malformed; the message names it.
        """
        env = os.environ if env is None else env
        mode = _choice(env, "MODE", "production", ("dev", "production"))
        dev = mode == "dev"
        data_dir = _str(env, "DATA_DIR", ".shiftflow-dev")
        keys_raw = _get(env, "SECRET_KEYS")
        secret_keys = tuple(k.strip() for k in keys_raw.split(",") if k.strip()) if keys_raw else ()
        for key in secret_keys:
            if len(key) < 32:
                raise SettingsError(
                    f"{PREFIX}SECRET_KEYS has a key of {len(key)} characters: expected keys of at "
                    "least 32 characters, comma-separated, newest first"
                )
        allow_private = _choice(env, "HTTP_ALLOW_PRIVATE", "true" if dev else "false", ("true", "false"))
        return cls(
            mode=mode,
            amqp_url=(amqp := _url_list(env, "AMQP_URL", ("amqp", "amqps"), "" if dev else None))[0],
            amqp_fallback_urls=amqp[1:],
            queue_type=_choice(env, "QUEUE_TYPE", "classic", ("classic", "quorum")),
            database_direct_url=(
                _url(env, "DATABASE_DIRECT_URL", ("postgresql", "postgres"), "")
                if _get(env, "DATABASE_DIRECT_URL") else ""
            ),
            database_url=_url(
                env,
                "DATABASE_URL",
                ("postgresql", "postgres", "sqlite"),
                f"sqlite:///{data_dir}/shiftflow.db" if dev else None,
            ),
            mongo_url=_url(env, "MONGO_URL", ("mongodb", "mongodb+srv"), "" if dev else None),
            mongo_db=_str(env, "MONGO_DB", "shiftflow"),
            redis_url=_url(env, "REDIS_URL", ("redis", "rediss", "unix"), "") if _get(env, "REDIS_URL") else "",
            data_dir=data_dir,
            secret_keys=secret_keys,
            ingress_host=_str(env, "INGRESS_HOST", "127.0.0.1"),
            ingress_port=_int(env, "INGRESS_PORT", 8080, 0, 65535),
            public_url=_str(env, "PUBLIC_URL", ""),
            metrics_host=_str(env, "METRICS_HOST", "127.0.0.1"),
            metrics_port=_int(env, "METRICS_PORT", 9191, 0, 65535),
            ingress_metrics_port=_int(env, "INGRESS_METRICS_PORT", 9193, 0, 65535),
            metrics_dir=_str(env, "METRICS_DIR", ""),
            auth_failures_per_address=_int(env, "AUTH_FAILURES_PER_ADDRESS", 20, 0, 1_000_000),
            auth_failures_per_key=_int(env, "AUTH_FAILURES_PER_KEY", 10, 0, 1_000_000),
            auth_failure_window_seconds=_int(env, "AUTH_FAILURE_WINDOW_SECONDS", 60, 1, 86_400),
            webhook_tolerance_seconds=_int(env, "WEBHOOK_TOLERANCE_SECONDS", 300, 1, 86_400),
            webhook_max_body_bytes=_int(env, "WEBHOOK_MAX_BODY_BYTES", 262_144, 1_024, 16 * 1024 * 1024),
            publish_timeout_seconds=_float(env, "PUBLISH_TIMEOUT_SECONDS", 5.0, 0.1, 120.0),
            prefetch=_int(env, "PREFETCH", 256, 1, 2_000),
            worker_max_messages=_int(env, "WORKER_MAX_MESSAGES", 0, 0, 1_000_000_000),
            worker_max_memory_mb=_int(env, "WORKER_MAX_MEMORY_MB", 0, 0, 1_000_000),
            trigger_queue_max_length=_int(env, "TRIGGER_QUEUE_MAX_LENGTH", 100_000, 0, 100_000_000),
            quota_webhooks_per_second=_float(env, "QUOTA_WEBHOOKS_PER_SECOND", 100.0, 0.0, 1_000_000.0),
            quota_webhooks_burst=_int(env, "QUOTA_WEBHOOKS_BURST", 200, 1, 10_000_000),
            quota_runs_per_second=_float(env, "QUOTA_RUNS_PER_SECOND", 10.0, 0.0, 1_000_000.0),
            quota_runs_burst=_int(env, "QUOTA_RUNS_BURST", 50, 1, 10_000_000),
            quota_max_queued_executions=_int(env, "QUOTA_MAX_QUEUED_EXECUTIONS", 1000, 0, 100_000_000),
            delivery_limit=_int(env, "DELIVERY_LIMIT", 5, 1, 1_000),
            claim_lease_seconds=_float(env, "CLAIM_LEASE_SECONDS", 30.0, 1.0, 3_600.0),
            chain_max_steps=_int(env, "CHAIN_MAX_STEPS", 20, 0, 1_000),
            chain_max_seconds=_float(env, "CHAIN_MAX_SECONDS", 10.0, 0.0, 600.0),
            store_retry_seconds=_float(env, "STORE_RETRY_SECONDS", 600.0, 0.0, 86_400.0),
            http_timeout_seconds=_float(env, "HTTP_TIMEOUT_SECONDS", 10.0, 0.1, 600.0),
            http_allow_private=allow_private == "true",
            step_max_input_bytes=_int(env, "STEP_MAX_INPUT_BYTES", 1_048_576, 1_024, 64 * 1_048_576),
            step_max_output_bytes=_int(env, "STEP_MAX_OUTPUT_BYTES", 2_097_152, 1_024, 64 * 1_048_576),
            log_batch_size=_int(env, "LOG_BATCH_SIZE", 200, 1, 10_000),
            log_flush_ms=_int(env, "LOG_FLUSH_MS", 100, 1, 60_000),
            log_level=_choice(env, "LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")),
            log_repeat_seconds=_float(env, "LOG_REPEAT_SECONDS", 10.0, 0.0, 3_600.0),
            scheduler_metrics_port=_int(env, "SCHEDULER_METRICS_PORT", 9192, 0, 65535),
            scheduler_tick_ms=_int(env, "SCHEDULER_TICK_MS", 200, 10, 60_000),
            scheduler_batch_size=_int(env, "SCHEDULER_BATCH_SIZE", 1000, 1, 100_000),
            scheduler_misfire_grace_seconds=_int(env, "SCHEDULER_MISFIRE_GRACE_SECONDS", 60, 1, 86_400 * 7),
            timers=_choice(env, "TIMERS", "on", ("on", "off")) == "on",
            sideshift_base_url=_url(env, "SIDESHIFT_BASE_URL", ("https", "http"), "https://sideshift.ai/api/v2"),
            sideshift_secret=_str(env, "SIDESHIFT_SECRET", ""),
            sideshift_affiliate_id=_affiliate_id(env),
            sideshift_timeout_seconds=_float(env, "SIDESHIFT_TIMEOUT_SECONDS", 20.0, 0.1, 300.0),
            sideshift_shifts_per_minute=_int(env, "SIDESHIFT_SHIFTS_PER_MINUTE", 5, 1, 1_000_000),
            sideshift_quotes_per_minute=_int(env, "SIDESHIFT_QUOTES_PER_MINUTE", 20, 1, 1_000_000),
            sideshift_poll_seconds=_float(env, "SIDESHIFT_POLL_SECONDS", 10.0, 0.05, 3_600.0),
            sideshift_poll_max_seconds=_float(env, "SIDESHIFT_POLL_MAX_SECONDS", 300.0, 0.05, 3_600.0),
            sideshift_commission_rate=_commission_rate(env),
            sideshift_rate_limit_backoff_seconds=_float(env, "SIDESHIFT_RATE_LIMIT_BACKOFF_SECONDS", 10.0, 0.05, 60.0),
            price_api_url=_url(env, "PRICE_API_URL", ("https", "http"), "https://api.coingecko.com"),
            price_api_key=_str(env, "PRICE_API_KEY", ""),
            price_cache_seconds=_int(env, "PRICE_CACHE_SECONDS", 60, 0, 86_400),
            **_tool_settings(env, data_dir),
            llm_timeout_seconds=_float(env, "LLM_TIMEOUT_SECONDS", 120.0, 0.1, 3_600.0),
            llm_prices_file=_str(env, "LLM_PRICES_FILE", ""),
            task_model=_str(env, "TASK_MODEL", "gpt-4o-mini"),
            task_max_replans=_int(env, "TASK_MAX_REPLANS", 2, 0, 10),
            llm_daily_budget_usd=_usd(env, "LLM_DAILY_BUDGET_USD"),
            llm_validation_retries=_int(env, "LLM_VALIDATION_RETRIES", 2, 0, 10),
            **_integration_settings(env),
            **_retention_settings(env),
            otlp_endpoint=_otlp_endpoint(env),
        )

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets hidden, for ``shiftflow config`` and start-up logs."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "secret_keys":
                value = f"<{len(value)} keys>"
            elif f.name in _SECRET_FIELDS:
                value = "***" if value else ""
            elif isinstance(value, str) and "://" in value:
                value = _redact(value)
            elif isinstance(value, tuple) and any(isinstance(v, str) and "://" in v for v in value):
                value = tuple(_redact(v) for v in value)
            out[f.name] = value
        return out

    @property
    def amqp_urls(self) -> tuple[str, ...]:
        """Every RabbitMQ URL of SHIFTFLOW_AMQP_URL, in the order connections try them."""
        return (self.amqp_url, *self.amqp_fallback_urls)

    @property
    def migration_database_url(self) -> str:
        """Where migrations connect: DATABASE_DIRECT_URL, else DATABASE_URL."""
        return self.database_direct_url or self.database_url


#: Stand-ins for missing required URLs while ``env_problems`` looks for further problems.
_PLACEHOLDERS = {
    "SHIFTFLOW_AMQP_URL": "amqp://placeholder/",
    "SHIFTFLOW_DATABASE_URL": "postgresql://placeholder/",
    "SHIFTFLOW_MONGO_URL": "mongodb://placeholder/",
}


def env_problems(env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem ``Settings.from_env`` would stop at, not only the first (for
    ``shiftflow config``): a missing URL is stood in for, a malformed value dropped
    (back to its default), and the settings read again.

    Returns:
        The messages, each naming its variable; empty when the settings are valid.
    """
    trial = dict(os.environ if env is None else env)
    found: list[str] = []
    for _ in range(len(fields(Settings)) + 1):
        try:
            Settings.from_env(trial)
            return found
        except SettingsError as exc:
            found.append(str(exc))
            named = re.search(rf"{PREFIX}[A-Z0-9_]+", str(exc))
            name = named.group(0) if named else None
            if name is None or (name not in trial and name not in _PLACEHOLDERS):
                return found
            if trial.get(name) == _PLACEHOLDERS.get(name, object()):
                return found  # the stand-in itself was refused: nothing more to learn
            if name in _PLACEHOLDERS:
                trial[name] = _PLACEHOLDERS[name]
            else:
                del trial[name]
    return found


_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from ``os.environ`` on first use."""
    global _current
    if _current is None:
        _current = Settings.from_env()
    return _current


def configure(settings: Settings) -> Settings:
    """Install ``settings`` as the process-wide settings (CLI start-up, dev mode, tests)."""
    global _current
    _current = settings
    return settings
