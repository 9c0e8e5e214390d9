"""Settings: the replaced services' env names, precedence rules, errors naming the variable."""

from __future__ import annotations

import importlib
import os

import pytest

from functions.runtime import settings
from functions.runtime.errors import SettingsError


@pytest.fixture(autouse=True)
def clean_env() -> None:
    for key in list(os.environ):
        if key.split("_")[0] in {"DB", "DATABASE", "MINIO", "RABBITMQ", "REDIS", "MQTT", "KAFKA"}:
            del os.environ[key]
    settings.reset()


def test_malformed_value_names_the_variable() -> None:
    os.environ.update(DB_PASSWORD="pw", DB_PORT="abc")
    with pytest.raises(SettingsError) as err:
        settings.postgres()
    assert err.value.setting == "DB_PORT"
    assert "'abc'" in str(err.value)


def test_missing_password_names_both_ways_to_give_it() -> None:
    with pytest.raises(SettingsError, match=r"DB_PASSWORD \(or DATABASE_URL\)"):
        settings.postgres()


def test_secret_values_never_appear_in_errors() -> None:
    os.environ.update(DATABASE_URL="mysql://u:hunter2@h/db")
    with pytest.raises(SettingsError) as err:
        settings.postgres()
    assert "hunter2" not in str(err.value)
    assert "DATABASE_URL" in str(err.value)


def test_database_url_wins_over_db_parts() -> None:
    os.environ.update(
        DATABASE_URL="postgresql://app:s3cret@db.example:6543/other", DB_HOST="ignored"
    )
    cfg = settings.postgres()
    assert cfg.dsn == "postgresql://app:s3cret@db.example:6543/other"
    assert cfg.credential_settings == "DATABASE_URL"


def test_db_parts_build_a_quoted_dsn() -> None:
    os.environ.update(DB_HOST="pg", DB_PORT="5433", DB_NAME="n", DB_USER="u", DB_PASSWORD="p@ss/")
    assert settings.postgres().dsn == "postgresql://u:p%40ss%2F@pg:5433/n"


def test_minio_access_key_takes_precedence_over_root_user() -> None:
    os.environ.update(MINIO_ROOT_USER="admin", MINIO_ROOT_PASSWORD="admin1234")
    assert settings.minio().access_key == "admin"
    os.environ.update(MINIO_ACCESS_KEY="app-key", MINIO_SECRET_KEY="app-secret")
    settings.reset()
    cfg = settings.minio()
    assert (cfg.access_key, cfg.secret_key.get_secret_value()) == ("app-key", "app-secret")


def test_missing_minio_credentials_name_both_variables() -> None:
    with pytest.raises(SettingsError) as err:
        settings.minio()
    assert err.value.setting == "MINIO_ACCESS_KEY/MINIO_ROOT_USER"


def test_mqtt_broker_url_is_parsed_and_checked() -> None:
    os.environ["MQTT_BROKER_URL"] = "mqtt://broker.local:1884"
    assert (settings.mqtt().host, settings.mqtt().port) == ("broker.local", 1884)
    os.environ["MQTT_BROKER_URL"] = "broker.local:1883"
    settings.reset()
    with pytest.raises(SettingsError, match="MQTT_BROKER_URL"):
        settings.mqtt()


def test_kafka_and_mongo_settings() -> None:
    os.environ.update(
        KAFKA_BOOTSTRAP_SERVERS="a:9092, b:9092", MONGODB_URI="mongodb://m:27017/runner_db"
    )
    assert settings.kafka().servers == ["a:9092", "b:9092"]
    assert settings.mongo().database_name == "runner_db"


def test_settings_are_not_built_at_import() -> None:
    import functions.echo.function as echo_module

    importlib.reload(echo_module)  # no backend env at all: importing must still work
    assert settings.postgres.cache_info().currsize == 0
    assert settings.redis.cache_info().currsize == 0
