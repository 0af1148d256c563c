"""``email.send`` against a real SMTP server (aiosmtpd) started here: STARTTLS with a
self-signed certificate made here, AUTH, attachments from artifacts, and each failure on
its branch (refused recipient: permanent; server down: transient; silence after the body:
outcome unknown, never retried)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from shiftflow.kernel.artifacts import LocalArtifactStore
from shiftflow.kernel.errors import ToolError, ToolOutcomeUnknown, ToolUnavailable
from shiftflow.kernel.tools.base import ToolContext, ToolLimits
from shiftflow.kernel.tools.mail import TOOL as SEND
from tests.tool_servers import SelfSigned, SmtpServer, free_port, self_signed


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> SelfSigned:
    return self_signed(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
def smtp(cert) -> Iterator[SmtpServer]:
    server = SmtpServer(cert)
    yield server
    server.stop()


@pytest.fixture
def store(tmp_path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def _ctx(store, credentials, **more) -> ToolContext:
    return ToolContext(artifacts=store, credentials=credentials, allow_private=True, **more)


def test_starttls_auth_html_text_and_an_attachment_arrive(smtp, cert, store):
    image = store.put(b"\x89PNG fake picture", "shot.png", "image/png")
    ctx = _ctx(store, smtp.credentials(cert), idempotency_key="exec-1:step-mail")
    out = SEND.call({
        "to": ["ann@example.com"], "cc": ["bob@example.com"], "bcc": ["audit@example.com"],
        "subject": "Your screenshot", "text": "See attached.", "html": "<p>See <b>attached</b>.</p>",
        "attachments": [{"artifact": image.to_dict()}],
    }, ctx)
    assert out["accepted"] == ["ann@example.com", "bob@example.com", "audit@example.com"]
    [(envelope, message)] = smtp.handler.messages
    assert smtp.handler.tls_sessions == [True] and smtp.handler.logins == ["mailer"]
    assert envelope.mail_from == "robot@shiftflow.test"
    assert envelope.rcpt_tos == ["ann@example.com", "bob@example.com", "audit@example.com"]
    assert "Bcc" not in message  # blind copies travel in the envelope only
    assert message["Subject"] == "Your screenshot" and message["Cc"] == "bob@example.com"
    digest = hashlib.sha256(b"exec-1:step-mail").hexdigest()[:32]
    assert message["Message-ID"] == f"<{digest}.shiftflow@shiftflow.test>" == out["message_id"]
    assert message.get_body(("plain",)).get_content().strip() == "See attached."
    assert "<b>attached</b>" in message.get_body(("html",)).get_content()
    [attachment] = list(message.iter_attachments())
    assert attachment.get_filename() == "shot.png" and attachment.get_content_type() == "image/png"
    assert attachment.get_content() == b"\x89PNG fake picture"


def test_a_refused_recipient_is_permanent_and_nobody_gets_the_message(smtp, cert, store):
    smtp.handler.refuse["gone.example"] = "550 5.1.1 no such user"
    with pytest.raises(ToolError, match=r"recipients refused, nothing sent: x@gone.example \(550 5.1.1 no such user\)"):
        SEND.call({"to": ["ok@example.com", "x@gone.example"], "subject": "s", "text": "t"},
                  _ctx(store, smtp.credentials(cert)))
    assert smtp.handler.messages == []
    # The same connection's server still works for a good recipient (the transaction was reset).
    SEND.call({"to": "ok@example.com", "subject": "s", "text": "t"}, _ctx(store, smtp.credentials(cert)))
    assert [e.rcpt_tos for e, _ in smtp.handler.messages] == [["ok@example.com"]]


def test_a_deferred_recipient_is_transient(smtp, cert, store):
    smtp.handler.refuse["busy.example"] = "450 4.2.1 mailbox busy, try later"
    with pytest.raises(ToolUnavailable, match="deferred, nothing sent"):
        SEND.call({"to": "x@busy.example", "subject": "s", "text": "t"}, _ctx(store, smtp.credentials(cert)))


def test_a_server_that_is_down_is_transient(cert, store):
    down = {"host": "127.0.0.1", "port": free_port(), "security": "starttls", "from": "robot@shiftflow.test"}
    with pytest.raises(ToolUnavailable, match="unavailable: ConnectionRefusedError"):
        SEND.call({"to": "a@example.com", "subject": "s", "text": "t"}, _ctx(store, down))


def test_wrong_password_and_untrusted_certificate_are_permanent(smtp, cert, store):
    with pytest.raises(ToolError, match="authentication refused: 535"):
        SEND.call({"to": "a@example.com", "subject": "s", "text": "t"},
                  _ctx(store, smtp.credentials(cert, password="wrong")))
    with pytest.raises(ToolError, match="TLS certificate refused"):
        SEND.call({"to": "a@example.com", "subject": "s", "text": "t"},
                  _ctx(store, smtp.credentials(cert, tls_ca_pem="")))
    assert smtp.handler.messages == []


def test_silence_after_the_body_is_an_unknown_outcome_not_a_retry(smtp, cert, store):
    smtp.handler.data_delay = 3.0  # the server sits on the message longer than our timeout
    ctx = _ctx(store, smtp.credentials(cert), limits=ToolLimits(smtp_timeout=1.0))
    with pytest.raises(ToolOutcomeUnknown, match="may have been delivered"):
        SEND.call({"to": "a@example.com", "subject": "s", "text": "t"}, ctx)


def test_private_smtp_hosts_are_refused_unless_allowed(smtp, cert, store):
    ctx = ToolContext(artifacts=store, credentials=smtp.credentials(cert), allow_private=False)
    with pytest.raises(ToolError, match=r"connection host 127.0.0.1:\d+ is not allowed: .*not a public address"):
        SEND.call({"to": "a@example.com", "subject": "s", "text": "t"}, ctx)
    assert smtp.handler.messages == []
