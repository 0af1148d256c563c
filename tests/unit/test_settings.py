"""Settings: one place reads the environment; bad values name the variable."""

import pytest

from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.settings import Settings

REAL = {
    "SHIFTFLOW_AMQP_URL": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "SHIFTFLOW_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/shiftflow",
    "SHIFTFLOW_MONGO_URL": "mongodb://127.0.0.1:27017/?retryWrites=false",
}


def test_dev_mode_needs_nothing():
    settings = Settings.from_env({"SHIFTFLOW_MODE": "dev"})
    assert settings.dev
    assert settings.database_url.startswith("sqlite:///")
    assert settings.amqp_url == ""


@pytest.mark.parametrize("missing", sorted(REAL))
def test_production_requires_every_url(missing):
    env = {k: v for k, v in REAL.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SHIFTFLOW_AMQP_URL", "http://rabbit", "amqp://"),
        ("SHIFTFLOW_DATABASE_URL", "mysql://db/x", "postgresql://"),
        ("SHIFTFLOW_INGRESS_PORT", "eighty", "whole number"),
        ("SHIFTFLOW_INGRESS_PORT", "70000", "0 to 65535"),
        ("SHIFTFLOW_PREFETCH", "0", "1 to 2000"),
        ("SHIFTFLOW_MODE", "staging", "dev, production"),
        ("SHIFTFLOW_SECRET_KEYS", "short", "at least 32"),
        ("SHIFTFLOW_PUBLISH_TIMEOUT_SECONDS", "soon", "a number"),
        ("SHIFTFLOW_SIDESHIFT_COMMISSION_RATE", "0.5", "from 0 to 0.02"),
        ("SHIFTFLOW_SIDESHIFT_COMMISSION_RATE", "-0.001", "from 0 to 0.02"),
        ("SHIFTFLOW_SIDESHIFT_COMMISSION_RATE", "half", "from 0 to 0.02"),
        ("SHIFTFLOW_SIDESHIFT_RATE_LIMIT_BACKOFF_SECONDS", "0", "0.05 to 60"),
    ],
)
def test_malformed_values_name_the_variable(name, value, expected):
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**REAL, name: value})
    assert name in str(info.value)
    assert expected in str(info.value)


def test_error_never_prints_a_password():
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**REAL, "SHIFTFLOW_AMQP_URL": "http://user:hunter2@rabbit/"})
    assert "hunter2" not in str(info.value)


def test_public_dict_hides_secrets():
    settings = Settings.from_env({**REAL, "SHIFTFLOW_AMQP_URL": "amqp://u:hunter2@h/",
                                  "SHIFTFLOW_SECRET_KEYS": "k" * 40})
    shown = str(settings.public_dict())
    assert "hunter2" not in shown and "k" * 40 not in shown
    assert settings.secret_keys == ("k" * 40,)


def test_values_are_parsed():
    settings = Settings.from_env({**REAL, "SHIFTFLOW_PREFETCH": "300", "SHIFTFLOW_HTTP_ALLOW_PRIVATE": "true"})
    assert settings.prefetch == 300 and settings.http_allow_private
    assert settings.sideshift_commission_rate == "" and settings.sideshift_rate_limit_backoff_seconds == 10
    sideshift = Settings.from_env({**REAL, "SHIFTFLOW_SIDESHIFT_COMMISSION_RATE": "0.0100"})
    assert sideshift.sideshift_commission_rate == "0.0100"


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://h:27017/?authSource=admin&password=hunter2",
        "amqp://h/%2F?heartbeat=30&Password=hunter2",
        "postgresql://u@h/db?sslpassword=hunter2&sslmode=require",
        "redis://h:6379/0?token=hunter2#frag",
    ],
)
def test_shiftflow_config_masks_a_password_given_as_a_url_query_parameter(url, monkeypatch, capsys):
    """Issue 11, finding 9: `shiftflow config` printed `?password=` values in full."""
    from shiftflow.cli.main import main
    from shiftflow.kernel import settings as settings_module

    name = {"mongodb": "MONGO_URL", "amqp": "AMQP_URL", "postgresql": "DATABASE_URL", "redis": "REDIS_URL"}[
        url.split(":")[0]
    ]
    shown = str(Settings.from_env({**REAL, f"SHIFTFLOW_{name}": url}).public_dict())
    assert "hunter2" not in shown and "***" in shown
    assert "h" in shown  # the rest of the URL is still there to check

    monkeypatch.setattr(settings_module, "_current", None)  # main() installs its settings
    for key, value in {**REAL, f"SHIFTFLOW_{name}": url}.items():
        monkeypatch.setenv(key, value)
    assert main(["config"]) == 0
    printed = capsys.readouterr().out
    assert "hunter2" not in printed and "***" in printed
    # The harmless parameters stay readable.
    assert ("authSource=admin" in printed) == ("authSource=admin" in url)
    assert ("sslmode=require" in printed) == ("sslmode=require" in url)


def test_tool_settings_and_the_s3_backend_need_a_bucket():
    settings = Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_DATA_DIR": "/var/lib/sf",
                                  "SHIFTFLOW_S3_SECRET_ACCESS_KEY": "hush", "SHIFTFLOW_BROWSER_MAX_CALLS": "7",
                                  "SHIFTFLOW_S3_PREFIX": "/runs/"})
    assert settings.artifact_backend == "local" and settings.artifact_dir == "/var/lib/sf/artifacts"
    assert settings.browser_max_calls == 7 and settings.s3_prefix == "runs"
    assert settings.public_dict()["s3_secret_access_key"] == "***"
    with pytest.raises(SettingsError, match="SHIFTFLOW_S3_BUCKET is not set"):
        Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_ARTIFACT_BACKEND": "s3"})
    with pytest.raises(SettingsError, match="SHIFTFLOW_ARTIFACT_BACKEND='gcs' is malformed"):
        Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_ARTIFACT_BACKEND": "gcs"})
    with pytest.raises(SettingsError, match="SHIFTFLOW_MEDIA_MAX_PIXELS=0 is out of range"):
        Settings.from_env({"SHIFTFLOW_MODE": "dev", "SHIFTFLOW_MEDIA_MAX_PIXELS": "0"})
