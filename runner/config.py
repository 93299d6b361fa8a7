"""Run configuration: one frozen keyword-only dataclass, loaded from TOML and overridden by flags.

Precedence: command-line flags > config file > ``DEFAULT_*`` constants. API keys are never stored
here: the config names the environment variable that holds the key (``api_key_env``).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, get_args

from ._records import Record
from .errors import ConfigError
from .models import Price

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "RunConfig",
    "load_config",
]

DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_CACHE_TTL_S = 300.0
DEFAULT_MAX_ACTIVE_GROUPS = 8  # with cache_adapt: the ceiling of the learned limit
DEFAULT_KEY_RPM = 15.0
DEFAULT_READ_AHEAD = 16384
DEFAULT_DRAIN_S = 30.0
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: The longest lease of a shared limit (runner/redis_limits.py): a process waits for the part
#: of its lease past the 1 s burst before it sends, so ``--lease-s 20`` held a 3-job run 40 s.
MAX_LEASE_S = 2.0
#: The Redis password, kept out of ``redis_url`` (a flag shows in ``ps`` and /proc/PID/cmdline,
#: a config file is read by whoever reads the repository): ``redis://[user@]host:port/db`` plus
#: this variable, as a Kubernetes Secret sets it (README, "Scaling out").
REDIS_PASSWORD_ENV = "RUNNER_REDIS_PASSWORD"
DEFAULT_MAX_RESPONSE_BYTES = 16 << 20  # a response body past this fails its attempt
DEFAULT_POLL_INTERVAL_S = 10.0
DEFAULT_BATCH_MAX_ATTEMPTS = 3

#: Providers with a batch API (``--via batch``, ``runner status``).
BATCH_PROVIDERS = ("openai", "anthropic", "mock")
DEFAULT_EXPLICIT_TTL_S = 300.0
#: Where the key is read from when the config names no ``api_key_env`` (as the SDKs do).
DEFAULT_KEY_ENV = {
    "openai": "OPENAI_API_KEY",
    "anthropic": "ANTHROPIC_API_KEY",
    "gemini": "GEMINI_API_KEY",
}
Provider = Literal["mock", "openai", "anthropic", "gemini"]
CacheStrategy = Literal["warm", "none"]
Order = Literal["completion", "input"]
Progress = Literal["auto", "bar", "log", "off"]
CacheTTL = Literal["5m", "1h"]
PROVIDERS: tuple[str, ...] = get_args(Provider)


def needs_base_url(provider: str) -> bool:
    """Every provider but the built-in mock needs a URL to talk to."""
    return provider != "mock"


@dataclass(
    frozen=True, slots=True, kw_only=True, eq=False, repr=False
)  # eq, hash, repr: Record (start-up cost)
class RunConfig(Record):
    """Everything a run needs to know, validated on construction."""

    provider: Provider = "mock"
    base_url: str | None = None  # e.g. https://api.openai.com/v1 ; None for the built-in mock
    model: str = "mock-1"
    api_key_env: str | None = None  # name of the environment variable holding the key
    headers: Mapping[str, str] = field(default_factory=dict)  # extra request headers
    params: Mapping[str, Any] = field(default_factory=dict)  # default body params (max_tokens...)
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT_S
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    stream: bool = False
    # caching
    cache: CacheStrategy = "warm"
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S
    max_active_groups: int = DEFAULT_MAX_ACTIVE_GROUPS
    group_concurrency: int | None = None  # ceiling on one group's requests in flight
    cache_adapt: bool = True  # learn both limits from cached_tokens (--no-cache-adapt)
    key_rpm: float = DEFAULT_KEY_RPM  # spread a group over suffixed prompt_cache_keys above this
    prompt_cache_retention: str | None = None
    min_cacheable_tokens: int | None = None  # None: the provider's (providers/capabilities.py)
    context_window: int | None = None
    anthropic_version: str = "2023-06-01"
    anthropic_cache_ttl: CacheTTL = "5m"
    anthropic_prewarm: bool = False
    explicit_ttl_s: float = DEFAULT_EXPLICIT_TTL_S  # shortest TTL of an explicit cache (Gemini)
    # io
    output: Path | None = None
    # output names a directory (it ended in "/", which Path drops): the results go in it under
    # the jobs file's name, as for an existing directory (runner/outputs.py)
    output_is_dir: bool = False
    latency: Path | None = None
    summary: Path | None = None
    contexts: Path | None = None
    order: Order = "completion"
    resume: bool = True
    retry_failed: bool = False
    read_ahead: int = DEFAULT_READ_AHEAD
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # guards
    max_cost: float | None = None
    breaker_min_requests: int = 50
    breaker_error_rate: float = 0.5
    drain_s: float = DEFAULT_DRAIN_S
    # presentation
    progress: Progress = "auto"
    dry_run: bool = False
    prices: Mapping[str, Price] = field(default_factory=dict)
    mock: Mapping[str, Any] = field(default_factory=dict)  # options for the built-in mock
    # operations (runner/observe.py): logs, metrics, OpenTelemetry, transient-stop deadline
    log_format: str = "text"  # text | json
    log_interval_s: float = 5.0  # seconds between progress events and progress log lines
    quiet: bool = False
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    metrics_textfile: Path | None = None
    pushgateway: str | None = None
    metrics_job: str = "runner"
    metrics_labels: Mapping[str, str] = field(default_factory=dict)
    otel_endpoint: str | None = None
    max_pause_s: float | None = None  # exit 75 once a rate-limit pause lasts longer
    # scaling out (runner/shards.py, runner/redis_limits.py, runner/workers.py)
    shard: str | None = None  # "K/N" (0-based K), or "auto" for the orchestrator's environment
    shard_count: int | None = None  # N for JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs)
    workers: int = 1  # shard processes of this run on this host
    # CPU priority of `runner run`'s processes (runner/cpu.py): None = 5 beside a server on
    # this machine (a loopback base URL), else as started; 0 = as started; 1-19 = that nice
    nice: int | None = None
    redis_url: str | None = None  # share the rate limits of the key through this Redis
    limit_scope: str | None = None  # optional name to separate budgets on one key
    redis_policy: str = "fail_closed"  # fail_closed (pause and retry) | fail_open (local share)
    lease_s: float = 0.25  # seconds of the shared rate a process takes from Redis at a time
    limit_file: Path | None = None  # the one-host shared limit state of --workers (no Redis)
    # provider batch APIs (runner/batchapi/, docs/BATCH.md)
    via: str = "direct"  # direct | batch
    poll_interval: float = DEFAULT_POLL_INTERVAL_S  # first poll interval; grows while idle
    cancel_on_stop: bool = False  # SIGINT/SIGTERM cancels submitted batches instead of detaching
    batch_max_requests: int | None = None  # per batch; None: the provider's limit
    batch_max_bytes: int | None = None  # per batch input; None: the provider's limit
    batch_max_attempts: int = DEFAULT_BATCH_MAX_ATTEMPTS  # submissions per job (expired, ...)
    resubmit_lost_batches: bool = False  # a journaled batch answering 404: send its jobs again

    def __post_init__(self) -> None:
        _check_types(self)
        for name, choices in _CHOICES.items():
            _check_choice(name, getattr(self, name), choices)
        if needs_base_url(self.provider) and not self.base_url:
            raise ConfigError(f"provider {self.provider!r} needs base_url")
        _check_misused_paths(self)
        if not self.model.strip():
            raise ConfigError(f"model must not be empty, got {self.model!r}{_EMPTY_HINT}")
        if self.output_is_dir and self.output is None:
            raise ConfigError("output_is_dir needs output (the directory)")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in _POSITIVE:
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be > 0, got {v}")
        for name in _NON_NEGATIVE:
            v = getattr(self, name)
            if v is not None and not v >= 0:
                raise ConfigError(f"{name} must be >= 0, got {v}")
        if not 0 < self.breaker_error_rate <= 1:
            raise ConfigError(
                f"breaker_error_rate must be in (0, 1], got {self.breaker_error_rate}"
            )
        if self.max_active_groups < 1 or self.read_ahead < 1:
            raise ConfigError("max_active_groups and read_ahead must be >= 1")
        if self.group_concurrency is not None and self.group_concurrency < 1:
            raise ConfigError(f"group_concurrency must be >= 1, got {self.group_concurrency}")
        _check_operations(self)
        _check_reply_budget(self.params)
        _check_export_urls(self)
        self._check_scaling()
        self._check_batch()

    def _check_scaling(self) -> None:
        if self.shard is not None and self.shard != "auto":
            from .shards import parse_shard

            parse_shard(self.shard)
        if self.shard_count is not None and self.shard_count < 1:
            raise ConfigError(f"shard_count must be >= 1, got {self.shard_count}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers}")
        if self.nice is not None and not 0 <= self.nice <= 19:
            raise ConfigError(f"nice must be 0 (as started) to 19, got {self.nice}")
        exported = [
            flag
            for flag, value in (
                ("--metrics-textfile", self.metrics_textfile),
                ("--pushgateway", self.pushgateway),
                ("--metrics-port", self.metrics_port),
            )
            if value is not None
        ]
        if self.workers > 1 and exported:
            # Each worker would export its own shard's counts as the whole run's, to one file,
            # port or push group, the last one winning.
            raise ConfigError(
                f"{', '.join(exported)}: not with --workers (each worker would export only its "
                "shard as the run); run --shard K/N processes with --metrics-label shard=K"
            )
        _check_choice("redis_policy", self.redis_policy, ("fail_closed", "fail_open"))
        if self.redis_url is not None:
            import importlib.util

            if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError("redis_url must start with redis://, rediss:// or unix://")
            if importlib.util.find_spec("redis") is None:
                raise ConfigError("redis_url needs the redis package: pip install 'runner[redis]'")
            _check_redis_url(self.redis_url)
            _check_redis_password(self.redis_url)
        if not 0 < self.lease_s <= MAX_LEASE_S:
            raise ConfigError(
                f"lease_s must be > 0 and at most {MAX_LEASE_S:g} s, got {self.lease_s}: a "
                "lease is waited for before it is spent, so a longer one stalls every process"
            )

    def _check_batch(self) -> None:
        """The ``--via batch`` options (runner/batchapi/)."""
        _check_choice("via", self.via, ("direct", "batch"))
        if not self.poll_interval > 0:
            raise ConfigError(f"poll_interval must be > 0, got {self.poll_interval}")
        for name in ("batch_max_requests", "batch_max_bytes"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name} must be >= 1, got {v}")
        if self.via == "batch" and self.provider not in ("openai", "anthropic", "mock"):
            raise ConfigError(
                f"--via batch speaks the OpenAI and Anthropic batch APIs, not {self.provider!r}"
            )
        if self.via == "batch" and self.order == "input":
            raise ConfigError("order 'input' does not apply to --via batch (rows come per batch)")
        if self.via == "batch" and self.max_cost is not None:
            raise ConfigError(
                "max_cost cannot stop a provider batch once submitted; "
                "use `runner validate --via batch` for the estimate"
            )
        if self.via == "batch" and (self.shard is not None or self.workers > 1):
            # One process owns the batch journal; the provider parallelises a batch itself.
            raise ConfigError("--via batch runs as one process: drop --shard / --workers")
        watched = [
            flag
            for flag, value in (
                ("--metrics-port", self.metrics_port),
                ("--metrics-textfile", self.metrics_textfile),
                ("--pushgateway", self.pushgateway),
                ("--otel-endpoint", self.otel_endpoint),
            )
            if value is not None
        ]
        if self.via == "batch" and watched:
            # The batch engine has no observer: refuse rather than leave an alert without data.
            raise ConfigError(
                f"{', '.join(watched)}: metrics are not exported by --via batch runs; "
                "read the summary (or runner status) instead"
            )
        if self.batch_max_attempts < 1:
            raise ConfigError(f"batch_max_attempts must be >= 1, got {self.batch_max_attempts}")

    def api_key(self) -> str | None:
        """The key from the environment variable the config names (never from the file).

        Without ``api_key_env``, ``OPENAI_API_KEY`` / ``ANTHROPIC_API_KEY`` are read when set
        (as the providers' SDKs do); unset, no key is sent (local servers need none).
        """
        # A key read from a file keeps its newline (a Kubernetes secret, a CRLF .env file):
        # sent as is it crashed aiohttp's header writer; with a space the server echoed it
        # trimmed, a spelling the key guard did not hunt for. Surrounding whitespace is never
        # part of a key.
        name = self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)
        key = (os.environ.get(name, "").strip() or None) if name else None
        if self.api_key_env and not key:
            raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        if key and any(c < " " or c == "\x7f" for c in key):
            raise ConfigError(
                f"environment variable {name} holds a control character (a line break?) "
                "inside the key; it cannot be sent in a header"
            )
        if key and self.provider in ("openai", "mock") and self.base_url:
            if "@" in self.base_url.split("://", 1)[-1].split("/", 1)[0]:
                # The key goes in the Authorization header, which aiohttp refuses next to
                # user:password@ in the URL (a traceback, exit 1); the URL is never echoed.
                raise ConfigError(
                    "base_url carries credentials (user:password@host) and a key is set: "
                    "the key is sent as the Authorization header; drop one of them"
                )
        return key

    def price(self, model: str | None = None) -> Price | None:
        p = self.prices.get(model or self.model)
        if p is not None and self.anthropic_cache_ttl == "1h" and self.provider == "anthropic":
            return _hour_cache_price(p)  # every write then goes to the 1-hour cache
        return p

    @property
    def summary_to_stdout(self) -> bool:
        """``--summary -``: the summary JSON goes to standard output (no summary file named)."""
        return self.summary is not None and str(self.summary) == "-"

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A copy with the given fields replaced; ``None`` values mean 'not given'.

        ``output`` ending in "/" names a directory (``output_is_dir``), as ``-o DIR/`` does; a
        new ``output`` without it names a file (or an existing directory)."""
        for name in _FILE_FIELDS:
            raw = overrides.get(name)
            if isinstance(raw, str) and raw.endswith(("/", "\\")):
                # Path() would drop the "/" and the run would write a file of that name.
                raise ConfigError(
                    f"{name} = {raw!r} ends in '/': name the file itself, for example "
                    f"{raw}{_EXAMPLE_NAMES[name]}"
                )
        given: dict[str, Any] = {
            # A flag's path (argparse gives a Path) or a string: "~" is home either way, as
            # "--latency=~/x" and systemd's ExecStart expand none.
            k: Path(v).expanduser() if k in _PATH_FIELDS and isinstance(v, (str, Path)) else v
            for k, v in overrides.items()
            if v is not None
        }
        raw_output = overrides.get("output")
        if raw_output is not None and overrides.get("output_is_dir") is None:
            given["output_is_dir"] = _names_a_directory(raw_output)
        try:
            return replace(self, **given)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc


def _names_a_directory(raw: object) -> bool:
    """An output path given as text that ends in "/" (a ``Path`` has already lost it)."""
    return isinstance(raw, str) and raw.endswith(("/", "\\"))


@functools.lru_cache(maxsize=64)
def _hour_cache_price(p: Price) -> Price:
    """``p`` with its cache writes at the 1-hour rate: Anthropic bills them at 2x the input
    price (``cache_write_1h`` when given), not the 5-minute 1.25x of ``cache_write``."""
    rate = p.cache_write_1h if p.cache_write_1h is not None else 2.0 * p.input
    return Price(
        input=p.input,
        output=p.output,
        cached_input=p.cached_input,
        cache_write=rate,
        cache_storage=p.cache_storage,
        batch_discount=p.batch_discount,
        cache_write_1h=p.cache_write_1h,
    )


#: The typed choices, checked on construction (a TOML file can hold any string).
_CHOICES: dict[str, tuple[str, ...]] = {
    "provider": PROVIDERS,
    "cache": get_args(CacheStrategy),
    "order": get_args(Order),
    "progress": get_args(Progress),
    "anthropic_cache_ttl": get_args(CacheTTL),
}
_PATH_FIELDS = {"output", "latency", "summary", "contexts", "metrics_textfile", "limit_file"}
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*\Z"  # compiled (by re) only when labels are given
# Labels the metrics set themselves; a user label of the same name would clash.
_RESERVED_LABELS = {"job_name", "outcome", "error_code", "type", "kind", "state", "le", "job"}


def _check_redis_url(url: str) -> None:
    """The one check of ``redis_url`` (runner/redis_limits.py's store trusts it): the pool the
    store builds is built here, without connecting, so what redis-py refuses only then (a port
    that is not a number, ``max_connections=-1``) is exit 2 now; and what it would take
    silently is refused too: a database that is not a number (``redis://h:6379/abc`` is
    database 0 to it). The URL is never echoed: it may carry a password."""
    from urllib.parse import urlsplit

    from redis.asyncio import ConnectionPool

    try:
        path = urlsplit(url).path.strip("/") if not url.startswith("unix://") else ""
        if path and not path.isdigit():
            raise ConfigError(
                "redis_url: the database in its path must be a number (redis://h:6379/0)"
            )
        ConnectionPool.from_url(url)  # parses the URL and its query values; opens nothing
    except ConfigError:  # a ValueError too
        raise
    except ValueError:  # its message may quote a part of the URL (a password, a query value)
        raise ConfigError(
            "redis_url is not a Redis URL redis-py can use: check its host, its port and its "
            "query values (db=, socket_timeout=, max_connections=, ...)"
        ) from None


def redis_password() -> str | None:
    """:data:`REDIS_PASSWORD_ENV` without surrounding whitespace, as the API key is read (the
    line break a Secret made from a file ends in: sent, Redis refused it); None when unset."""
    return os.environ.get(REDIS_PASSWORD_ENV, "").strip() or None


def _check_redis_password(url: str) -> None:
    """A password in ``redis_url`` and in :data:`REDIS_PASSWORD_ENV` both: one would be used
    without a word (the URL's, by redis-py), so neither is; neither is echoed."""
    password = redis_password()
    if password is None:
        return
    if any(c < " " or c == "\x7f" for c in password):
        raise ConfigError(
            f"environment variable {REDIS_PASSWORD_ENV} holds a control character (a line "
            "break?) inside the password"
        )
    from redis.connection import parse_url

    try:
        in_url = parse_url(url).get("password")  # type: ignore[no-untyped-call]
    except ValueError:  # checked by _check_redis_url before
        return
    if in_url:
        raise ConfigError(
            f"redis_url carries a password and {REDIS_PASSWORD_ENV} is set: give it once, "
            f"in {REDIS_PASSWORD_ENV} (kept out of the command line and the config file)"
        )


def _check_misused_paths(c: RunConfig) -> None:
    """Misuse a new user makes that would otherwise cost a retry loop or a stray file."""
    url = c.base_url
    if url is not None and not url.lower().startswith(("http://", "https://")):
        # Without it the pre-flight probe fails as "unreachable" (exit 75, "run again later"),
        # and a scheduler retries forever. The URL is not echoed: it may carry credentials.
        scheme = url.split("://", 1)[0] if "://" in url else ""
        raise ConfigError(
            "base_url must start with http:// or https://, e.g. http://127.0.0.1:8000/v1 "
            f"(this one has {f'the scheme {scheme!r}' if scheme else 'no scheme'})"
        )
    for name, flag, what in (
        ("output", "-o/--output", "results"),
        ("latency", "--latency", "latency"),
    ):
        if str(getattr(c, name)) == "-":
            # The results and latency files are what a resume reads back: a file named "-"
            # would be written instead of standard output.
            raise ConfigError(
                f"{flag} -: the {what} file cannot be standard output (a re-run resumes from "
                "it); name a file (--summary - prints the summary on standard output)"
            )


def _check_export_urls(c: RunConfig) -> None:
    """The metrics exports' URLs; otel_endpoint too: "nope" ran to exit 0 with only the SDK's
    "Failed to export metrics batch" line."""
    for name, url in (("pushgateway", c.pushgateway), ("otel_endpoint", c.otel_endpoint)):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ConfigError(f"{name} must be an http(s) URL, got {url!r}")


def _non_finite(value: Any, where: str) -> tuple[str, float] | None:
    """The path and value of a NaN or infinite number inside ``value`` (a table, list or
    number)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where, value
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}")
        if found is not None:
            return found
    return None


def _check_reply_budget(params: Mapping[str, Any]) -> None:
    """``[params] max_tokens`` is checked as a jobs line's is: it was sent as given, and every
    job came back a 400. A NaN or infinite number (TOML's ``nan``, ``inf``) anywhere in the
    table is refused too: JSON has none, so ``temperature = nan`` went out as ``null`` and the
    run used the provider's default without a word (a jobs line cannot hold one at all)."""
    bad = _non_finite(params, "params")
    if bad is not None:
        raise ConfigError(f"{bad[0]} must be a finite number, got {bad[1]}")
    for key in ("max_tokens", "max_completion_tokens"):
        budget = params.get(key)
        if budget is not None and (
            isinstance(budget, bool) or not isinstance(budget, int) or budget < 1
        ):
            raise ConfigError(f"params.{key} must be a positive integer, got {budget!r}")


def _check_operations(c: RunConfig) -> None:
    # An empty name would label every series job_name="" or merge budgets under scope "".
    for name in ("metrics_job", "limit_scope"):
        value = getattr(c, name)
        if value is not None and not str(value).strip():
            raise ConfigError(f"{name} must not be empty")
    if c.log_format not in ("text", "json"):
        raise ConfigError(f"log_format must be 'text' or 'json', got {c.log_format!r}")
    if c.metrics_port is not None and not 0 <= c.metrics_port <= 65535:
        raise ConfigError(f"metrics_port must be 0-65535, got {c.metrics_port}")
    if not c.log_interval_s > 0:
        raise ConfigError(f"log_interval_s must be > 0, got {c.log_interval_s}")
    if c.max_pause_s is not None and not c.max_pause_s > 0:
        raise ConfigError(f"max_pause_s must be > 0, got {c.max_pause_s}")
    if not isinstance(c.metrics_labels, Mapping):
        raise ConfigError("metrics_labels must be a table of name = value")
    for k, v in c.metrics_labels.items():
        if not isinstance(k, str) or not re.match(_LABEL_NAME, k) or k.startswith("__"):
            raise ConfigError(f"metrics label name {k!r} is not a valid Prometheus label name")
        if k in _RESERVED_LABELS:
            raise ConfigError(f"metrics label {k!r} is set by runner itself; choose another name")
        if not isinstance(v, str):
            raise ConfigError(f"metrics label {k} must be a string, got {v!r}")
    for k, v in c.headers.items():
        if not isinstance(v, str):
            raise ConfigError(f"header {k} must be a string, got {v!r}")
    # TOML puts every key after "[params]" (or "[headers]") into that table: a runner option
    # written below it would be sent to the provider instead, and its setting silently lost.
    for table, keys, allowed in (("params", c.params, _BODY_FIELDS), ("headers", c.headers, ())):
        for k in keys:
            if k in _FIELD_NAMES and k not in allowed:
                raise ConfigError(
                    f"{table}.{k} is a runner option, not a request "
                    f"{'field' if table == 'params' else 'header'}: in the TOML file, "
                    "top-level keys must come before the first [table]"
                )


#: Runner options that are also request body fields (OpenRouter's ``provider`` routing).
_BODY_FIELDS = ("model", "prompt_cache_retention", "provider", "stream")
#: Keys of the [limits] table; the rest of the config is flat.
_LIMITS_KEYS = ("lease_s", "limit_scope", "redis_policy", "redis_url", "rpm", "tpm")
_FIELD_NAMES = {f.name for f in fields(RunConfig)}
#: Fields set from another key's spelling, never written in a config file themselves.
_DERIVED = {"output_is_dir"}
_KEY_NAMES = _FIELD_NAMES - _DERIVED  # the fields a config file may set by name
# Numbers that must be finite and > 0 (None allowed where the field is optional) or >= 0.
_POSITIVE = (
    "rpm",
    "tpm",
    "max_cost",
    "context_window",
    "timeout",
    "connect_timeout",
    "cache_ttl_s",
    "explicit_ttl_s",
    "key_rpm",
    "max_line_bytes",
    "max_response_bytes",
    "breaker_min_requests",
)
_NON_NEGATIVE = ("min_cacheable_tokens", "drain_s")
# What each annotation accepts; bool is never accepted for a number.
_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "str": ((str,), "a string"),
    "bool": ((bool,), "true or false"),
    "Path": ((Path,), "a path"),
    "Mapping[str, str]": ((Mapping,), "a table"),
    "Mapping[str, Any]": ((Mapping,), "a table"),
    "Mapping[str, Price]": ((Mapping,), "a table"),
    # the Literal choices: a string here, its value checked against _CHOICES
    "Provider": ((str,), "a string"),
    "CacheStrategy": ((str,), "a string"),
    "Order": ((str,), "a string"),
    "Progress": ((str,), "a string"),
    "CacheTTL": ((str,), "a string"),
}


def _check_types(config: RunConfig) -> None:
    """Every field has the type its annotation names, and every number is finite."""
    for f in fields(config):
        value = getattr(config, f.name)
        kind = str(f.type)
        optional = kind.endswith(" | None")
        if optional:
            kind = kind[: -len(" | None")]
        if value is None and optional:
            continue
        types, words = _KINDS[kind]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise ConfigError(f"{f.name} must be {words}, got {value!r} ({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        hint = did_you_mean(value, choices)
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}{hint}")


def did_you_mean(word: str, choices: Any) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    import difflib  # only on a mistake: start-up does not pay for it

    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


#: Every RunConfig field, for callers that map flags onto it (the CLI's overrides).
FIELD_NAMES: frozenset[str] = frozenset(_FIELD_NAMES)


def _parse_prices(raw: Any, where: str) -> dict[str, Price]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [prices] must be a table of model tables")
    out: dict[str, Price] = {}
    for model, p in raw.items():
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: prices.{model} must be a table")
        # named here: Price(**p) said "Price.__init__() got an unexpected keyword argument"
        known = [f.name for f in fields(Price)]
        for k in p:
            if k not in known:
                hint = did_you_mean(k, known)
                raise ConfigError(f"{where}: unknown key prices.{model}.{k}{hint}")
        missing = [k for k in ("input", "output") if k not in p]
        if missing:
            raise ConfigError(
                f"{where}: prices.{model}: missing {' and '.join(missing)} (USD per 1M tokens)"
            )
        try:
            out[model] = Price(**p)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: prices.{model}: {exc}") from exc
    return out


_CACHE_KEYS = (
    "strategy",
    "ttl_s",
    "max_active_groups",
    "group_concurrency",
    "adapt",
    "key_rpm",
    "min_cacheable_tokens",
)


#: Fields naming an output file: a path ending in "/" names a directory, and ``Path`` would
#: silently drop the "/" and write a file of that name (``output`` is the one that may be one).
_FILE_FIELDS = ("latency", "summary", "metrics_textfile")
_EXAMPLE_NAMES = {
    "latency": "jobs.latency.jsonl",
    "summary": "jobs.summary.json",
    "metrics_textfile": "runner.prom",
}


#: Why an empty model is refused rather than sent: it is almost always an unset variable.
_EMPTY_HINT = ' (an unset shell variable, as in --model "$MODEL"?)'


def model_arg(raw: str) -> str:
    """argparse type of ``--model``: an empty name is refused before anything is touched."""
    if not raw.strip():
        import argparse

        raise argparse.ArgumentTypeError(f"must not be empty, got {raw!r}{_EMPTY_HINT}")
    return raw


def file_arg(raw: str) -> Path:
    """argparse type of an output-file flag (``--latency``, ``--summary``,
    ``--metrics-textfile``): ``d1/`` is refused, as a path to a directory, before any file."""
    if raw.endswith(("/", "\\")):
        import argparse

        raise argparse.ArgumentTypeError(f"{raw} ends in '/': give a file name, not a directory")
    return Path(raw)


def config_from_mapping(data: Mapping[str, Any], where: str = "config") -> RunConfig:
    """Build a config from a parsed TOML document. Tables: params, headers, prices, mock, cache."""
    flat: dict[str, Any] = {}
    spelled: dict[str, str] = {}  # a [cache] key's field name -> the key as the file has it
    for key, value in data.items():
        if key == "cache" and isinstance(value, dict):
            # [cache] strategy/ttl_s/max_active_groups/key_rpm/... as a table
            for ck, cv in value.items():
                name = {"strategy": "cache", "ttl_s": "cache_ttl_s", "adapt": "cache_adapt"}.get(
                    ck, ck
                )
                if ck in ("strategy", "ttl_s", "adapt"):
                    spelled[str(name)] = f"cache.{ck}"
                if name not in _FIELD_NAMES:
                    raise ConfigError(
                        f"{where}: unknown key cache.{ck}{did_you_mean(ck, _CACHE_KEYS)}"
                    )
                flat[name] = cv
        elif key == "limits" and isinstance(value, dict):
            # [limits] rpm/tpm/redis_url/limit_scope/redis_policy/lease_s as a table
            for lk, lv in value.items():
                if lk not in _LIMITS_KEYS:
                    hint = did_you_mean(lk, _LIMITS_KEYS)
                    if not hint and lk in _FIELD_NAMES:  # TOML put a top-level key in the table
                        hint = ": top-level keys must come before the first [table]"
                    raise ConfigError(f"{where}: unknown key limits.{lk}{hint}")
                flat[lk] = lv
        elif key == "prices":
            flat["prices"] = _parse_prices(value, where)
        elif key.replace("-", "_") in _KEY_NAMES:
            name = key.replace("-", "_")
            if name in _PATH_FIELDS:
                if not isinstance(value, str):
                    raise ConfigError(f"{where}: {name} must be a path (a string), got {value!r}")
                if name in _FILE_FIELDS and value.endswith(("/", "\\")):
                    raise ConfigError(
                        f"{where}: {name} = {value!r} ends in '/': "
                        "give a file name, not a directory"
                    )
                if name == "output" and _names_a_directory(value):
                    flat["output_is_dir"] = True  # as -o DIR/: the results go inside
                # TOML is not a shell: "~/out" made a directory named "~" in the working one
                value = Path(value).expanduser()
            flat[name] = value
        else:
            known = sorted(_KEY_NAMES | {"prices"})
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, known)}")
    try:
        return RunConfig(**flat)
    except (TypeError, ConfigError) as exc:
        said = str(exc)
        field = said.partition(" ")[0]
        if field in spelled:  # "cache must be one of ..." for [cache] strategy = "warmm"
            said = spelled[field] + said[len(field) :]
        raise ConfigError(f"{where}: {said}") from exc


def load_config(path: Path | None) -> RunConfig:
    """Load a TOML config file; ``None`` gives the defaults (the built-in simulated provider)."""
    if path is None:
        return RunConfig()
    data = read_toml(path)
    return config_from_mapping(data, str(path))


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's tables; :class:`ConfigError` (exit 2) naming the file when it cannot be
    read, is not UTF-8 or is not TOML."""
    import tomllib  # only with a config file: start-up without one does not pay for it

    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        # A byte order mark (Windows editors save one) would read as "Invalid statement".
        return tomllib.loads(raw.removeprefix(b"\xef\xbb\xbf").decode())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        byte = exc.object[exc.start]
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte {byte:#x})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
