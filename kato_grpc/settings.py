"""Service configuration from ``KATO_*`` environment variables, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from kato_grpc.stores import keys, redis_client


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KATO_", extra="ignore")

    host: str = "127.0.0.1"
    # Serving processes on the port (SO_REUSEPORT); they share nothing but Redis and MongoDB.
    workers: int = Field(1, ge=1, le=64)
    port: int = Field(50051, ge=0, le=65535)
    # When unset, `make run` starts local Redis- and MongoDB-compatible servers.
    redis_url: str | None = None
    mongodb_uri: str | None = None
    mongodb_database: str = "kato"
    # Every Redis key this deployment owns starts with it; unset: the MongoDB database's name
    # (``keys.namespace_for``). Deployments sharing one Redis must differ here — a
    # different database is enough — or each relay would apply the other's learns. A namespace
    # is bound to its database at the first start: another database refuses to start on it.
    redis_namespace: str | None = None
    # Acknowledge a session commit only once this many replicas of its Redis node have it
    # (WAIT, at most the timeout; else UNAVAILABLE NOT_REPLICATED, committed): a failover then
    # loses no acknowledged call. 0: asynchronous replication (docs/operations.md).
    redis_wait_replicas: int = Field(0, ge=0, le=16)
    redis_wait_timeout_ms: int = Field(100, ge=1, le=60_000)
    data_dir: Path = Path(".data")

    session_ttl_seconds: int = Field(3600, ge=60, le=86400)
    min_ttl_seconds: int = 60
    max_ttl_seconds: int = 86400
    max_stm_events: int = Field(1000, ge=1, le=100_000)
    # Beyond this many symbols in all, the oldest STM events are dropped too. Patterns are
    # learned from the STM, so this is also the largest pattern.
    max_stm_symbols: int = Field(10_000, ge=1, le=1_000_000)
    # Serialized session state (STM, accumulators, last predictions): an Observe that would
    # take a session past it is refused (RESOURCE_EXHAUSTED, nothing applied). At most 5 MiB,
    # so that a pattern learned from one session fits MongoDB's 16 MiB document limit (its
    # events and its distinct symbols are stored side by side).
    max_session_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024, le=5 * 1024 * 1024)
    # Symbol pairs one prediction may compare (see kato_grpc/engine/budget.py): about 2 s of
    # alignment on this project's reference machine.
    max_prediction_work: int = Field(10_000_000, ge=1000)
    # Longest a call may run, whatever its deadline (none counts as infinite).
    max_call_seconds: float = Field(120.0, gt=0)
    # Threads the engine runs on (off the event loop); they share the GIL.
    engine_threads: int = Field(4, ge=1, le=64)
    # Process-wide policies (server/kato_server/app.py, server/kato_server/memory_policy.py): pass the GIL every 1 ms
    # instead of Python's 5 ms; after a large KB refresh, freeze the GC (and pause it while a
    # KB snapshot decodes) and return freed heap.
    gil_switch_interval: bool = True
    gc_freeze: bool = True
    malloc_trim: bool = True
    # When a call that learned is answered: once its patterns are in MongoDB ("applied"), or
    # once its outbox is committed in Redis, applying behind the answer ("committed"; faster,
    # a refused pattern becomes a dead letter the caller is not told of). docs/operations.md.
    learn_ack: Literal["applied", "committed"] = "applied"
    cas_retries: int = Field(32, ge=1, le=10_000)
    # Each process keeps the sessions it last committed (serialized MB; 0: none), so that a
    # session's next call to the same process commits in one Redis round trip instead of a
    # load and a compare-and-set (architecture.md §3, "One round trip").
    session_cache_mb: int = Field(64, ge=0)
    # Conflict retries wait a random time up to min(this, 1 ms × 2^attempt).
    cas_backoff_max_seconds: float = Field(0.05, ge=0)
    # Request ids a session remembers: the oldest are forgotten beyond either bound.
    max_request_records: int = Field(1000, ge=1)
    max_request_record_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # The outbox relay applies learns a cut-off call left behind once they are this old.
    outbox_relay_after_seconds: float = Field(2.0, gt=0)
    outbox_relay_interval_seconds: float = Field(1.0, gt=0)
    store_timeout_seconds: float = Field(5.0, gt=0)
    # A process renews a lease in Redis every third of this; once another finds it expired,
    # the transactions the process may have left open in MongoDB are ended (a killed process
    # would otherwise block writes to its KBs until MongoDB reaps them, 60 s later).
    transaction_lease_seconds: float = Field(3.0, ge=0.3)

    # Request limits (architecture.md §9), enforced before any work.
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_symbols_per_event: int = Field(1000, ge=1)
    max_symbol_bytes: int = Field(1024, ge=1)
    max_observations_per_sequence: int = Field(10_000, ge=1)
    max_vector_dimension: int = Field(4096, ge=1)
    max_vectors_per_observation: int = Field(100, ge=1)
    max_emotives: int = Field(100, ge=1)
    max_metadata_keys: int = Field(100, ge=1)
    max_pattern_emotive_records: int = Field(100, ge=1)
    # Bytes of ObserveStream messages read ahead of the ones being answered.
    stream_read_ahead_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # WatchKnowledgeBase: a watcher further behind than this many versions is told to resync.
    watch_max_lag: int = Field(10_000, ge=1)

    # Optional bearer-token auth: JSON {"<token>": ["<node_id>", ...]}; "*" allows every node.
    # Unset = no auth (the mesh authenticates). Tokens are never logged.
    auth_tokens: dict[str, list[str]] | None = None
    # Optional TLS: PEM files; both set = the port serves TLS only. With a client CA too, every
    # client must present a certificate that CA signed (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    # HTTP/2 connections live long: without an age limit a scaled-out deployment stays as
    # unbalanced as it was when clients connected. After max_connection_age (0: never) the
    # server asks the client to reconnect (GOAWAY), letting calls in flight finish within the
    # grace; keepalive pings find dead peers behind proxies.
    max_connection_age_seconds: float = Field(300.0, ge=0)
    max_connection_age_grace_seconds: float = Field(30.0, ge=0)
    keepalive_time_seconds: float = Field(60.0, gt=0)
    keepalive_timeout_seconds: float = Field(20.0, gt=0)

    # The KB cache's budget per process (estimated MB; unset: at most 100 KBs, no byte bound):
    # least-recently-used KBs are evicted whole and reloaded when asked for.
    kb_cache_max_mb: int | None = Field(None, ge=1)
    # KB snapshots (docs/scaling.md, "Cold start"; architecture.md §4): a KB of at least
    # kb_snapshot_min_patterns patterns gets a compact snapshot once it has been quiet for
    # kb_snapshot_quiet_seconds after changes — written by a process caching it, or by the
    # process that wrote it (learns, imports, updates, deletes; loading it apart when it does
    # not cache it) — and a process caching it also writes one at once when the changes since
    # the last snapshot reach kb_snapshot_growth times its size; a cold cache loads from it.
    # Every kb_snapshot_sweep_seconds (and at start; 0: at start only) a process looks for KBs
    # that still lack one (their writer crashed or stopped within the quiet period).
    kb_snapshots: bool = True
    kb_snapshot_min_patterns: int = Field(1000, ge=1)
    kb_snapshot_quiet_seconds: float = Field(5.0, ge=0)
    kb_snapshot_growth: float = Field(0.25, gt=0)
    kb_snapshot_sweep_seconds: float = Field(600.0, ge=0)
    # Knowledge bases (JSON list of ids) loaded into the cache before health says SERVING.
    preload_nodes: list[str] = Field(default_factory=list)

    # Prometheus metrics on this port (worker i of KATO_WORKERS: port + i); unset = off.
    metrics_port: int | None = Field(None, ge=1, le=65535)

    grace_seconds: float = Field(5.0, ge=0)
    health_interval_seconds: float = Field(1.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = False

    @property
    def namespace(self) -> str:
        """The Redis namespace in effect (the setting, or the database's default)."""
        return self.redis_namespace or keys.namespace_for(self.mongodb_database)

    @field_validator("redis_namespace")
    @classmethod
    def _namespace_chars(cls, namespace: str | None) -> str | None:
        if namespace is not None and not keys.NAMESPACE.fullmatch(namespace):
            raise ValueError("must be 1-64 of the characters A-Z a-z 0-9 _ . -")
        return namespace

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str | None) -> str | None:
        return None if url is None else redis_client.check_url(url)

    @model_validator(mode="after")
    def _tls_files_together(self) -> Settings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("KATO_TLS_CERT_FILE and KATO_TLS_KEY_FILE go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("KATO_TLS_CLIENT_CA_FILE (mutual TLS) needs KATO_TLS_CERT_FILE and KATO_TLS_KEY_FILE")
        return self
