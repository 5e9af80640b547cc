"""Server settings, read from the environment once at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MIN_MESSAGE_BYTES = 1024 * 1024
"""The smallest transport limit allowed: the largest event (200 sections, every text at its
maximum) or order (100 tickets) answer is far below it (tests/unit/test_response_sizes.py)."""


class ConfigError(ValueError):
    """A setting in the environment is malformed; the message names it."""


def _int(env: dict[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _switch(env: dict[str, str], name: str, default: bool = False) -> bool:
    """`on`/`off` (also true/false, 1/0); unset is `default`."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("off", "false", "0", "no"):
        return False
    if raw in ("on", "true", "1", "yes"):
        return True
    raise ConfigError(f"{name} must be on or off, not {raw!r}")


def _float(env: dict[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not lo <= value <= hi:  # also refuses nan
        raise ConfigError(f"{name} must be between {lo:g} and {hi:g}, got {raw}")
    return value


def default_auth_concurrency() -> int:
    """Half the CPUs this process may run on, and at least 2.

    Half: bcrypt then never takes every core from the event loop and PostgreSQL, however
    many sign-ins arrive. At least 2: the password pool never lets one address hold the
    last free worker, which needs two of them (a flood's hashes also run at background CPU
    priority, so the second worker costs bookings little on a 2-core machine).
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(2, cpus // 2)


def usable_cores() -> int:
    """The CPUs this process may run on (what `TICKETING_WORKERS=auto` starts)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_workers(raw: str | None, name: str = "TICKETING_WORKERS") -> int:
    """A worker count from 1 to 256, or `auto` (the usable cores); empty means 1."""
    value = (raw or "").strip().lower()
    if not value:
        return 1
    if value == "auto":
        return usable_cores()
    try:
        count = int(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number or 'auto', got {raw!r}") from None
    if not 1 <= count <= 256:
        raise ConfigError(f"{name} must be between 1 and 256, got {count}")
    return count


def default_data_dir() -> Path:
    """Where the server keeps its generated JWT secret and embedded database."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "ticketing"


@dataclass(frozen=True)
class Settings:
    """Everything the server reads from its environment. See README's configuration table."""

    database_url: str | None
    """`DATABASE_URL`; None means: start a private embedded PostgreSQL."""
    listen: str = "127.0.0.1:50051"
    """`TICKETING_LISTEN`: host:port to bind; port 0 picks a free one."""
    data_dir: Path = field(default_factory=default_data_dir)
    """`TICKETING_DATA_DIR`: generated secret and embedded database live here."""
    jwt_secret: str | None = None
    """`TICKETING_JWT_SECRET`; None means: generate once and keep it in data_dir (0600)."""
    jwt_issuer: str = "ticketd"
    jwt_audience: str = "ticketing.v1"
    token_ttl_seconds: int = 3600
    """`TICKETING_TOKEN_TTL`: lifetime of access tokens."""
    hold_ttl_seconds: int = 600
    """`TICKETING_HOLD_TTL`: how long a hold lasts when HoldSeats names no ttl."""
    hold_max_ttl_seconds: int = 1800
    """`TICKETING_HOLD_MAX_TTL`: the longest ttl, and the longest a hold lives from its
    creation however often it is extended."""
    hold_sweep_interval_seconds: float = 1.0
    """`TICKETING_HOLD_SWEEP_INTERVAL`: how often expired holds' places are turned AVAILABLE
    and recorded for the seat streams (0: never; sales do not depend on it)."""
    seat_streams: bool = True
    """`TICKETING_SEAT_STREAMS` (on/off): record seat changes and serve WatchSeats. On by
    default since the outbox sequencer (writers share no row; docs/streams.md has the
    cost); `off` is the opt-out. Every server of a deployment must say the same."""
    outbox_retention_seconds: int = 7 * 86_400
    """`TICKETING_OUTBOX_RETENTION`: seconds seat and order changes are kept for streams to
    resume from (0: for ever); a reader resuming from an older position is told so
    (SEQUENCE_PRUNED). Gate changes are the scan log and are kept."""
    outbox_prune_interval_seconds: float = 60.0
    """`TICKETING_OUTBOX_PRUNE_INTERVAL`: how often changes past the retention are deleted,
    in batches of a few thousand rows (0: never)."""
    max_streams: int = 1000
    """`TICKETING_MAX_STREAMS`: open streaming calls (WatchSeats, WatchOrders, WatchGate) per
    server process."""
    stream_send_timeout_seconds: float = 30.0
    """`TICKETING_STREAM_SEND_TIMEOUT`: how long a stream waits for its reader to take the
    next message before ending it (STREAM_TOO_SLOW): what bounds a stream's memory."""
    stream_poll_seconds: float = 2.0
    """`TICKETING_STREAM_POLL`: a stream re-reads the outbox at least this often, in case a
    NOTIFY wake-up was lost."""
    bcrypt_rounds: int = 12
    """`TICKETING_BCRYPT_ROUNDS`: 12 costs ~0.25 s of CPU per hash here, by design."""
    admin_email: str | None = None
    """`TICKETING_ADMIN_EMAIL`: bootstrap admin made sure of on every start."""
    admin_password: str | None = None
    """`TICKETING_ADMIN_PASSWORD`: the bootstrap admin's password (set on first creation)."""
    tls_cert: Path | None = None
    """`TICKETING_TLS_CERT`: PEM certificate chain; with TICKETING_TLS_KEY enables TLS."""
    tls_key: Path | None = None
    """`TICKETING_TLS_KEY`: PEM private key."""
    db_pool_size: int = 20
    """`TICKETING_DB_POOL_SIZE`: connections kept open to PostgreSQL."""
    db_pool_timeout_seconds: int = 5
    """`TICKETING_DB_POOL_TIMEOUT`: wait for a free connection before UNAVAILABLE."""
    statement_timeout_ms: int = 10_000
    """`TICKETING_STATEMENT_TIMEOUT_MS`: no single statement runs longer."""
    lock_timeout_ms: int = 2_000
    """`TICKETING_LOCK_TIMEOUT_MS`: bounded wait for a row lock; then ABORTED."""
    max_concurrent_rpcs: int = 1000
    """`TICKETING_MAX_CONCURRENT_RPCS`: admission limit for ordinary calls (not health,
    reflection or password work, which have their own); above it, RESOURCE_EXHAUSTED."""
    auth_concurrency: int = field(default_factory=default_auth_concurrency)
    """`TICKETING_AUTH_CONCURRENCY`: password hashes (bcrypt) computed at once."""
    auth_queue: int = 8
    """`TICKETING_AUTH_QUEUE`: password jobs that may wait for a worker; beyond that,
    RESOURCE_EXHAUSTED AUTH_BUSY at once. One address may hold a quarter of it."""
    auth_peer_rate: float = 0.5
    """`TICKETING_AUTH_PEER_RATE`: Login + Register (+ ChangePassword) attempts per second
    per caller IP address, sustained (per process). At 0.5, one address can keep at most
    a third of a core busy with bcrypt at cost 12, however it floods."""
    auth_peer_burst: int = 10
    """`TICKETING_AUTH_PEER_BURST`: attempts one address may make at once above that rate."""
    login_failures_per_email: int = 5
    """`TICKETING_LOGIN_FAILURES_PER_EMAIL`: failed sign-ins per email before an
    exponential backoff (1 s, doubling, capped at 5 min; a success resets)."""
    max_message_bytes: int = 4 * 1024 * 1024
    """`TICKETING_MAX_MESSAGE_BYTES`: transport limit for one request or response. At least
    1 MiB, so that every answer of bounded size (the largest event, the largest order) fits;
    venue layouts and pages are limited by it (nothing is created that cannot be read back)."""
    db_public_share_percent: int = 50
    """`TICKETING_DB_PUBLIC_SHARE`: most of the pool (percent, at least one connection)
    anonymous public reads (GetEvent, ListEvents, ListSeats) may hold at once."""
    quota_event_places: int = 200_000
    """`TICKETING_QUOTA_EVENT_PLACES`: most places in one event (organizers; ADMIN exempt)."""
    quota_live_events: int = 100
    """`TICKETING_QUOTA_LIVE_EVENTS`: most events on sale at once per organizer (ADMIN
    exempt); 0 = no cap."""
    grace_seconds: int = 10
    """`TICKETING_SHUTDOWN_GRACE`: in-flight calls get this long on SIGTERM."""
    gate_scan_rate: int = 100
    """`TICKETING_GATE_SCAN_RATE`: sustained scans per second per gate (per process)."""
    gate_scan_burst: int = 200
    """`TICKETING_GATE_SCAN_BURST`: scans a gate may make at once above the rate."""
    caller_scan_rate: int = 400
    """`TICKETING_CALLER_SCAN_RATE`: sustained scans per second per signed-in caller (per
    process), whatever gate names it uses: four gates at the full per-gate rate."""
    caller_scan_burst: int = 800
    """`TICKETING_CALLER_SCAN_BURST`: scans one caller may make at once above its rate."""
    caller_max_gates: int = 32
    """`TICKETING_CALLER_MAX_GATES`: distinct gate names one caller may keep busy at once (a
    gate name is forgotten once idle long enough for its bucket to be full again)."""
    doors_open_lead_seconds: int = 3 * 3600
    """`TICKETING_DOORS_OPEN_LEAD`: gates open this long before start when an event sets no
    doors_open_time."""
    default_event_duration_seconds: int = 4 * 3600
    """`TICKETING_DEFAULT_EVENT_DURATION`: gates close this long after start when an event
    sets no end_time."""
    keys_secret: str | None = None
    """`TICKETING_KEYS_SECRET`: what the key sealing event signing keys and the HMAC key of
    device credentials are derived from (HKDF); None means: generate once and keep it in
    data_dir (0600). Losing it loses every signing key and device credential."""
    device_enroll_ttl_seconds: int = 86_400
    """`TICKETING_DEVICE_ENROLL_TTL`: how long a device's enrollment token works."""
    partner_max_concurrent_rpcs: int = 50
    """`TICKETING_PARTNER_MAX_CONCURRENT_RPCS`: calls one partner's API keys may have in
    flight at once (per process; a partner's own `max_concurrent_rpcs` column overrides)."""
    partner_rate: float = 100.0
    """`TICKETING_PARTNER_RATE`: sustained calls per second per partner (per process; the
    partner's `rate_per_second` column overrides)."""
    partner_max_streams: int = 10
    """`TICKETING_PARTNER_MAX_STREAMS`: server streams (WatchOrders, WatchSeats ...) one
    partner's API keys may have open at once (per process). Opening one also takes a token
    of the partner's rate, so a reconnect loop is held to the rate like any call."""
    partner_burst: int = 200
    """`TICKETING_PARTNER_BURST`: calls a partner may make at once above its rate (scaled
    with a partner's own rate)."""
    partner_refusal_hold_seconds: float = 0.25
    """`TICKETING_PARTNER_REFUSAL_HOLD`: how long an over-budget partner's call is held
    before its RESOURCE_EXHAUSTED is sent (never past its deadline), so a client ignoring
    RetryInfo cannot have its refusals take the server's CPU from others; 0 answers at once."""
    auth_cache_ttl_seconds: float = 2.0
    """`TICKETING_AUTH_CACHE_TTL`: how long a credential's principal is answered from memory
    (ticketd.auth.cache; revocations still take effect on the next call); 0 turns it off."""
    max_streams_per_connection: int = 0
    """`TICKETING_MAX_STREAMS_PER_CONNECTION`: concurrent calls one HTTP/2 connection may
    have open (`grpc.max_concurrent_streams`), so a flooding client queues on its own side;
    0 (the default) leaves grpc's. Off by default: a client that opens more calls than
    this on a new connection, before the server's SETTINGS reach it, gets the excess
    refused (UNAVAILABLE, RST_STREAM REFUSED_STREAM) rather than queued."""
    offline_clock_skew_seconds: int = 300
    """`TICKETING_OFFLINE_CLOCK_SKEW`: how far ahead of the server's clock an uploaded
    offline scan time may be (a kiosk's clock runs a little fast) before it is INVALID."""
    workers: int = 1
    """`TICKETING_WORKERS` (or `serve --workers`): server processes on the one port; `auto`
    is one per usable core. Pool and per-process limits are divided by it (docs/scaling.md)."""
    metrics_listen: str | None = None
    """`TICKETING_METRICS_LISTEN`: host:port of the Prometheus /metrics endpoint; unset, off."""
    log_format: str = "text"
    """`TICKETING_LOG_FORMAT`: `text`, or `json` for one JSON object per line and a
    structured access line per RPC (docs/observability.md)."""

    @property
    def auth_rpc_limit(self) -> int:
        """Admission limit for password RPCs (Register, Login, ChangePassword) in flight:
        room for every hashing and queued job, and as many again in their database step."""
        return 2 * (self.auth_concurrency + self.auth_queue)

    @property
    def grpc_hard_limit(self) -> int:
        """grpc's own `maximum_concurrent_rpcs`, a last resort far above our admission.

        grpc counts every call, health checks included, before any interceptor runs, so it
        must never be what refuses calls in normal overload: our admission (which exempts
        health and reflection) answers first. Twice both budgets plus room for health
        checks and Watch streams.
        """
        return 2 * (self.max_concurrent_rpcs + self.auth_rpc_limit) + 256

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Read settings; raise ConfigError naming the bad variable."""
        env = dict(os.environ if environ is None else environ)
        cert = env.get("TICKETING_TLS_CERT") or None
        key = env.get("TICKETING_TLS_KEY") or None
        if bool(cert) != bool(key):
            raise ConfigError("TICKETING_TLS_CERT and TICKETING_TLS_KEY must be set together")
        admin_email = env.get("TICKETING_ADMIN_EMAIL") or None
        admin_password = env.get("TICKETING_ADMIN_PASSWORD") or None
        if bool(admin_email) != bool(admin_password):
            raise ConfigError("TICKETING_ADMIN_EMAIL and TICKETING_ADMIN_PASSWORD go together")
        secret = env.get("TICKETING_JWT_SECRET") or None
        if secret is not None and len(secret.encode()) < 32:
            raise ConfigError("TICKETING_JWT_SECRET must be at least 32 bytes")
        keys_secret = env.get("TICKETING_KEYS_SECRET") or None
        if keys_secret is not None and len(keys_secret.encode()) < 32:
            raise ConfigError("TICKETING_KEYS_SECRET must be at least 32 bytes")
        data_dir = env.get("TICKETING_DATA_DIR")
        log_format = (env.get("TICKETING_LOG_FORMAT") or "text").strip().lower()
        if log_format not in ("text", "json"):
            raise ConfigError(f"TICKETING_LOG_FORMAT must be text or json, got {log_format!r}")
        metrics_listen = (env.get("TICKETING_METRICS_LISTEN") or "").strip() or None
        if metrics_listen is not None:
            _, sep, port = metrics_listen.rpartition(":")
            if not sep or not port.isdigit() or int(port) > 65535:
                raise ConfigError(
                    f"TICKETING_METRICS_LISTEN must be host:port, got {metrics_listen!r}"
                )
        return cls(
            database_url=env.get("DATABASE_URL") or None,
            listen=env.get("TICKETING_LISTEN") or "127.0.0.1:50051",
            data_dir=Path(data_dir) if data_dir else default_data_dir(),
            jwt_secret=secret,
            token_ttl_seconds=_int(env, "TICKETING_TOKEN_TTL", 3600, 60, 7 * 86400),
            bcrypt_rounds=_int(env, "TICKETING_BCRYPT_ROUNDS", 12, 4, 16),
            hold_ttl_seconds=_int(env, "TICKETING_HOLD_TTL", 600, 1, 86_400),
            hold_max_ttl_seconds=_int(env, "TICKETING_HOLD_MAX_TTL", 1800, 1, 86_400),
            hold_sweep_interval_seconds=_float(env, "TICKETING_HOLD_SWEEP_INTERVAL", 1.0, 0, 3600),
            seat_streams=_switch(env, "TICKETING_SEAT_STREAMS", default=True),
            outbox_retention_seconds=_int(
                env, "TICKETING_OUTBOX_RETENTION", 7 * 86_400, 0, 10 * 366 * 86_400
            ),
            outbox_prune_interval_seconds=_float(
                env, "TICKETING_OUTBOX_PRUNE_INTERVAL", 60.0, 0, 86_400
            ),
            max_streams=_int(env, "TICKETING_MAX_STREAMS", 1000, 1, 100_000),
            stream_send_timeout_seconds=_float(
                env, "TICKETING_STREAM_SEND_TIMEOUT", 30.0, 0.1, 3600
            ),
            stream_poll_seconds=_float(env, "TICKETING_STREAM_POLL", 2.0, 0.05, 60),
            admin_email=admin_email,
            admin_password=admin_password,
            tls_cert=Path(cert) if cert else None,
            tls_key=Path(key) if key else None,
            db_pool_size=_int(env, "TICKETING_DB_POOL_SIZE", 20, 1, 500),
            db_pool_timeout_seconds=_int(env, "TICKETING_DB_POOL_TIMEOUT", 5, 1, 120),
            statement_timeout_ms=_int(env, "TICKETING_STATEMENT_TIMEOUT_MS", 10_000, 100, 600_000),
            lock_timeout_ms=_int(env, "TICKETING_LOCK_TIMEOUT_MS", 2_000, 10, 60_000),
            max_concurrent_rpcs=_int(env, "TICKETING_MAX_CONCURRENT_RPCS", 1000, 1, 100_000),
            auth_concurrency=_int(
                env, "TICKETING_AUTH_CONCURRENCY", default_auth_concurrency(), 1, 256
            ),
            auth_queue=_int(env, "TICKETING_AUTH_QUEUE", 8, 0, 100_000),
            auth_peer_rate=_float(env, "TICKETING_AUTH_PEER_RATE", 0.5, 0.001, 1_000_000),
            auth_peer_burst=_int(env, "TICKETING_AUTH_PEER_BURST", 10, 1, 1_000_000),
            login_failures_per_email=_int(
                env, "TICKETING_LOGIN_FAILURES_PER_EMAIL", 5, 1, 1_000_000
            ),
            max_message_bytes=_int(
                env, "TICKETING_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, MIN_MESSAGE_BYTES, 64 << 20
            ),
            db_public_share_percent=_int(env, "TICKETING_DB_PUBLIC_SHARE", 50, 1, 100),
            quota_event_places=_int(env, "TICKETING_QUOTA_EVENT_PLACES", 200_000, 1, 200_000),
            quota_live_events=_int(env, "TICKETING_QUOTA_LIVE_EVENTS", 100, 0, 1_000_000),
            grace_seconds=_int(env, "TICKETING_SHUTDOWN_GRACE", 10, 0, 600),
            gate_scan_rate=_int(env, "TICKETING_GATE_SCAN_RATE", 100, 1, 1_000_000),
            gate_scan_burst=_int(env, "TICKETING_GATE_SCAN_BURST", 200, 1, 1_000_000),
            caller_scan_rate=_int(env, "TICKETING_CALLER_SCAN_RATE", 400, 1, 1_000_000),
            caller_scan_burst=_int(env, "TICKETING_CALLER_SCAN_BURST", 800, 1, 1_000_000),
            caller_max_gates=_int(env, "TICKETING_CALLER_MAX_GATES", 32, 1, 100_000),
            doors_open_lead_seconds=_int(env, "TICKETING_DOORS_OPEN_LEAD", 3 * 3600, 0, 7 * 86400),
            default_event_duration_seconds=_int(
                env, "TICKETING_DEFAULT_EVENT_DURATION", 4 * 3600, 60, 30 * 86400
            ),
            keys_secret=keys_secret,
            device_enroll_ttl_seconds=_int(
                env, "TICKETING_DEVICE_ENROLL_TTL", 86_400, 60, 30 * 86400
            ),
            offline_clock_skew_seconds=_int(env, "TICKETING_OFFLINE_CLOCK_SKEW", 300, 0, 3600),
            workers=parse_workers(env.get("TICKETING_WORKERS")),
            metrics_listen=metrics_listen,
            log_format=log_format,
            partner_max_concurrent_rpcs=_int(
                env, "TICKETING_PARTNER_MAX_CONCURRENT_RPCS", 50, 1, 100_000
            ),
            partner_rate=_float(env, "TICKETING_PARTNER_RATE", 100.0, 0.001, 1_000_000),
            partner_burst=_int(env, "TICKETING_PARTNER_BURST", 200, 1, 1_000_000),
            partner_max_streams=_int(env, "TICKETING_PARTNER_MAX_STREAMS", 10, 1, 100_000),
            partner_refusal_hold_seconds=_float(
                env, "TICKETING_PARTNER_REFUSAL_HOLD", 0.25, 0.0, 5.0
            ),
            auth_cache_ttl_seconds=_float(env, "TICKETING_AUTH_CACHE_TTL", 2.0, 0.0, 60.0),
            max_streams_per_connection=_int(
                env, "TICKETING_MAX_STREAMS_PER_CONNECTION", 0, 0, 100_000
            ),
        )
