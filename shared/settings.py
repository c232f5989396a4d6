"""Every DOWNLINK_* variable, read once into one frozen Struct."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec

from shared.errors import ConfigError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]

GIB = 1024**3


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Effective configuration of a Downlink process; field names carry their units."""

    redis_url: str = "redis://localhost:6379/0"
    database_url: str = "postgresql://postgres@localhost:5432/downlink"
    storage_url: str = "file://./data"
    http_host: str = "127.0.0.1"
    http_port: int = msgspec.field(default=8000)
    download_concurrency: int = 16
    per_host_concurrency: int = 4
    max_tries: int = 3
    retry_backoff_s: float = 5.0
    claim_idle_s: float = 30.0
    max_file_size_bytes: int = 50 * GIB
    max_export_size_bytes: int = 100 * GIB
    max_redirects: int = 10
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    file_deadline_s: float = 6 * 3600.0
    job_timeout_s: float = 24 * 3600.0
    reconcile_interval_s: float = 10.0
    allow_private_networks: bool = False
    allowed_networks: tuple[str, ...] = ()
    retention_days: int = 7
    process_workers: int = msgspec.field(default_factory=lambda: os.cpu_count() or 1)
    shutdown_grace_s: float = 30.0
    metrics_port: int | None = None
    log_level: LogLevel = "INFO"
    progress_interval_s: float = 1.0
    segment_threshold_bytes: int = 64 * 1024**2
    segments: int = 4
    host_slot_lease_s: float = 5.0

    def __post_init__(self) -> None:
        _check_positive(self, "http_port", "download_concurrency", "per_host_concurrency")
        _check_positive(self, "max_tries", "claim_idle_s", "max_file_size_bytes")
        _check_positive(self, "max_export_size_bytes")
        _check_positive(self, "process_workers", "connect_timeout_s", "read_timeout_s")
        _check_positive(self, "file_deadline_s", "job_timeout_s", "reconcile_interval_s")
        _check_positive(self, "segment_threshold_bytes", "segments", "host_slot_lease_s")
        if self.retry_backoff_s < 0:
            raise ConfigError(f"{_env_name('retry_backoff_s')} must be >= 0")
        for network in self.allowed_networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ConfigError(
                    f"{_env_name('allowed_networks')}: {network!r} is not an address or CIDR"
                ) from None
        for name, schemes in (
            ("redis_url", {"redis", "rediss", "unix"}),
            ("database_url", {"postgresql", "postgres"}),
            ("storage_url", {"file", "s3"}),
        ):
            scheme = urlsplit(getattr(self, name)).scheme
            if scheme not in schemes:
                raise ConfigError(
                    f"{_env_name(name)} must use one of {sorted(schemes)}, got {scheme or 'none'!r}"
                )

    @property
    def retention_s(self) -> int:
        """How long cancel markers and completion records live in Redis."""
        return self.retention_days * 86_400

    @property
    def lease_renew_s(self) -> float:
        """How often in-flight claims are renewed: well inside the idle threshold."""
        return min(5.0, self.claim_idle_s / 3)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from DOWNLINK_* variables; errors name the offending variable."""
        environ = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for field in msgspec.structs.fields(cls):
            value = environ.get(_env_name(field.name))
            if value is not None and value.strip() != "":
                raw[field.name] = value.strip()
        if "allowed_networks" in raw:
            raw["allowed_networks"] = [
                n.strip() for n in raw["allowed_networks"].split(",") if n.strip()
            ]
        if "log_level" in raw:
            raw["log_level"] = raw["log_level"].upper()
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_the_variable(str(exc))) from None

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (command-line flags over the environment)."""
        merged = {f: getattr(self, f) for f in self.__struct_fields__} | changes
        try:
            return msgspec.convert(merged, Settings, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_the_variable(str(exc))) from None

    def describe(self) -> dict[str, Any]:
        """Effective values with passwords masked, for the start-up log."""
        return {
            _env_name(name): _mask(value) if name.endswith("_url") else value
            for name in self.__struct_fields__
            for value in (getattr(self, name),)
        }


def _env_name(field: str) -> str:
    return "DOWNLINK_" + field.upper().removesuffix("_S").removesuffix("_BYTES")


def _check_positive(settings: Settings, *names: str) -> None:
    for name in names:
        if getattr(settings, name) <= 0:
            raise ConfigError(f"{_env_name(name)} must be > 0, got {getattr(settings, name)}")


def _name_the_variable(message: str) -> str:
    # msgspec says "... - at `$.field_name`"; users know the variable, not the field.
    head, sep, path = message.rpartition(" - at `$.")
    if not sep:
        return message
    return f"{_env_name(path.rstrip('`'))}: {head}"


def _mask(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))
