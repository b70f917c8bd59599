"""The one configuration loader: AP_* variables and ``.env`` → an immutable ``Settings``.

Nothing else in apstorage reads ``os.environ``. Every value is validated here, once; a bad
value raises ``ConfigError`` naming the variable and what it accepts (exit 3), and never
echoes a secret. Secrets (the Postgres password in any of its forms, the S3 secret key) are
wrapped in ``Secret`` as they are read and revealed only at the one call that needs them.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import quote, unquote, urlsplit

from apstorage.errors import ConfigError
from apstorage.model import Location, retention_race
from apstorage.platform_env import PLATFORM_VARIABLES, is_platform_variable
from apstorage.text import has_control, plural, printable

R2_HOST_SUFFIX = ".r2.cloudflarestorage.com"
REDACTED = "********"

# Ranges (README, "Configuration"). 36500 days = 100 years: a longer retention is a typo,
# and dates that far back overflow. 5 TiB is S3's largest object.
MAX_RETENTION_DAYS = 36500
MAX_FILE_SIZE_MB = 5 * 1024 * 1024

# Every variable apstorage reads, in the order `apstorage config` lists them.
VARIABLES = (
    "AP_DB_TYPE",
    "AP_POSTGRES_URL",
    "AP_POSTGRES_HOST",
    "AP_POSTGRES_PORT",
    "AP_POSTGRES_DATABASE",
    "AP_POSTGRES_USERNAME",
    "AP_POSTGRES_PASSWORD",
    "AP_POSTGRES_USE_SSL",
    "AP_POSTGRES_SSL_CA",
    "AP_CONFIG_PATH",
    "AP_FILE_STORAGE_LOCATION",
    "AP_LOCAL_STORAGE_PATH",
    "AP_S3_BUCKET",
    "AP_S3_REGION",
    "AP_S3_ENDPOINT",
    "AP_S3_ACCESS_KEY_ID",
    "AP_S3_SECRET_ACCESS_KEY",
    "AP_S3_USE_SIGNED_URLS",
    "AP_S3_USE_IRSA",
    "AP_S3_DELETE_BATCH_SIZE",
    "AP_S3_TIMEOUT_SECONDS",
    "AP_MAX_FILE_SIZE_MB",
    "AP_EXECUTION_DATA_RETENTION_DAYS",
    "AP_PAUSED_FLOW_TIMEOUT_DAYS",
)
_FALLBACKS = {"AP_S3_REGION": "AWS_REGION", "AP_S3_ENDPOINT": "AWS_ENDPOINT_URL"}
_READ = frozenset(VARIABLES) | frozenset(_FALLBACKS.values())
_MULTILINE = frozenset({"AP_POSTGRES_SSL_CA"})  # a PEM may span lines in .env
_CLOSE_MATCH_CUTOFF = 0.85  # AP_FILE_STORAGE_LOCATON 0.98; AP_REDIS_PASSWORD 0.81


# -- secrets ----------------------------------------------------------------------------

_KNOWN_SECRETS: set[str] = set()
_SCRUB_MIN_LENGTH = 4  # shorter values would blank out ordinary words


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks.

    Every Secret made is remembered so the output layer can blank it (and its
    percent-encoded forms) out of any message a library built from it: ``scrub``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        if len(value) >= _SCRUB_MIN_LENGTH:
            _KNOWN_SECRETS.update({value, quote(value, safe=""), quote(value), repr(value)[1:-1]})

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(********)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def scrub(text: str) -> str:
    """``text`` with every secret read so far (in any encoding we know) replaced."""
    for secret in sorted(_KNOWN_SECRETS, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


# -- the Postgres DSN -------------------------------------------------------------------

# libpq's connection keywords (PostgreSQL 17, "Parameter Key Words"); a URL query may
# carry any of them. Unknown ones are refused here rather than by libpq, whose message
# would quote the URL.
_LIBPQ_KEYWORDS = frozenset(
    """host hostaddr port dbname user password passfile require_auth channel_binding
    connect_timeout client_encoding options application_name fallback_application_name
    keepalives keepalives_idle keepalives_interval keepalives_count tcp_user_timeout
    replication gssencmode sslmode sslnegotiation requiressl sslcompression sslcert sslkey
    sslcertmode sslrootcert sslcrl sslcrldir sslsni requirepeer ssl_min_protocol_version
    ssl_max_protocol_version sslpassword krbsrvname gsslib gssdelegation service
    target_session_attrs load_balance_hosts""".split()
)
_SECRET_KEYWORDS = frozenset({"password", "sslpassword"})
_URL_RE = re.compile(r"^(postgres|postgresql)://", re.IGNORECASE)
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.%a-z]+\]|[^\[\]:/?#@\s]*)(?::(\d*))?$")
_URL_ACCEPTS = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (percent-encode special characters)"


@dataclass(frozen=True)
class PostgresDsn:
    """Where and how to connect to Postgres, parsed once from AP_POSTGRES_URL or the
    AP_POSTGRES_* fields. ``host`` and ``port`` are kept as configured (``/var/run/postgresql``
    is a socket folder; ``h1,h2`` a host list)."""

    host: str | None = None
    port: str | None = None
    dbname: str | None = None
    user: str | None = None
    password: Secret | None = None
    params: tuple[tuple[str, str | Secret], ...] = ()

    def connect_kwargs(self) -> dict[str, str]:
        """Keyword arguments for ``psycopg.connect``: the one place the password is revealed.

        Keywords, not a URL: libpq never re-parses the password, whatever it contains."""
        kwargs: dict[str, str] = {}
        for key, value in (("host", self.host), ("port", self.port), ("dbname", self.dbname),
                           ("user", self.user), ("password", self.password), *self.params):
            if value is not None:
                kwargs[key] = value.reveal() if isinstance(value, Secret) else value
        return kwargs

    @property
    def target(self) -> str:
        """Host and port, or the socket path, as configured, and the database: never a
        password. ``db:5432/ap``; ``/var/run/postgresql/.s.PGSQL.5432 (database ap)``."""
        hosts = (self.host or "").split(",")
        ports = (self.port or "").split(",")
        shown = []
        for i, host in enumerate(hosts):
            port = (ports[i] if i < len(ports) else ports[-1]) or "5432"
            if not host:
                shown.append(f"the default socket .s.PGSQL.{port}")
            elif host.startswith(("/", "@")):
                shown.append(f"{host.rstrip('/')}/.s.PGSQL.{port}")
            elif ":" in host:
                shown.append(f"[{host}]:{port}")
            else:
                shown.append(f"{host}:{port}")
        where = ",".join(shown)
        if any(not h or h.startswith(("/", "@")) for h in hosts):
            return f"{where} (database {self.dbname})" if self.dbname else where
        return f"{where}/{self.dbname or ''}"

    def redacted_url(self) -> str:
        """The DSN as a URL with every secret replaced, for `apstorage config`."""
        userinfo = ""
        if self.user is not None or self.password is not None:
            userinfo = quote(self.user or "", safe="")
            userinfo += f":{REDACTED}" if self.password is not None else ""
            userinfo += "@"
        hosts = (self.host or "").split(",")
        ports = (self.port or "").split(",")
        query: list[tuple[str, str]] = []
        netlocs = []
        for i, host in enumerate(hosts):
            port = ports[i] if i < len(ports) else ports[-1]
            if host.startswith(("/", "@")):
                query.append(("host", host))
                if port:
                    query.append(("port", port))
                continue
            netlocs.append((f"[{host}]" if ":" in host else host) + (f":{port}" if port else ""))
        netloc = ",".join(netlocs)
        for key, value in self.params:
            query.append((key, REDACTED if isinstance(value, Secret) else value))
        tail = "&".join(f"{k}={quote(v, safe='/:,')}" for k, v in query)
        return f"postgresql://{userinfo}{netloc}/{quote(self.dbname or '', safe='')}" + (f"?{tail}" if tail else "")


def parse_postgres_url(value: str, name: str = "AP_POSTGRES_URL") -> PostgresDsn:
    """A ``postgresql://`` URL → PostgresDsn; ConfigError naming ``name``, never echoing it.

    urllib.parse splits at the first ``/``, ``?`` or ``#``, so a password holding one of
    them would spill into the host. Here the userinfo ends at the first ``@`` after which a
    host list and a path without ``@`` follow, so ``u:pa/ss#?@db/ap`` is user ``u``, password
    ``pa/ss#?``. Percent escapes are decoded; a ``%`` that starts no escape stays literal.
    """
    match = _URL_RE.match(value)
    if not match:
        raise ConfigError(f"{name} is not a Postgres URL; accepted: {_URL_ACCEPTS}")
    rest = value[match.end():]
    user = password = None
    at = _userinfo_end(rest)
    if at is not None:
        userinfo, rest = rest[:at], rest[at + 1:]
        raw_user, sep, raw_password = userinfo.partition(":")
        user = unquote(raw_user) or None
        password = Secret(unquote(raw_password)) if sep else None
    hostlist, _, path_query = _split_host(rest)
    path, _, query = path_query.partition("?")
    if "#" in hostlist or "#" in path or "@" in hostlist:
        raise ConfigError(f"{name} is malformed (a '#' or '@' outside the password); accepted: {_URL_ACCEPTS}")
    hosts, ports = [], []
    for item in hostlist.split(",") if hostlist else []:
        host_match = _HOST_RE.match(item)
        if not host_match:
            raise ConfigError(f"{name} has a malformed host; accepted: {_URL_ACCEPTS}")
        host = unquote(host_match.group(1)).strip("[]")
        port = host_match.group(2)
        if port and not 1 <= int(port[:6]) <= 65535:
            raise ConfigError(f"{name} has a port out of range; accepted: 1 to 65535")
        hosts.append(host)
        ports.append(port or "")
    dbname = unquote(path.lstrip("/")) or None
    fields: dict[str, object] = {
        "host": ",".join(hosts) if any(hosts) else None,
        "port": ",".join(ports) if any(ports) else None,
        "dbname": dbname,
        "user": user,
        "password": password,
    }
    params: list[tuple[str, str | Secret]] = []
    for pair in query.split("&") if query else []:
        if not pair:
            continue
        key, _, raw = pair.partition("=")
        key = unquote(key)
        text = unquote(raw)
        if key == "ssl":  # node-postgres spelling, common in platform URLs
            if text.lower() in ("true", "1", "require"):
                params.append(("sslmode", "require"))
            continue
        if key not in _LIBPQ_KEYWORDS:
            raise ConfigError(
                f"{name} has an unknown parameter {_printable_key(key)}; accepted: libpq "
                "connection keywords such as sslmode, connect_timeout, options, host"
            )
        if key in fields:
            fields[key] = Secret(text) if key in _SECRET_KEYWORDS else (text or None)
        else:
            params.append((key, Secret(text) if key in _SECRET_KEYWORDS else text))
    if fields["port"] is not None:
        for port in str(fields["port"]).split(","):
            if port and not (port.isdigit() and 1 <= int(port[:6]) <= 65535):
                raise ConfigError(f"{name} has a port out of range; accepted: 1 to 65535")
    return PostgresDsn(params=tuple(params), **fields)  # type: ignore[arg-type]


def _userinfo_end(rest: str) -> int | None:
    """Index of the ``@`` that ends the userinfo, or None when there is none."""
    for i, ch in enumerate(rest):
        if ch != "@":
            continue
        if re.search(r"[/?#]", rest[:i].partition(":")[0]):
            continue  # a user name never holds these: this '@' is in the path or query
        hostlist, _, path_query = _split_host(rest[i + 1:])
        path = path_query.partition("?")[0]
        hosts_ok = all(_HOST_RE.match(item) for item in hostlist.split(",")) if hostlist else True
        if "@" not in hostlist and "@" not in path and hosts_ok:
            return i
    return None


def _split_host(rest: str) -> tuple[str, str, str]:
    """``host:port,..`` and what follows it (``/db?query``)."""
    match = re.search(r"[/?]", rest)
    if not match:
        return rest, "", ""
    return rest[: match.start()], "", rest[match.start():]


def _printable_key(key: str) -> str:
    """A name or path from the environment, quoted and escaped for a message."""
    return repr(printable(key[:200]))


# -- settings ---------------------------------------------------------------------------


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
    postgres_dsn: PostgresDsn | None = field(default=None, compare=False, repr=False)
    sources: dict = field(default_factory=dict, compare=False, repr=False)
    warnings: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @property
    def sqlite_path(self) -> Path:
        return self.config_path / "apstorage.sqlite"

    @property
    def max_file_size_bytes(self) -> int:
        return self.max_file_size_mb * 1024 * 1024

    @property
    def retention_race(self) -> tuple[str, str] | None:
        """AP_EXECUTION_DATA_RETENTION_DAYS against AP_PAUSED_FLOW_TIMEOUT_DAYS, for where
        settings are reviewed: ``("warning"|"note", line)`` or None (see
        ``model.retention_race``)."""
        return retention_race(self.execution_data_retention_days, self.paused_flow_timeout_days)

    @property
    def postgres(self) -> PostgresDsn:
        """The Postgres connection, from AP_POSTGRES_URL or the AP_POSTGRES_* fields."""
        if self.postgres_dsn is not None:
            return self.postgres_dsn
        return PostgresDsn(
            host=self.postgres_host,
            port=str(self.postgres_port),
            dbname=self.postgres_database,
            user=self.postgres_username,
            password=self.postgres_password,
        )

    @property
    def postgres_target(self) -> str:
        """host:port/database (or the socket path) for messages: never carries a password."""
        return self.postgres.target

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

    def describe(self) -> list[dict]:
        """One row per variable apstorage reads: ``{"name", "value", "source"}``.

        ``value`` is the effective value (defaults filled in), secrets replaced by
        ``********`` and the Postgres URL shown with its password redacted; ``source`` is
        ``environment``, the ``.env`` file's path, or ``default``."""
        values = {
            "AP_DB_TYPE": self.db_type,
            "AP_POSTGRES_URL": self.postgres_dsn.redacted_url() if self.postgres_dsn else None,
            "AP_POSTGRES_HOST": self.postgres_host,
            "AP_POSTGRES_PORT": self.postgres_port,
            "AP_POSTGRES_DATABASE": self.postgres_database,
            "AP_POSTGRES_USERNAME": self.postgres_username,
            "AP_POSTGRES_PASSWORD": REDACTED if self.postgres_password else None,
            "AP_POSTGRES_USE_SSL": self.postgres_use_ssl,
            "AP_POSTGRES_SSL_CA": f"<{plural(len(self.postgres_ssl_ca), 'character')}>" if self.postgres_ssl_ca else None,
            "AP_CONFIG_PATH": str(self.config_path),
            "AP_FILE_STORAGE_LOCATION": self.storage_location.value,
            "AP_LOCAL_STORAGE_PATH": str(self.local_storage_path),
            "AP_S3_BUCKET": self.s3_bucket,
            "AP_S3_REGION": self.s3_region,
            "AP_S3_ENDPOINT": self.s3_endpoint,
            "AP_S3_ACCESS_KEY_ID": self.s3_access_key_id,
            "AP_S3_SECRET_ACCESS_KEY": REDACTED if self.s3_secret_access_key else None,
            "AP_S3_USE_SIGNED_URLS": self.s3_use_signed_urls,
            "AP_S3_USE_IRSA": self.s3_use_irsa,
            "AP_S3_DELETE_BATCH_SIZE": self.s3_delete_batch_size,
            "AP_S3_TIMEOUT_SECONDS": self.s3_timeout_seconds,
            "AP_MAX_FILE_SIZE_MB": self.max_file_size_mb,
            "AP_EXECUTION_DATA_RETENTION_DAYS": self.execution_data_retention_days,
            "AP_PAUSED_FLOW_TIMEOUT_DAYS": self.paused_flow_timeout_days,
        }
        rows = []
        for name in VARIABLES:
            source = self.sources.get(name)
            fallback = _FALLBACKS.get(name)
            if source is None and fallback and fallback in self.sources:
                source = f"{self.sources[fallback]} ({fallback})"
            rows.append({"name": name, "value": values[name], "source": source or "default"})
        return rows


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
        for key, value in read_dotenv(dotenv_file).items():
            if value is not None and (key.startswith("AP_") or key in _READ):
                values[key] = value
                sources[key] = str(dotenv_file)
    for key, value in env.items():
        if key.startswith("AP_") or key in _READ:
            values[key] = value
            sources[key] = "environment"
    return _validate(values, sources)


def read_dotenv(path: Path) -> dict[str, str | None]:
    """A ``.env`` file's variables (python-dotenv's grammar); a line python-dotenv cannot
    parse, or a file that is not UTF-8 text, is a ConfigError naming the file and line
    (never its content, which may hold a secret)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: a NUL byte; accepted: a text file of NAME=value lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text; accepted: a text file of NAME=value lines") from None
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            statement = binding.original.string
            skipped = statement[: len(statement) - len(statement.lstrip())].count("\n")
            raise ConfigError(
                f"{path} line {binding.original.line + skipped}: cannot be parsed; accepted: NAME=value, "
                "NAME='value', NAME=\"value\", export NAME=value, # comments and blank lines"
            )
    return dict(dotenv_values(stream=io.StringIO(text)))


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_BUCKET_RULES = (
    "3 to 63 characters of lowercase letters, digits, '.' and '-', starting and ending "
    "with a letter or digit, no '..', not an IP address"
)


def bucket_problem(name: str) -> str | None:
    """Why ``name`` breaks S3's bucket-naming rules, or None (AWS "Bucket naming rules")."""
    if not _BUCKET_RE.match(name) or name != name.strip():
        return "is not a valid bucket name"
    if ".." in name or ".-" in name or "-." in name:
        return "is not a valid bucket name (adjacent '.' and '-')"
    if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        return "is not a valid bucket name (formatted as an IP address)"
    if name.startswith(("xn--", "sthree-", "amzn-s3-demo-")) or name.endswith(
        ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")
    ):
        return "is not a valid bucket name (a prefix or suffix S3 reserves)"
    return None


def _validate(v: dict[str, str], sources: dict[str, str]) -> Settings:
    errors: list[str] = []
    bad: set[str] = set()

    for name in sorted(v):
        if name not in _READ:
            continue
        at = has_control(v[name], allow="\n\r" if name in _MULTILINE else "")
        if at is not None:
            errors.append(
                f"{name} holds a control character (U+{ord(v[name][at]):04X} at position "
                f"{at + 1}); accepted: printable text on one line"
            )
            bad.add(name)

    def get(name: str) -> str | None:
        if name in bad:
            return None
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
            errors.append(f"{name}={value[:40]!r} is not valid; accepted: {_TRUE_FALSE}")
            return False
        return value.lower() == "true"

    def integer(name: str, default: int, minimum: int, maximum: int) -> int:
        value = get(name)
        if value is None:
            return default
        number = int(value) if re.fullmatch(r"[0-9]{1,18}", value) else None
        if number is None or not minimum <= number <= maximum:
            errors.append(
                f"{name}={value[:40]!r} is not valid; accepted: a whole number from {minimum} to {maximum}"
            )
            return default
        return number

    postgres_url = get("AP_POSTGRES_URL")
    postgres_host = get("AP_POSTGRES_HOST")
    dsn = None
    if postgres_url:
        try:
            dsn = parse_postgres_url(postgres_url)
        except ConfigError as exc:
            errors.append(exc.message)
    default_db = "POSTGRES" if (postgres_url or postgres_host or "AP_POSTGRES_URL" in bad) else "SQLITE3"
    if (get("AP_DB_TYPE") or "").upper() == "PGLITE":
        # The platform's own embedded database (PGlite, Postgres compiled to WebAssembly)
        # lives inside the platform's process: no other program can open it.
        errors.append(
            "AP_DB_TYPE=PGLITE: the platform's embedded PGlite database cannot be opened by another "
            "program; apstorage reads a Postgres catalog (AP_DB_TYPE=POSTGRES with AP_POSTGRES_URL) "
            "or its own embedded default (AP_DB_TYPE unset)"
        )
        db_type = default_db
    else:
        db_type = choice("AP_DB_TYPE", ("POSTGRES", "SQLITE3"), default_db) or default_db

    config_path = Path(get("AP_CONFIG_PATH") or "~/.activepieces").expanduser()
    location = choice("AP_FILE_STORAGE_LOCATION", ("DB", "S3", "LOCAL"), "DB") or "DB"
    local_path = Path(get("AP_LOCAL_STORAGE_PATH") or config_path / "cache").expanduser()
    for name, folder in (("AP_CONFIG_PATH", config_path), ("AP_LOCAL_STORAGE_PATH", local_path)):
        if name not in bad and _under_a_file(folder):
            errors.append(f"{name}={_printable_key(str(folder))} is, or is under, a file; accepted: a folder path")

    endpoint_var = "AP_S3_ENDPOINT" if get("AP_S3_ENDPOINT") else "AWS_ENDPOINT_URL"
    endpoint = get(endpoint_var)
    if endpoint:
        problem = _endpoint_problem(endpoint)
        if problem:
            errors.append(f"{endpoint_var} {problem}")
            endpoint = None
    is_r2 = bool(endpoint and (urlsplit(endpoint).hostname or "").endswith(R2_HOST_SUFFIX))

    bucket = get("AP_S3_BUCKET")
    if bucket and (problem := bucket_problem(bucket)):
        errors.append(f"AP_S3_BUCKET={bucket[:70]!r} {problem}; accepted: {_BUCKET_RULES}")

    region_var = "AP_S3_REGION" if get("AP_S3_REGION") else "AWS_REGION"
    region = get(region_var)
    if region and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", region):
        errors.append(
            f"{region_var}={region[:70]!r} is not valid; accepted: a region name such as "
            "us-east-1 (letters, digits, '-' and '_')"
        )
        region = None

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
        s3_bucket=bucket,
        s3_region=region,
        s3_endpoint=endpoint,
        s3_access_key_id=get("AP_S3_ACCESS_KEY_ID"),
        s3_secret_access_key=Secret(secret) if secret else None,
        s3_use_signed_urls=boolean("AP_S3_USE_SIGNED_URLS"),
        s3_use_irsa=boolean("AP_S3_USE_IRSA"),
        s3_delete_batch_size=integer("AP_S3_DELETE_BATCH_SIZE", 100 if is_r2 else 1000, 1, 1000),
        max_file_size_mb=integer("AP_MAX_FILE_SIZE_MB", 25, 1, MAX_FILE_SIZE_MB),
        execution_data_retention_days=integer(
            "AP_EXECUTION_DATA_RETENTION_DAYS", 30, 1, MAX_RETENTION_DAYS
        ),
        s3_timeout_seconds=integer("AP_S3_TIMEOUT_SECONDS", 60, 1, 3600),
        paused_flow_timeout_days=integer("AP_PAUSED_FLOW_TIMEOUT_DAYS", 30, 1, MAX_RETENTION_DAYS),
        postgres_dsn=dsn,
        sources=sources,
        warnings=tuple(_near_misses(v)),
    )
    if settings.db_type == "POSTGRES" and not (postgres_url or postgres_host) and "AP_POSTGRES_URL" not in bad:
        errors.append(
            "AP_DB_TYPE is POSTGRES but neither AP_POSTGRES_URL nor AP_POSTGRES_HOST is set"
        )
    if errors:
        raise ConfigError("; ".join(errors))
    return settings


def _under_a_file(folder: Path) -> bool:
    """True when ``folder`` or its nearest existing parent is not a folder (it could never
    be created). A stat or two, no write."""
    try:
        for path in (folder, *folder.parents):
            if path.exists():
                return not path.is_dir()
    except (OSError, ValueError):  # a name too long, an embedded NUL
        return True
    return False


def _endpoint_problem(endpoint: str) -> str | None:
    """Why an S3 endpoint URL is refused (never echoing credentials), or None."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return "is not a valid URL; accepted: http(s)://HOST[:PORT]"
    if "@" in parts.netloc:
        return (
            "carries credentials (user:password@); accepted: http(s)://HOST[:PORT] — give the "
            "keys in AP_S3_ACCESS_KEY_ID and AP_S3_SECRET_ACCESS_KEY"
        )
    if parts.scheme not in ("http", "https"):
        return f"={endpoint[:70]!r} is not valid; accepted: an http(s):// URL"
    if not parts.hostname or " " in parts.netloc:
        return f"={endpoint[:70]!r} has no host; accepted: http(s)://HOST[:PORT]"
    return None


# Families whose every name is apstorage's: the platform's own S3 variables (S3_* in its
# system-props.ts) are exactly the AP_S3_* ones apstorage reads, so any other AP_S3_* name is a
# misspelling, however far from ours (AP_S3_URL, AP_S3_SECRET_KEY), and is always warned about.
_OWN_FAMILIES: tuple[str, ...] = ("AP_S3_",)
# After the prefix: KEY_ID → ACCESS_KEY_ID 0.63, BUCKET_NAME → BUCKET 0.71; SESSION_TOKEN → REGION 0.42
_OWN_FAMILY_CUTOFF = 0.6

# Words of a name that mean one of ours under another name: AP_POSTGRES_NAME and
# AP_POSTGRES_DB are AP_POSTGRES_DATABASE, not the nearest by letters (AP_POSTGRES_USERNAME).
# Used only when the word swapped gives a name apstorage reads.
_SYNONYMS = {"NAME": "DATABASE", "DB": "DATABASE", "DBNAME": "DATABASE", "URL": "ENDPOINT",
             "DIR": "PATH", "DIRECTORY": "PATH", "FOLDER": "PATH", "ROOT": "PATH"}


def _near_misses(v: Mapping[str, str]) -> list[str]:
    """A warning for each AP_* variable that is neither apstorage's nor the platform's
    (``apstorage.platform_env``: listed, or in one of its families) and whose closest known
    name is one apstorage reads: a likely typo (``AP_S3_BUKET``). A name closest to one of
    the platform's is the platform's business, not ours: silent. A name in one of
    apstorage's own families (``AP_S3_``) is always a typo: the closest of that family is
    suggested, or, with none close, the family's names are listed."""
    out = []
    known: list[str] | None = None
    for name in sorted(v):
        if not name.startswith("AP_") or name in _READ or is_platform_variable(name):
            continue
        import difflib

        if known is None:
            known = [*VARIABLES, *sorted(PLATFORM_VARIABLES)]
        match = _likely_meant(name, known)
        family = next((f for f in _OWN_FAMILIES if name.startswith(f)), None)
        if family is not None and match not in _READ:
            # Compared after the family's prefix, which every candidate shares.
            members = [k for k in VARIABLES if k.startswith(family)]
            tails = [k[len(family):] for k in members]
            close = difflib.get_close_matches(name[len(family):].upper(), tails, n=1, cutoff=_OWN_FAMILY_CUTOFF)
            match = family + close[0] if close else None
            if match is None:
                out.append(f"{_printable_key(name)[1:-1]} is not a variable apstorage reads; "
                           f"the {family}* variables it reads are {', '.join(members)}")
                continue
        if match in _READ:
            out.append(f"{_printable_key(name)[1:-1]} is not a variable apstorage reads; did you mean {match}?")
    return out


def _likely_meant(name: str, known: list[str]) -> str | None:
    """The known variable ``name`` most likely means. A name one of ours extends
    (AP_POSTGRES_USER → AP_POSTGRES_USERNAME), that one of ours ends with (AP_DATA_RETENTION_DAYS
    → AP_EXECUTION_DATA_RETENTION_DAYS), that is one of ours in another case (AP_S3_bucket),
    or that is one of ours with a word said another way (AP_POSTGRES_NAME →
    AP_POSTGRES_DATABASE, AP_LOCAL_STORAGE_DIR → AP_LOCAL_STORAGE_PATH, ``_SYNONYMS``), is the likelier
    intent than the nearest by letters (AP_POSTGRES_URL, AP_POSTGRES_USERNAME); else
    difflib's closest."""
    import difflib

    name = name.upper()  # AP_S3_bucket is AP_S3_BUCKET mistyped (the environment is case-sensitive)
    if name in VARIABLES:
        return name
    longer = sorted((k for k in VARIABLES if k.startswith(name)), key=len)
    if longer:
        return longer[0]
    # One of ours with its first words left out: AP_DATA_RETENTION_DAYS → AP_EXECUTION_DATA_RETENTION_DAYS
    tail = name[len("AP_"):]
    shorter = sorted((k for k in VARIABLES if k.endswith("_" + tail) and tail.count("_") >= 1), key=len)
    if shorter:
        return shorter[0]
    words = name.split("_")
    for i, word in enumerate(words):
        swapped = "_".join([*words[:i], _SYNONYMS.get(word, word), *words[i + 1:]])
        if swapped != name and swapped in VARIABLES:
            return swapped
    match = difflib.get_close_matches(name, known, n=1, cutoff=_CLOSE_MATCH_CUTOFF)
    return match[0] if match else None
