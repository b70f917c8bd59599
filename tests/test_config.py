"""The config loader: defaults, validation naming the variable, .env, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from apstorage.config import VARIABLES, load_settings, scrub
from apstorage.errors import ConfigError
from apstorage.model import Location
from apstorage.platform_env import PLATFORM_FAMILIES, PLATFORM_VARIABLES, is_platform_variable


def load(env: dict[str, str], dotenv: Path | None = None):
    return load_settings(environ=env, dotenv_path=dotenv or "/nonexistent/.env")


def test_defaults_are_the_embedded_sqlite_catalog_and_db_location(tmp_path: Path) -> None:
    s = load({"AP_CONFIG_PATH": str(tmp_path)})
    assert s.db_type == "SQLITE3"
    assert s.sqlite_path == tmp_path / "apstorage.sqlite"
    assert s.storage_location is Location.DB
    assert s.local_storage_path == tmp_path / "cache"
    assert (s.max_file_size_mb, s.execution_data_retention_days, s.s3_delete_batch_size) == (25, 30, 1000)
    assert s.s3_use_irsa is False and s.s3_use_signed_urls is False


def test_config_path_defaults_to_home_activepieces() -> None:
    assert load({}).config_path == Path("~/.activepieces").expanduser()


@pytest.mark.parametrize("var", ["AP_POSTGRES_URL", "AP_POSTGRES_HOST"])
def test_postgres_is_chosen_when_a_postgres_variable_is_set(var: str) -> None:
    value = "postgresql://u@h/db" if var == "AP_POSTGRES_URL" else "db.internal"
    assert load({var: value}).db_type == "POSTGRES"


def test_explicit_db_type_wins() -> None:
    assert load({"AP_DB_TYPE": "sqlite3", "AP_POSTGRES_HOST": "h"}).db_type == "SQLITE3"


@pytest.mark.parametrize(
    "var, value, accepted",
    [
        ("AP_DB_TYPE", "MYSQL", "POSTGRES, SQLITE3"),
        ("AP_FILE_STORAGE_LOCATION", "GCS", "DB, S3, LOCAL"),
        ("AP_S3_USE_IRSA", "yes", "true or false"),
        ("AP_S3_USE_SIGNED_URLS", "1", "true or false"),
        ("AP_POSTGRES_USE_SSL", "on", "true or false"),
        ("AP_MAX_FILE_SIZE_MB", "big", "whole number"),
        ("AP_MAX_FILE_SIZE_MB", "0", "whole number"),
        ("AP_EXECUTION_DATA_RETENTION_DAYS", "-3", "whole number"),
        ("AP_S3_DELETE_BATCH_SIZE", "5000", "from 1 to 1000"),
        ("AP_POSTGRES_PORT", "99999", "from 1 to 65535"),
        ("AP_S3_ENDPOINT", "localhost:9000", "http(s)://"),
    ],
)
def test_a_bad_value_names_the_variable_and_what_it_accepts(var: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({var: value})
    assert info.value.exit_code == 3
    assert var in str(info.value)
    assert accepted in str(info.value)


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        load({"AP_S3_USE_IRSA": "maybe", "AP_MAX_FILE_SIZE_MB": "x"})
    assert "AP_S3_USE_IRSA" in str(info.value) and "AP_MAX_FILE_SIZE_MB" in str(info.value)


def test_postgres_type_without_a_server_is_refused() -> None:
    with pytest.raises(ConfigError, match="AP_POSTGRES_URL"):
        load({"AP_DB_TYPE": "POSTGRES"})


@pytest.mark.parametrize("value", ["TRUE", "True", "true", "FALSE", "false"])
def test_booleans_accept_any_case(value: str) -> None:
    assert load({"AP_S3_USE_IRSA": value}).s3_use_irsa is (value.lower() == "true")


def test_location_accepts_any_case() -> None:
    assert load({"AP_FILE_STORAGE_LOCATION": "s3"}).storage_location is Location.S3


def test_region_and_endpoint_fall_back_to_aws_variables() -> None:
    s = load({"AWS_REGION": "eu-west-3", "AWS_ENDPOINT_URL": "http://127.0.0.1:9000"})
    assert (s.s3_region, s.s3_endpoint) == ("eu-west-3", "http://127.0.0.1:9000")
    s = load({"AWS_REGION": "eu-west-3", "AP_S3_REGION": "us-east-2"})
    assert s.s3_region == "us-east-2"


def test_r2_endpoints_default_to_batches_of_100() -> None:
    s = load({"AP_S3_ENDPOINT": "https://abc123.r2.cloudflarestorage.com"})
    assert s.s3_delete_batch_size == 100
    s = load({"AP_S3_ENDPOINT": "https://abc123.r2.cloudflarestorage.com", "AP_S3_DELETE_BATCH_SIZE": "50"})
    assert s.s3_delete_batch_size == 50


def test_ssl_ca_literal_newlines_are_unescaped() -> None:
    s = load({"AP_POSTGRES_SSL_CA": "-----BEGIN-----\\nabc\\n-----END-----"})
    assert s.postgres_ssl_ca == "-----BEGIN-----\nabc\n-----END-----"


def test_dotenv_is_read_and_the_real_environment_wins(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("AP_FILE_STORAGE_LOCATION=LOCAL\nAP_MAX_FILE_SIZE_MB=7\nAP_S3_BUCKET=from-file\n")
    s = load({"AP_S3_BUCKET": "from-env"}, dotenv)
    assert s.storage_location is Location.LOCAL
    assert s.max_file_size_mb == 7
    assert s.s3_bucket == "from-env"
    assert s.sources["AP_S3_BUCKET"] == "environment"
    assert s.sources["AP_MAX_FILE_SIZE_MB"] == str(dotenv)


def test_dotenv_in_the_working_directory_is_found(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / ".env").write_text("AP_EXECUTION_DATA_RETENTION_DAYS=9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).execution_data_retention_days == 9


def test_s3_requirements_are_checked_when_s3_is_used() -> None:
    s = load({})
    with pytest.raises(ConfigError, match="AP_S3_BUCKET"):
        s.require_s3()
    with pytest.raises(ConfigError, match="AP_S3_SECRET_ACCESS_KEY"):
        load({"AP_S3_BUCKET": "bkt", "AP_S3_ACCESS_KEY_ID": "k"}).require_s3()
    load({"AP_S3_BUCKET": "bkt", "AP_S3_USE_IRSA": "true"}).require_s3()  # default chain: fine


PASSWORDS = ["pg#secret/123", "pg%zzsecret", "p@ss:w/rd?#x", "plain-secret-123"]


@pytest.mark.parametrize("password", PASSWORDS)
def test_a_url_password_with_any_characters_is_parsed_and_never_shown(password: str) -> None:
    s = load({"AP_POSTGRES_URL": f"postgresql://app:{password}@db.internal:5433/ap?sslmode=require",
              "AP_S3_SECRET_ACCESS_KEY": "s3-secret-456"})
    kwargs = s.postgres.connect_kwargs()
    assert kwargs["password"] == password.replace("%zz", "%zz")  # a '%' that starts no escape stays
    assert (kwargs["host"], kwargs["port"], kwargs["dbname"], kwargs["user"]) == ("db.internal", "5433", "ap", "app")
    assert kwargs["sslmode"] == "require"
    text = repr(s) + str(s.describe()) + s.postgres_target
    for secret in (password, "s3-secret-456"):
        assert secret not in text
    rows = {r["name"]: r for r in s.describe()}
    assert rows["AP_POSTGRES_URL"]["value"] == "postgresql://app:********@db.internal:5433/ap?sslmode=require"
    assert rows["AP_S3_SECRET_ACCESS_KEY"] == {"name": "AP_S3_SECRET_ACCESS_KEY", "value": "********", "source": "environment"}
    assert s.postgres_target == "db.internal:5433/ap"


def test_percent_encoded_and_query_passwords_are_decoded_and_redacted() -> None:
    s = load({"AP_POSTGRES_URL": "postgresql://u%40x:p%23w@db/ap?password=query-secret&application_name=a@b"})
    kwargs = s.postgres.connect_kwargs()
    assert (kwargs["user"], kwargs["password"], kwargs["application_name"]) == ("u@x", "query-secret", "a@b")
    shown = {r["name"]: r["value"] for r in s.describe()}["AP_POSTGRES_URL"]
    assert "query-secret" not in shown and "p#w" not in shown and "p%23w" not in shown


def test_secrets_never_show_in_repr_or_config_rows() -> None:
    s = load(
        {
            "AP_POSTGRES_URL": "postgresql://app:pg-secret-123@db:5432/ap",
            "AP_S3_SECRET_ACCESS_KEY": "s3-secret-456",
            "AP_POSTGRES_PASSWORD": "pw-789",
        }
    )
    text = repr(s) + str(s.describe())
    for secret in ("pg-secret-123", "s3-secret-456", "pw-789"):
        assert secret not in text
    assert s.postgres_target == "db:5432/ap"


def test_config_rows_are_the_ap_names_with_value_and_source(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("AP_S3_BUCKET=from-file\n")
    s = load({"AP_MAX_FILE_SIZE_MB": "7", "AWS_REGION": "eu-west-3"}, dotenv)
    rows = {r["name"]: (r["value"], r["source"]) for r in s.describe()}
    assert list(rows) == list(VARIABLES)
    assert rows["AP_MAX_FILE_SIZE_MB"] == (7, "environment")
    assert rows["AP_S3_BUCKET"] == ("from-file", str(dotenv))
    assert rows["AP_S3_REGION"] == ("eu-west-3", "environment (AWS_REGION)")
    assert rows["AP_EXECUTION_DATA_RETENTION_DAYS"] == (30, "default")


@pytest.mark.parametrize(
    "url, target",
    [
        ("postgresql://u@/ap?host=/var/run/postgresql", "/var/run/postgresql/.s.PGSQL.5432 (database ap)"),
        ("postgresql://u@%2Ftmp%2Fpg:5544/ap", "/tmp/pg/.s.PGSQL.5544 (database ap)"),
        ("postgresql://u:p@[::1]:6000/ap", "[::1]:6000/ap"),
        ("postgresql://u:p@h1:5432,h2:5433/ap", "h1:5432,h2:5433/ap"),
    ],
)
def test_the_target_names_the_socket_or_host_and_port_as_configured(url: str, target: str) -> None:
    assert load({"AP_POSTGRES_URL": url}).postgres_target == target


@pytest.mark.parametrize(
    "url, words",
    [
        ("mysql://u:hidden-pw@db/ap", "not a Postgres URL"),
        ("postgresql://u:hidden-pw@db:99999/ap", "port out of range"),
        ("postgresql://u:hidden-pw@db/ap?nosuchoption=1", "unknown parameter 'nosuchoption'"),
        ("postgresql://u:hidden-pw@db/a#p", "malformed"),
        ("host=db password=hidden-pw", "not a Postgres URL"),
    ],
)
def test_a_malformed_url_is_refused_naming_the_variable_never_the_password(url: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"AP_POSTGRES_URL": url})
    assert "AP_POSTGRES_URL" in info.value.message and words in info.value.message
    assert "hidden-pw" not in info.value.message


@pytest.mark.parametrize("var", ["AP_S3_BUCKET", "AP_POSTGRES_URL", "AP_S3_SECRET_ACCESS_KEY", "AP_CONFIG_PATH",
                                 "AP_FILE_STORAGE_LOCATION", "AWS_REGION"])
@pytest.mark.parametrize("char", ["\n", "\r", "\x1b", "\x7f", "\x85", "\t"])
def test_a_control_character_in_any_value_is_refused_without_echoing_it(var: str, char: str) -> None:
    value = f"secret-value{char}x" if var != "AP_POSTGRES_URL" else f"postgresql://u:secret-value{char}@db/ap"
    with pytest.raises(ConfigError) as info:
        load({var: value})
    assert var in info.value.message and "control character" in info.value.message
    assert "secret-value" not in info.value.message


def test_the_ssl_ca_may_span_lines() -> None:
    assert load({"AP_POSTGRES_SSL_CA": "-----BEGIN-----\nabc\n-----END-----"}).postgres_ssl_ca.count("\n") == 2


@pytest.mark.parametrize("name", ["ab", "Bucket", "my_bucket", "-bucket", "bucket-", "a..b", "192.168.1.1",
                                  "xn--abc", "x" * 64, "my-bucket-s3alias", "a.-b"])
def test_bucket_names_follow_s3_rules(name: str) -> None:
    with pytest.raises(ConfigError, match="AP_S3_BUCKET"):
        load({"AP_S3_BUCKET": name})


@pytest.mark.parametrize("name", ["abc", "my-bucket", "my.bucket.1", "0" * 63])
def test_valid_bucket_names_pass(name: str) -> None:
    assert load({"AP_S3_BUCKET": name}).s3_bucket == name


@pytest.mark.parametrize("endpoint", ["http://AKIA:endpoint-secret@127.0.0.1:9000", "https://:endpoint-secret@s3.example"])
def test_credentials_in_the_endpoint_are_refused_without_echoing_them(endpoint: str) -> None:
    with pytest.raises(ConfigError) as info:
        load({"AP_S3_ENDPOINT": endpoint})
    assert "AP_S3_ENDPOINT" in info.value.message and "endpoint-secret" not in info.value.message


@pytest.mark.parametrize(
    "var, value",
    [("AP_EXECUTION_DATA_RETENTION_DAYS", "99999999"), ("AP_EXECUTION_DATA_RETENTION_DAYS", "36501"),
     ("AP_MAX_FILE_SIZE_MB", "99999999999"), ("AP_POSTGRES_PORT", "9" * 5000), ("AP_S3_DELETE_BATCH_SIZE", "1_000"),
     ("AP_MAX_FILE_SIZE_MB", "\u0663")],
)
def test_numbers_out_of_range_are_refused(var: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{var}.*from 1 to"):
        load({var: value})


def test_retention_at_the_top_of_its_range_is_accepted() -> None:
    assert load({"AP_EXECUTION_DATA_RETENTION_DAYS": "36500"}).execution_data_retention_days == 36500


@pytest.mark.parametrize(
    "content, line",
    [
        (b"AP_S3_BUCKET=abc\nthis is not a line\n", 2),
        (b"# c\n\nAP_S3_BUCKET='unterminated\n", 3),
        (b"AP_S3_BUCKET=abc\n\x00\x01\x02binary", 2),
        (b"AP_S3_BUCKET=abc\nAP_X=\xff\xfe\n", 2),
    ],
)
def test_a_dotenv_that_cannot_be_parsed_names_the_file_and_line(tmp_path: Path, content: bytes, line: int) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load({}, dotenv)
    assert info.value.exit_code == 3
    assert f"{dotenv} line {line}:" in info.value.message


def test_a_dotenv_may_export_quote_and_comment(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_bytes(b"\xef\xbb\xbf# settings\nexport AP_S3_BUCKET='abc'\nAP_S3_REGION=\"eu-west-1\"  # here\n")
    s = load({}, dotenv)
    assert (s.s3_bucket, s.s3_region) == ("abc", "eu-west-1")


def test_a_near_miss_is_warned_about_and_the_platforms_variables_stay_silent() -> None:
    platform = {name: "x" for name in (
        "AP_FRONTEND_URL", "AP_ENCRYPTION_KEY", "AP_JWT_SECRET", "AP_ENGINE_EXECUTABLE_PATH", "AP_REDIS_URL",
        "AP_EXECUTION_MODE", "AP_TELEMETRY_ENABLED", "AP_PIECES_SOURCE", "AP_REDIS_PASSWORD", "AP_REDIS_USE_SSL",
        "AP_POSTGRES_POOL_SIZE", "AP_WEBHOOK_TIMEOUT_SECONDS", "AP_QUEUE_MODE")}
    assert load(platform).warnings == ()
    s = load({**platform, "AP_FILE_STORAGE_LOCATON": "S3", "AP_S3_BUCKT": "abc"})
    assert s.warnings == (
        "AP_FILE_STORAGE_LOCATON is not a variable apstorage reads; did you mean AP_FILE_STORAGE_LOCATION?",
        "AP_S3_BUCKT is not a variable apstorage reads; did you mean AP_S3_BUCKET?",
    )


def test_a_name_cut_short_is_pointed_at_the_variable_it_starts() -> None:
    """The nearest by letters is not always the one meant: AP_POSTGRES_USER is the start of
    AP_POSTGRES_USERNAME, not a typo of AP_POSTGRES_URL."""
    assert load({"AP_POSTGRES_USER": "u"}).warnings == (
        "AP_POSTGRES_USER is not a variable apstorage reads; did you mean AP_POSTGRES_USERNAME?",)
    assert load({"AP_S3_ACCESS_KEY": "k"}).warnings == (
        "AP_S3_ACCESS_KEY is not a variable apstorage reads; did you mean AP_S3_ACCESS_KEY_ID?",)



# -- AP_S3_* is apstorage's family: every other name there is a misspelling ------------------

# The platform's own S3 variables (the S3_* values of its AppSystemProp enum, system-props.ts).
PLATFORM_S3_VARIABLES = ("AP_S3_ACCESS_KEY_ID", "AP_S3_BUCKET", "AP_S3_ENDPOINT", "AP_S3_REGION",
                         "AP_S3_SECRET_ACCESS_KEY", "AP_S3_USE_SIGNED_URLS", "AP_S3_USE_IRSA")


@pytest.mark.parametrize(("name", "meant"), [
    ("AP_S3_SECRET_KEY", "AP_S3_SECRET_ACCESS_KEY"),
    ("AP_S3_BUCKET_NAME", "AP_S3_BUCKET"),
    ("AP_S3_URL", "AP_S3_ENDPOINT"),
    ("AP_S3_KEY_ID", "AP_S3_ACCESS_KEY_ID"),
    ("AP_S3_USE_IRSA_ROLE", "AP_S3_USE_IRSA"),
    ("AP_S3_ENDPOINT_URL", "AP_S3_ENDPOINT"),
])
def test_an_unknown_s3_name_far_from_ours_is_still_warned_about(name, meant) -> None:
    assert load({name: "x"}).warnings == (f"{name} is not a variable apstorage reads; did you mean {meant}?",)


def test_an_s3_name_close_to_none_of_ours_lists_them() -> None:
    (warning,) = load({"AP_S3_SESSION_TOKEN": "x"}).warnings
    assert warning.startswith("AP_S3_SESSION_TOKEN is not a variable apstorage reads; the AP_S3_* variables it reads are ")
    assert all(name in warning for name in VARIABLES if name.startswith("AP_S3_"))


def test_the_platforms_s3_variables_are_ours_and_stay_silent(tmp_path: Path) -> None:
    assert set(PLATFORM_S3_VARIABLES) <= set(VARIABLES)
    assert not any(name.startswith("AP_S3_") for name in PLATFORM_VARIABLES)
    dotenv = tmp_path / ".env"
    dotenv.write_text(PLATFORM_DOTENV + "".join(f"{name}=true\n" for name in ("AP_S3_USE_SIGNED_URLS", "AP_S3_USE_IRSA")))
    assert load({}, dotenv).warnings == ()


@pytest.mark.parametrize("name", ["AP_POSTGRES_NAME", "AP_POSTGRES_DB", "AP_POSTGRES_DBNAME"])
def test_a_synonym_of_a_word_points_at_the_variable_it_means(name) -> None:
    """NAME and DB say DATABASE; the nearest by letters would be AP_POSTGRES_USERNAME."""
    assert load({name: "ap"}).warnings == (
        f"{name} is not a variable apstorage reads; did you mean AP_POSTGRES_DATABASE?",)


@pytest.mark.parametrize("name, meant", [
    ("AP_LOCAL_STORAGE_DIR", "AP_LOCAL_STORAGE_PATH"),  # a word said another way
    ("AP_DATA_RETENTION_DAYS", "AP_EXECUTION_DATA_RETENTION_DAYS"),  # its first words left out
    ("AP_S3_bucket", "AP_S3_BUCKET"),  # another case: the environment is case-sensitive
    ("AP_s3_bucket", "AP_S3_BUCKET"),
])
def test_a_name_that_is_one_of_ours_said_otherwise_is_warned_about(name, meant) -> None:
    assert load({name: "x"}).warnings == (f"{name} is not a variable apstorage reads; did you mean {meant}?",)


def test_the_warning_reaches_stderr_of_a_command(make_env, set_env, capsys) -> None:
    from apstorage.cli import app  # noqa: F401 - every command registered
    from apstorage.cli.app import run

    set_env(AP_S3_SECRET_KEY="x")
    assert run(["sweep-expired", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert err.startswith(
        "warning: AP_S3_SECRET_KEY is not a variable apstorage reads; did you mean AP_S3_SECRET_ACCESS_KEY?\n"), err


def test_scrub_blanks_every_secret_read_and_its_encodings() -> None:
    load({"AP_POSTGRES_URL": "postgresql://u:sc#rub/me@db/ap"})
    assert scrub("dsn postgresql://u:sc%23rub%2Fme@db and sc#rub/me") == "dsn postgresql://u:********@db and ********"


# -- the platform's own variables are not typos (issue 22, item 2) ---------------------------

# A deployment's .env as the platform's guides have operators write it: its own variables
# (flow and trigger timeouts, the queue, Redis and Sentinel, SMTP, webhooks, the sandbox,
# workers, telemetry, OpenTelemetry, ...) beside the storage ones apstorage shares.
PLATFORM_DOTENV = """\
## Activepieces, production
AP_ENGINE_EXECUTABLE_PATH=dist/packages/engine/main.js
AP_API_KEY=4f0c2b8e6d1a4e7f9b3c5a7d9e1f3b5c
AP_ENCRYPTION_KEY=2d6f0e4c8a1b3d5f7e9c1a3b5d7f9e1c
AP_JWT_SECRET=0c9a7e5d3b1f9e7c5a3d1b9f7e5c3a1d0c9a7e5d3b1f9e7c5a3d1b9f7e5c3a1d
AP_ENVIRONMENT=prod
AP_FRONTEND_URL=https://flows.example.com
AP_INTERNAL_URL=http://activepieces:80/api
AP_PUBLIC_URL=https://flows.example.com
AP_WEBHOOK_TIMEOUT_SECONDS=30
AP_TRIGGER_DEFAULT_POLL_INTERVAL=5
AP_TRIGGER_TIMEOUT_SECONDS=60
AP_FLOW_TIMEOUT_SECONDS=600
AP_AGENT_TIMEOUT_SECONDS=600
AP_SANDBOX_RUN_TIME_SECONDS=600
AP_SANDBOX_MEMORY_LIMIT=1048576
AP_SANDBOX_PROPAGATED_ENV_VARS=TZ
AP_EXECUTION_MODE=UNSANDBOXED
AP_CONTAINER_TYPE=WORKER_AND_APP
AP_WORKER_CONCURRENCY=5
AP_FLOW_WORKER_CONCURRENCY=10
AP_SCHEDULED_WORKER_CONCURRENCY=10
AP_QUEUE_MODE=REDIS
AP_QUEUE_UI_ENABLED=true
AP_QUEUE_UI_USERNAME=admin
AP_QUEUE_UI_PASSWORD=queue-ui-password
AP_REDIS_TYPE=SENTINEL
AP_REDIS_HOST=redis
AP_REDIS_PORT=6379
AP_REDIS_USER=default
AP_REDIS_PASSWORD=redis-password
AP_REDIS_DB=0
AP_REDIS_USE_SSL=false
AP_REDIS_SENTINEL_HOSTS=sentinel-1:26379,sentinel-2:26379
AP_REDIS_SENTINEL_NAME=mymaster
AP_REDIS_SENTINEL_ROLE=master
AP_REDIS_FAILED_JOB_RETENTION_DAYS=30
AP_REDIS_FAILED_JOB_RETENTION_MAX_COUNT=100000
AP_SMTP_HOST=mail.example.com
AP_SMTP_PORT=587
AP_SMTP_USERNAME=flows@example.com
AP_SMTP_PASSWORD=smtp-password
AP_SMTP_SENDER_EMAIL=flows@example.com
AP_SMTP_SENDER_NAME=Flows
AP_TELEMETRY_ENABLED=false
AP_OTEL_ENABLED=true
AP_OTEL_EXPORTER_OTLP_ENDPOINT=http://otel:4318
AP_LOG_LEVEL=info
AP_LOG_PRETTY=false
AP_TEMPLATES_SOURCE_URL=https://cloud.activepieces.com/api/v1/flow-templates
AP_PIECES_SOURCE=DB
AP_PIECES_SYNC_MODE=OFFICIAL_AUTO
AP_DEV_PIECES=
AP_CLOUD_AUTH_ENABLED=true
AP_MAX_CONCURRENT_JOBS_PER_PROJECT=100
AP_PROJECT_RATE_LIMITER_ENABLED=false
AP_ISSUE_ARCHIVE_DAYS=7
AP_MAX_RECORDS_PER_TABLE=10000
AP_MAX_FIELDS_PER_TABLE=100
AP_MAX_FLOW_RUN_LOG_SIZE_MB=50
AP_APP_WEBHOOK_SECRETS={}
AP_SENTRY_DSN=
AP_EDITION=ce
AP_OPENAI_API_KEY=sk-not-a-real-key
AP_COPILOT_INSTANCE_TYPE=OPENAI
AP_PROMETHEUS_ENABLED=true
AP_ENABLE_FLOW_ON_PUBLISH=true
AP_POSTGRES_POOL_SIZE=20
AP_POSTGRES_IDLE_TIMEOUT_MS=300000
## storage, shared with apstorage
AP_DB_TYPE=SQLITE3
AP_FILE_STORAGE_LOCATION=DB
AP_EXECUTION_DATA_RETENTION_DAYS=30
AP_PAUSED_FLOW_TIMEOUT_DAYS=30
AP_MAX_FILE_SIZE_MB=25
"""


def test_the_platforms_own_dotenv_gives_no_warning_and_a_true_typo_still_does(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(PLATFORM_DOTENV)
    names = [line.split("=", 1)[0] for line in PLATFORM_DOTENV.splitlines() if "=" in line and not line.startswith("#")]
    assert len([n for n in names if n not in VARIABLES]) >= 60  # dozens of the platform's own
    s = load({}, dotenv)
    assert s.warnings == ()
    assert s.storage_location is Location.DB  # the shared ones are read as usual
    dotenv.write_text(PLATFORM_DOTENV + "AP_S3_BUKET=files\n")
    assert load({}, dotenv).warnings == (
        "AP_S3_BUKET is not a variable apstorage reads; did you mean AP_S3_BUCKET?",)


def test_the_platforms_list_is_apart_from_ours_and_no_family_begins_one_of_ours() -> None:
    assert PLATFORM_VARIABLES.isdisjoint(VARIABLES)
    assert [(f, v) for f in PLATFORM_FAMILIES for v in VARIABLES if v.startswith(f)] == []
    assert all(name.startswith("AP_") and name.upper() == name for name in PLATFORM_VARIABLES)


_NAME_CHARS = st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@hsettings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    listed=st.lists(st.sampled_from(sorted(PLATFORM_VARIABLES)), max_size=30),
    family=st.lists(st.tuples(st.sampled_from(PLATFORM_FAMILIES), st.text(_NAME_CHARS, min_size=1, max_size=20)), max_size=5),
)
def test_any_mix_of_the_platforms_variables_is_silent(listed, family) -> None:
    environ = {name: "x" for name in listed} | {prefix + rest: "1" for prefix, rest in family}
    assert load(environ).warnings == ()


def _edits(name: str) -> st.SearchStrategy[str]:
    """One character of ``name`` after ``AP_`` dropped, doubled or replaced."""
    tail = len(name) - 3

    def edit(args) -> str:
        i, kind, ch = args
        i += 3
        if kind == "drop":
            return name[:i] + name[i + 1:]
        if kind == "double":
            return name[:i] + name[i] + name[i:]
        return name[:i] + ch + name[i + 1:]

    return st.tuples(st.integers(0, tail - 1), st.sampled_from(["drop", "double", "replace"]), _NAME_CHARS).map(edit)


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(VARIABLES).flatmap(lambda v: st.tuples(st.just(v), _edits(v))))
def test_a_one_character_slip_in_one_of_ours_is_warned_about(pair) -> None:
    ours, typo = pair
    if typo in VARIABLES or is_platform_variable(typo):
        return  # the slip made a real name
    warnings = load({typo: "x"}).warnings
    assert len(warnings) == 1 and warnings[0].startswith(f"{typo} is not a variable apstorage reads; did you mean AP_")
    suggested = warnings[0].rsplit(" ", 1)[1].rstrip("?")
    assert suggested in VARIABLES
