"""Service configuration from ``KATO_*`` environment variables, validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


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
    data_dir: Path = Path(".data")

    session_ttl_seconds: int = Field(3600, ge=60, le=86400)
    min_ttl_seconds: int = 60
    max_ttl_seconds: int = 86400
    max_stm_events: int = Field(1000, ge=1, le=100_000)
    cas_retries: int = Field(32, ge=1, le=10_000)
    store_timeout_seconds: float = Field(5.0, gt=0)

    # Request limits (DESIGN 9), enforced before any work.
    max_message_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    max_symbols_per_event: int = Field(1000, ge=1)
    max_symbol_bytes: int = Field(1024, ge=1)
    max_observations_per_sequence: int = Field(10_000, ge=1)
    max_vector_dimension: int = Field(4096, ge=1)
    max_vectors_per_observation: int = Field(100, ge=1)
    max_emotives: int = Field(100, ge=1)
    max_metadata_keys: int = Field(100, ge=1)

    # Optional bearer-token auth: JSON {"<token>": ["<node_id>", ...]}; "*" allows every node.
    # Unset = no auth (the mesh authenticates). Tokens are never logged.
    auth_tokens: dict[str, list[str]] | None = None
    # Optional TLS: PEM files; both set = the port serves TLS only.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    grace_seconds: float = Field(5.0, ge=0)
    health_interval_seconds: float = Field(1.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = False

    # Test hook (never set in production): exit right after a session commit that carries
    # pattern writes, before they reach MongoDB, to prove exactly-once learning.
    fault_crash_after_commit: bool = False
