"""The config loader: defaults, validation naming the variable, .env, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from apstorage.config import load_settings
from apstorage.errors import ConfigError
from apstorage.model import Location


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
        ("AP_S3_DELETE_BATCH_SIZE", "5000", "<= 1000"),
        ("AP_POSTGRES_PORT", "99999", "<= 65535"),
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
        load({"AP_S3_BUCKET": "b", "AP_S3_ACCESS_KEY_ID": "k"}).require_s3()
    load({"AP_S3_BUCKET": "b", "AP_S3_USE_IRSA": "true"}).require_s3()  # default chain: fine


def test_secrets_never_show_in_repr_or_redacted_output() -> None:
    s = load(
        {
            "AP_POSTGRES_URL": "postgresql://app:pg-secret-123@db:5432/ap",
            "AP_S3_SECRET_ACCESS_KEY": "s3-secret-456",
            "AP_POSTGRES_PASSWORD": "pw-789",
        }
    )
    text = repr(s) + str(s.redacted())
    for secret in ("pg-secret-123", "s3-secret-456", "pw-789"):
        assert secret not in text
    assert s.redacted()["postgres_url"] == "postgresql://app:********@db:5432/ap"
    assert s.postgres_target == "db:5432/ap"
