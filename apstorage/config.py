"""The one configuration loader: AP_* variables and ``.env`` → an immutable ``Settings``.

Nothing else in apstorage reads ``os.environ``. Every value is validated here, once; a bad
value raises ``ConfigError`` naming the variable and what it accepts (exit 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

from apstorage.errors import ConfigError
from apstorage.model import Location, retention_race_warning

R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"
REDACTED = "********"


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(********)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Settings:
    db_type: str  # "POSTGRES" | "SQLITE3"
    config_path: Path
    postgres_url: Secret | None = None
    postgres_host: str | None = None
    postgres_port: int = 5432
    postgres_database: str | None = None
    postgres_username: str | None = None
    postgres_password: Secret | None = None
    postgres_use_ssl: bool = False
    postgres_ssl_ca: str | None = None
    storage_location: Location = Location.DB
    local_storage_path: Path = Path(".")
    s3_bucket: str | None = None
    s3_region: str | None = None
    s3_endpoint: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: Secret | None = None
    s3_use_signed_urls: bool = False
    s3_use_irsa: bool = False
    s3_delete_batch_size: int = 1000
    s3_timeout_seconds: int = 60
    max_file_size_mb: int = 25
    execution_data_retention_days: int = 30
    paused_flow_timeout_days: int = 30
    sources: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def sqlite_path(self) -> Path:
        return self.config_path / "apstorage.sqlite"

    @property
    def max_file_size_bytes(self) -> int:
        return self.max_file_size_mb * 1024 * 1024

    @property
    def retention_race_warning(self) -> str | None:
        """One line when AP_EXECUTION_DATA_RETENTION_DAYS is not greater than
        AP_PAUSED_FLOW_TIMEOUT_DAYS (see ``model.retention_race_warning``), else None."""
        return retention_race_warning(self.execution_data_retention_days, self.paused_flow_timeout_days)

    @property
    def postgres_target(self) -> str:
        """host:port/database for messages: never carries a password."""
        if self.postgres_url is not None:
            parts = urlsplit(self.postgres_url.reveal())
            host = parts.hostname or "localhost"
            port = parts.port or 5432
            return f"{host}:{port}{parts.path or ''}"
        return f"{self.postgres_host}:{self.postgres_port}/{self.postgres_database or ''}"

    def require_postgres(self) -> None:
        if self.postgres_url is None and not self.postgres_host:
            raise ConfigError(
                "AP_DB_TYPE is POSTGRES but neither AP_POSTGRES_URL nor AP_POSTGRES_HOST is set"
            )

    def require_s3(self) -> None:
        """S3 settings are checked when S3 is used, not on every command."""
        if not self.s3_bucket:
            raise ConfigError("AP_S3_BUCKET is not set; it names the bucket S3 files live in")
        if not self.s3_use_irsa:
            missing = [
                name
                for name, value in (
                    ("AP_S3_ACCESS_KEY_ID", self.s3_access_key_id),
                    ("AP_S3_SECRET_ACCESS_KEY", self.s3_secret_access_key),
                )
                if not value
            ]
            if missing:
                raise ConfigError(
                    f"{' and '.join(missing)} not set; set both, or AP_S3_USE_IRSA=true "
                    "to use the AWS default credential chain"
                )

    def redacted(self) -> dict:
        """The effective settings as plain data, secrets replaced, for `apstorage config`."""
        out: dict = {}
        for f in fields(self):
            if f.name == "sources":
                continue
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = _redact_url(value.reveal()) if f.name == "postgres_url" else REDACTED
            elif isinstance(value, Location):
                value = value.value
            elif isinstance(value, Path):
                value = str(value)
            elif f.name == "postgres_ssl_ca" and value:
                value = f"<{len(value)} characters>"
            out[f.name] = value
        return out


def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = f"{parts.username}:{REDACTED}" if parts.username else REDACTED
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{netloc[-1]}"))


_TRUE_FALSE = "true or false"


def load_settings(
    environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = None
) -> Settings:
    """Read the environment, then ``.env`` (the real environment wins), and validate."""
    env = dict(os.environ if environ is None else environ)
    dotenv_file = Path(dotenv_path) if dotenv_path is not None else Path.cwd() / ".env"
    values: dict[str, str] = {}
    sources: dict[str, str] = {}
    if dotenv_file.is_file():
        from dotenv import dotenv_values

        for key, value in dotenv_values(dotenv_file).items():
            if value is not None and (key.startswith("AP_") or key.startswith("AWS_")):
                values[key] = value
                sources[key] = str(dotenv_file)
    for key, value in env.items():
        if key.startswith("AP_") or key in ("AWS_REGION", "AWS_ENDPOINT_URL"):
            values[key] = value
            sources[key] = "environment"
    return _validate(values, sources)


def _validate(v: dict[str, str], sources: dict[str, str]) -> Settings:
    errors: list[str] = []

    def get(name: str) -> str | None:
        value = v.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def choice(name: str, accepted: tuple[str, ...], default: str | None) -> str | None:
        value = get(name)
        if value is None:
            return default
        if value.upper() not in accepted:
            errors.append(f"{name}={value!r} is not valid; accepted: {', '.join(accepted)}")
            return default
        return value.upper()

    def boolean(name: str) -> bool:
        value = get(name)
        if value is None:
            return False
        if value.lower() not in ("true", "false"):
            errors.append(f"{name}={value!r} is not valid; accepted: {_TRUE_FALSE}")
            return False
        return value.lower() == "true"

    def integer(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
        value = get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            number = None
        bounds = f"a whole number >= {minimum}" + (f" and <= {maximum}" if maximum else "")
        if number is None or number < minimum or (maximum is not None and number > maximum):
            errors.append(f"{name}={value!r} is not valid; accepted: {bounds}")
            return default
        return number

    postgres_url = get("AP_POSTGRES_URL")
    postgres_host = get("AP_POSTGRES_HOST")
    default_db = "POSTGRES" if (postgres_url or postgres_host) else "SQLITE3"
    db_type = choice("AP_DB_TYPE", ("POSTGRES", "SQLITE3"), default_db) or default_db
    if postgres_url and urlsplit(postgres_url).scheme not in ("postgres", "postgresql"):
        errors.append("AP_POSTGRES_URL is not valid; accepted: a postgresql://... URL")

    config_path = Path(get("AP_CONFIG_PATH") or "~/.activepieces").expanduser()
    location = choice("AP_FILE_STORAGE_LOCATION", ("DB", "S3", "LOCAL"), "DB") or "DB"
    local_path = Path(get("AP_LOCAL_STORAGE_PATH") or config_path / "cache").expanduser()

    endpoint = get("AP_S3_ENDPOINT") or get("AWS_ENDPOINT_URL")
    if endpoint and urlsplit(endpoint).scheme not in ("http", "https"):
        errors.append(f"AP_S3_ENDPOINT={endpoint!r} is not valid; accepted: an http(s):// URL")
    is_r2 = bool(endpoint and (urlsplit(endpoint).hostname or "").endswith(R2_HOST_SUFFIX))

    ssl_ca = get("AP_POSTGRES_SSL_CA")
    secret = get("AP_S3_SECRET_ACCESS_KEY")
    password = get("AP_POSTGRES_PASSWORD")

    settings = Settings(
        db_type=db_type,
        config_path=config_path,
        postgres_url=Secret(postgres_url) if postgres_url else None,
        postgres_host=postgres_host,
        postgres_port=integer("AP_POSTGRES_PORT", 5432, 1, 65535),
        postgres_database=get("AP_POSTGRES_DATABASE"),
        postgres_username=get("AP_POSTGRES_USERNAME"),
        postgres_password=Secret(password) if password else None,
        postgres_use_ssl=boolean("AP_POSTGRES_USE_SSL"),
        postgres_ssl_ca=ssl_ca.replace("\\n", "\n") if ssl_ca else None,
        storage_location=Location(location),
        local_storage_path=local_path,
        s3_bucket=get("AP_S3_BUCKET"),
        s3_region=get("AP_S3_REGION") or get("AWS_REGION"),
        s3_endpoint=endpoint,
        s3_access_key_id=get("AP_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=Secret(secret) if secret else None,
        s3_use_signed_urls=boolean("AP_S3_USE_SIGNED_URLS"),
        s3_use_irsa=boolean("AP_S3_USE_IRSA"),
        s3_delete_batch_size=integer(
            "AP_S3_DELETE_BATCH_SIZE", 100 if is_r2 else 1000, 1, 1000
        ),
        s3_timeout_seconds=integer("AP_S3_TIMEOUT_SECONDS", 60, 1, 3600),
        max_file_size_mb=integer("AP_MAX_FILE_SIZE_MB", 25, 1),
        execution_data_retention_days=integer("AP_EXECUTION_DATA_RETENTION_DAYS", 30, 1),
        paused_flow_timeout_days=integer("AP_PAUSED_FLOW_TIMEOUT_DAYS", 30, 1),
        sources=sources,
    )
    if settings.db_type == "POSTGRES" and not (postgres_url or postgres_host):
        errors.append(
            "AP_DB_TYPE is POSTGRES but neither AP_POSTGRES_URL nor AP_POSTGRES_HOST is set"
        )
    if errors:
        raise ConfigError("; ".join(errors))
    return settings
