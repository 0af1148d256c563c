"""The integration catalogue as data: entries, credential schemas with field paths in errors,
secret fields masked and scrubbed, the tools each serves, plugins through the
``shiftflow.integrations`` entry point group (tests/integration_plugin_example)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from shiftflow.kernel.errors import PermanentError
from shiftflow.kernel.integrations import (
    Integration,
    IntegrationCatalogue,
    InvalidCredentials,
    UnknownIntegration,
    builtin_integrations,
    mask,
    redactor,
)
from shiftflow.kernel.integrations.base import RateLimits, unverified
from shiftflow.kernel.integrations.catalogue import ENTRY_POINT_GROUP
from shiftflow.kernel.integrations.secrets import scrubber_for, secret_values
from shiftflow.kernel.redaction import MASK
from shiftflow.kernel.tools.registry import builtin_tools
from tests.unit.test_tools_registry import _install_metadata

EXAMPLE = Path(__file__).resolve().parent.parent / "integration_plugin_example"


def _catalogue() -> IntegrationCatalogue:
    return IntegrationCatalogue(builtin_integrations())


def test_the_builtin_catalogue_has_every_integration_with_a_schema_secrets_and_a_test():
    catalogue = _catalogue()
    assert [i.key for i in catalogue] == ["anthropic", "coingecko", "discord", "http", "oauth2", "openai", "s3",
                                          "sideshift", "slack", "smtp"]
    secrets = {i.key: sorted(i.secret_fields) for i in catalogue}
    assert secrets == {
        "anthropic": ["api_key"], "coingecko": ["api_key"], "discord": ["webhook_url"],
        "http": ["api_key", "password", "token"], "oauth2": ["access_token", "client_secret", "refresh_token"],
        "openai": ["api_key"], "s3": ["secret_access_key", "session_token"], "sideshift": ["secret"],
        "slack": ["webhook_url"], "smtp": ["password"],
    }
    for integration in catalogue:
        described = integration.describe()
        assert described["credentials_schema"]["type"] == "object" and described["name"] and callable(integration.test)
        assert described["auth_type"] in ("OAUTH2", "API_KEY", "BASIC", "NONE")
    assert catalogue.get("oauth2").auth_type == "OAUTH2" and catalogue.get("smtp").auth_type == "BASIC"
    assert catalogue.get("slack").limits == RateLimits(per_second=1, burst=3)
    assert catalogue.get("http").limits is None  # the deployment's default applies
    assert catalogue.get("sideshift").shared_limits is not None
    assert catalogue.get("openai").base_url == "https://api.openai.com/v1"


def test_every_tool_an_integration_names_exists_and_every_tool_needing_one_is_served():
    catalogue = _catalogue()
    tools = {tool.name: tool for tool in builtin_tools()}
    assert catalogue.unknown_tools(tools) == []
    for tool in tools.values():
        if tool.integration is not None:
            assert catalogue.for_tool(tool.name), f"{tool.name} needs a {tool.integration} connection nobody serves"
    assert [i.key for i in catalogue.for_tool("notify.chat")] == ["discord", "slack"]
    assert [i.key for i in catalogue.for_tool("email.send")] == ["smtp"]
    assert catalogue.check_tool("email.send", "smtp").key == "smtp"
    with pytest.raises(PermanentError, match="a slack connection cannot be used by tool email.send "
                                             r"\(integrations it takes: smtp\)"):
        catalogue.check_tool("email.send", "slack")
    with pytest.raises(UnknownIntegration, match="unknown integration 'gmail'; known integrations: anthropic"):
        catalogue.get("gmail")


def test_credential_errors_name_each_field_and_never_quote_a_secret():
    catalogue = _catalogue()
    with pytest.raises(InvalidCredentials) as caught:
        catalogue.get("smtp").validate({"host": "mail.example", "username": "robot", "port": 99999, "colour": "x"})
    assert caught.value.problems == [
        "credentials: unknown field 'colour'",
        "credentials.password: required",
        "credentials.port: 99999 is greater than the maximum of 65535",
    ]
    with pytest.raises(InvalidCredentials) as caught:
        catalogue.get("http").validate({"auth": "basic", "base_url": "https://api.example"})
    assert caught.value.problems == ["credentials.password: required", "credentials.username: required"]
    with pytest.raises(InvalidCredentials) as caught:
        catalogue.get("oauth2").validate({"token_url": "https://id.example/token", "client_id": "app",
                                          "grant_type": "refresh_token"})
    assert caught.value.problems == ["credentials.client_secret: required", "credentials.refresh_token: required"]
    # A secret put where it does not fit is named, not shown.
    with pytest.raises(InvalidCredentials) as caught:
        catalogue.get("s3").validate({"bucket": "b1b", "access_key_id": "AKIA", "secret_access_key": 12345678901})
    assert str(caught.value) == f"credentials.secret_access_key: {MASK} is not of type 'string'"


def test_validation_fills_the_schema_defaults():
    catalogue = _catalogue()
    smtp = catalogue.get("smtp").validate({"host": "mail.example"})
    assert smtp == {"host": "mail.example", "security": "starttls"}
    assert catalogue.get("discord").validate({"webhook_url": "https://discord.com/api/webhooks/1/t"})["format"] == \
        "discord"
    oauth = catalogue.get("oauth2").validate({"token_url": "https://id.example/token", "client_id": "a",
                                              "client_secret": "s"})
    assert (oauth["grant_type"], oauth["auth_method"]) == ("client_credentials", "client_secret_basic")


def test_fields_tell_a_form_or_a_prompt_what_to_ask_and_what_to_hide():
    fields = {f["name"]: f for f in _catalogue().get("smtp").fields()}
    assert list(fields)[:3] == ["host", "port", "security"]
    assert fields["host"]["required"] and not fields["host"]["secret"]
    assert fields["password"] == {"name": "password", "required": False, "secret": True}
    assert fields["security"]["choices"] == ["starttls", "tls", "none"] and fields["security"]["default"] == "starttls"


def test_masking_shows_plain_fields_and_hides_secret_and_unknown_ones():
    smtp = _catalogue().get("smtp")
    shown = mask({"host": "mail.example", "port": 587, "username": "robot", "password": "hunter2!",
                  "mystery": "value", "from": ""}, smtp.credentials_schema)
    assert shown == {"host": "mail.example", "port": 587, "username": "robot", "password": MASK,
                     "mystery": MASK, "from": ""}
    nested = {"type": "object", "properties": {"outer": {"type": "object", "properties": {
        "key": {"type": "string", "x-secret": True}, "name": {"type": "string"}}}}}
    assert mask({"outer": {"key": "abc", "name": "n"}}, nested) == {"outer": {"key": MASK, "name": "n"}}


def test_redact_removes_every_secret_value_in_every_form_an_echo_takes():
    http = _catalogue().get("http")
    creds = {"auth": "api_key_query", "base_url": "https://api.example", "api_key": "k3y/with+chars&more"}
    redact = redactor(creds, http.credentials_schema)
    text = ("GET https://api.example/x?api_key=k3y%2Fwith%2Bchars%26more failed; "
            'body {"echo": "k3y/with+chars&more"} and k3y/with+chars&more')
    cleaned = redact(text)
    assert "k3y" not in cleaned and cleaned.count(MASK) == 3
    assert "https://api.example" in cleaned  # plain fields stay readable
    # Without a schema every string counts; short values (under 6 characters) are left alone.
    assert sorted(secret_values({"a": "one-two-three", "b": ["xyzxyz"], "c": {"d": "abc"}})) == [
        "abc", "one-two-three", "xyzxyz"]
    assert redactor({"a": "abc", "b": "one-two-three"})("abc one-two-three") == f"abc {MASK}"
    scrub = scrubber_for({"token": "tok-123456"})
    assert scrub({"out": ["tok-123456", {"tok-123456": 1}], "n": 5}) == {"out": [MASK, {MASK: 1}], "n": 5}


def test_rate_limits_are_checked_and_described():
    assert RateLimits(per_second=1, per_minute=30, burst=3).describe() == "1/s, 30/min, burst 3"
    assert RateLimits().describe() == "unlimited" and RateLimits().unlimited
    assert [(name, limit.rate, limit.burst) for name, limit in RateLimits(2, 30, 50).buckets()] == [
        ("s", 2, 50), ("m", 0.5, 30)]
    for bad in ({"per_second": -1}, {"burst": 0}, {"per_minute": float("nan")}):
        with pytest.raises(PermanentError):
            RateLimits(**bad)


def test_a_malformed_entry_is_refused():
    def entry(**more):
        base = dict(key="demo", name="Demo", description="d", category="test", auth_type="NONE",
                    credentials_schema={"type": "object"}, test=lambda c, x: unverified("n/a"))
        return Integration(**{**base, **more})

    with pytest.raises(PermanentError, match="integration key 'Demo!'"):
        entry(key="Demo!")
    with pytest.raises(PermanentError, match="auth_type 'TOKEN'"):
        entry(auth_type="TOKEN")
    with pytest.raises(PermanentError, match="needs http_credentials"):
        entry(tools=("http.request",))
    with pytest.raises(PermanentError, match="must describe an object"):
        entry(credentials_schema={"type": "string"})


def test_a_package_adds_an_integration_through_the_entry_point_group(tmp_path, monkeypatch):
    declared = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())
    points = declared["project"]["entry-points"][ENTRY_POINT_GROUP]
    _install_metadata(tmp_path, declared["project"]["name"], points)
    # _install_metadata writes the tools group; rewrite it for ours.
    info = next(tmp_path.glob("*.dist-info"))
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n"
                                           + "".join(f"{k} = {v}\n" for k, v in points.items()))
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = _catalogue()
    assert catalogue.load_entry_points() == ["acme_crm"]
    acme = catalogue.get("acme_crm")
    assert catalogue.source("acme_crm") == "shiftflow-example-integration:acme_crm"
    assert acme.secret_fields == {"api_key"} and acme.serves("http.request")
    assert acme.validate({"api_key": "0123456789"})["base_url"] == "https://api.acme.example"
    assert catalogue.problems == []


TAKEN = Integration(key="smtp", name="x", description="d", category="t", auth_type="NONE",
                    credentials_schema={"type": "object"}, test=lambda c, x: unverified("n/a"))


def test_a_plugin_cannot_take_a_builtin_key_and_a_broken_one_does_not_stop_the_rest(tmp_path, monkeypatch):
    info = tmp_path / "shiftflow_bad_integrations-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: shiftflow-bad-integrations\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\ntaken = {__name__}:TAKEN\nbroken = no_such_module_anywhere:X\n"
        f"empty = {__name__}:EXAMPLE\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    catalogue = _catalogue()
    assert catalogue.load_entry_points() == []
    assert catalogue.source("smtp") == "builtin"
    joined = "\n".join(catalogue.problems)
    assert "integration 'smtp' from shiftflow-bad-integrations:taken is already registered by builtin" in joined
    assert "shiftflow-bad-integrations:broken: cannot load: ModuleNotFoundError" in joined
    assert "shiftflow-bad-integrations:empty: is not an Integration" in joined
