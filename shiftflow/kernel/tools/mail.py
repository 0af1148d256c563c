"""``email.send``: one message over SMTP (STARTTLS or implicit TLS, AUTH, attachments from artifacts).

The SMTP dialogue is driven command by command, not through ``smtplib.sendmail``, so that
each outcome lands on the right branch:

* every recipient is checked (``RCPT``) before the body is sent; if the server refuses
  any of them the transaction is reset and nothing is sent to anyone: a 5xx refusal is a
  permanent failure naming the recipients, a 4xx one (greylisting, a full mailbox) transient;
* a server that is down, unreachable or drops the connection before the body went out is
  transient: a retry cannot send the message twice;
* a server that took the body and then did not answer may have queued the message:
  ``ToolOutcomeUnknown`` (permanent), because ``email.send`` has ``effect: once``.

The Message-ID is derived from the call's idempotency key when there is one, so a
receiving system can recognise a duplicate even across an operator's manual retry.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import smtplib
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import formatdate, make_msgid
from typing import Any

from shiftflow.kernel.artifacts import location_of
from shiftflow.kernel.artifacts.base import guess_mime
from shiftflow.kernel.errors import LimitExceeded, ToolError, ToolOutcomeUnknown, ToolUnavailable
from shiftflow.kernel.tools.base import ARTIFACT_INPUT, Tool, ToolContext
from shiftflow.kernel.tools.http import check_destination, tls_context

SECURITY = ("starttls", "tls", "none")
_LINE = r"^[^\r\n]*$"
_ADDRESS = {"type": "string", "format": "email", "maxLength": 320}
_ADDRESSES = {"type": "array", "items": _ADDRESS, "maxItems": 100}


def _recipients(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return list(value or [])


def _tls(credentials: Mapping[str, Any]) -> ssl.SSLContext:
    """The verifying context; a connection may add a private CA (``tls_ca_pem``), never skip checks."""
    ca = credentials.get("tls_ca_pem")
    if not ca:
        return tls_context()
    context = ssl.create_default_context()
    context.load_verify_locations(cadata=str(ca))
    return context


def _check_host(host: str, port: int, allow_private: bool) -> None:
    # The HTTP tool's guard, so SMTP obeys the same address rules (an SMTP connection to
    # 10.0.0.5:6379 would otherwise be a way to talk to internal services).
    try:
        check_destination(f"http://{host if ':' not in host else f'[{host}]'}:{port}/", allow_private=allow_private)
    except ToolError as exc:
        raise ToolError(f"connection host {host}:{port} is not allowed: {exc}") from None


def _message(params: dict[str, Any], ctx: ToolContext, sender: str) -> EmailMessage:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(_recipients(params["to"]))
    if params.get("cc"):
        message["Cc"] = ", ".join(params["cc"])
    if params.get("reply_to"):
        message["Reply-To"] = params["reply_to"]
    message["Subject"] = params["subject"]
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = sender.rsplit("@", 1)[-1]
    if ctx.idempotency_key:
        digest = hashlib.sha256(ctx.idempotency_key.encode()).hexdigest()[:32]
        message["Message-ID"] = f"<{digest}.shiftflow@{domain}>"
    else:
        message["Message-ID"] = make_msgid(domain=domain)
    text, html = params.get("text"), params.get("html")
    if text is not None:
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
    else:
        message.set_content(html or "", subtype="html")
    total = 0
    for attachment in params.get("attachments") or []:
        artifact = attachment["artifact"]
        location = location_of(artifact)
        meta = artifact if isinstance(artifact, dict) else {}
        name = attachment.get("name") or meta.get("name") or location.rsplit("/", 1)[-1]
        mime = attachment.get("mime") or meta.get("mime") or guess_mime(name)
        data = ctx.artifacts.get(location)
        total += len(data)
        if total > ctx.limits.max_artifact_bytes:
            raise LimitExceeded(
                f"with.attachments: more than {ctx.limits.max_artifact_bytes} bytes in all "
                "(SHIFTFLOW_ARTIFACT_MAX_BYTES)"
            )
        maintype, _, subtype = mime.partition("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype or "octet-stream", filename=name)
    return message


def _refusal(code: int, reply: bytes, what: str) -> Exception:
    text = reply.decode("utf-8", "replace")
    if 400 <= code < 500:
        return ToolUnavailable(f"SMTP {what}: {code} {text} (temporary)")
    return ToolError(f"SMTP {what}: {code} {text}")


def _dot_stuffed(body: bytes) -> bytes:
    """The DATA payload: lines starting with '.' doubled, ending in CRLF.CRLF (RFC 5321 4.5.2)."""
    body = re.sub(rb"(?m)^\.", b"..", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def _open(host: str, port: int, security: str, timeout: float, credentials: Mapping[str, Any]) -> smtplib.SMTP:
    if security == "tls":
        return smtplib.SMTP_SSL(host, port, timeout=timeout, context=_tls(credentials))
    smtp = smtplib.SMTP(host, port, timeout=timeout)
    if security == "starttls":
        smtp.ehlo()
        if not smtp.has_extn("starttls"):
            smtp.close()
            raise ToolError(f"SMTP server {host}:{port} does not offer STARTTLS (connection security: starttls)")
        smtp.starttls(context=_tls(credentials))
    return smtp


def _endpoint(credentials: Mapping[str, Any]) -> tuple[str, int, str]:
    """(host, port, security) of the connection; the port defaults by security (465 for tls, else 587)."""
    host = credentials.get("host")
    if not host:
        raise ToolError("connection: the credential 'host' is missing")
    security = str(credentials.get("security") or "starttls")
    if security not in SECURITY:
        raise ToolError(f"connection: security {security!r} is not one of {', '.join(SECURITY)}")
    return str(host), int(credentials.get("port") or (465 if security == "tls" else 587)), security


@dataclass
class _Session:
    """An open SMTP session, and whether the message body has gone out on it."""

    smtp: smtplib.SMTP
    body_sent: bool = False


@contextlib.contextmanager
def _session(host: str, port: int, security: str, timeout: float,
             credentials: Mapping[str, Any]) -> Iterator[_Session]:
    """Open, greet and log in (AUTH when a username is given); QUIT on exit. smtplib and
    socket errors become step errors: 5xx, AUTH and TLS refusals permanent, the rest
    transient, unless the body was sent (``ToolOutcomeUnknown``: it may have been delivered).
    """
    session: _Session | None = None
    try:
        session = _Session(_open(host, port, security, timeout, credentials))
        try:
            session.smtp.ehlo_or_helo_if_needed()
            if credentials.get("username"):
                session.smtp.login(str(credentials["username"]), str(credentials.get("password") or ""))
            yield session
        finally:
            try:
                session.smtp.quit()
            except (smtplib.SMTPException, OSError):
                session.smtp.close()
    except smtplib.SMTPAuthenticationError as exc:
        raise ToolError(f"SMTP authentication refused: {exc.smtp_code} {_text(exc.smtp_error)}") from None
    except smtplib.SMTPNotSupportedError as exc:
        raise ToolError(f"SMTP server {host}:{port}: {exc}") from None
    except ssl.SSLCertVerificationError as exc:
        raise ToolError(f"SMTP server {host}:{port}: TLS certificate refused: {exc.verify_message}") from None
    except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException, OSError) as exc:
        if isinstance(exc, smtplib.SMTPResponseException) and 500 <= exc.smtp_code < 600:
            raise ToolError(f"SMTP server {host}:{port}: {exc.smtp_code} {_text(exc.smtp_error)}") from None
        if session is not None and session.body_sent:
            raise ToolOutcomeUnknown(
                f"SMTP server {host}:{port} took the message and then failed ({type(exc).__name__}: {exc}); "
                "it may have been delivered, so it is not sent again"
            ) from None
        reason = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else f"{type(exc).__name__}: {exc}"
        raise ToolUnavailable(f"SMTP server {host}:{port} unavailable: {reason}") from None


def verify_login(credentials: Mapping[str, Any], *, timeout: float, allow_private: bool) -> dict[str, Any]:
    """Prove a connection's SMTP settings without sending anything: connect, EHLO,
    STARTTLS or TLS as configured, AUTH when a username is given, QUIT.

    Returns:
        ``{"host", "port", "security", "authenticated", "extensions"}`` (no secret).

    Raises:
        ToolError: refused address, wrong credentials, untrusted certificate, no STARTTLS.
        ToolUnavailable: server down, unreachable, timed out, or a 4xx.
    """
    host, port, security = _endpoint(credentials)
    _check_host(host, port, allow_private)
    with _session(host, port, security, timeout, credentials) as session:
        extensions = sorted(session.smtp.esmtp_features)
    username = credentials.get("username")
    return {"host": host, "port": port, "security": security, "authenticated": bool(username),
            "extensions": extensions}


def send(params: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
    """Send one message (the ``email.send`` tool's function).

    Returns:
        ``{"message_id", "accepted": [...], "size"}``.

    Raises:
        ToolError: refused recipient/sender/message (5xx), failed AUTH, bad TLS certificate.
        ToolUnavailable: server down, unreachable, timed out, or a 4xx (before the body went out).
        ToolOutcomeUnknown: the body was sent and no answer came back.
    """
    host, port, security = _endpoint(ctx.credentials)
    sender = params.get("from") or ctx.credentials.get("from") or ctx.credentials.get("username")
    if not sender or "@" not in str(sender):
        raise ToolError("with.from: no sender address (give 'from', or 'from' in the connection)")
    sender = str(sender)
    recipients = _recipients(params["to"]) + list(params.get("cc") or []) + list(params.get("bcc") or [])
    body = _message(params, ctx, sender).as_bytes()
    _check_host(host, port, ctx.allow_private)
    timeout = ctx.limits.smtp_timeout
    with _session(host, port, security, timeout, ctx.credentials) as session:
        options = [f"SIZE={len(body)}"] if session.smtp.has_extn("size") else []
        code, reply = session.smtp.mail(sender, options)
        if code != 250:
            raise _refusal(code, reply, f"sender {sender} refused")
        refused: dict[str, tuple[int, bytes]] = {}
        for recipient in recipients:
            code, reply = session.smtp.rcpt(recipient)
            if code not in (250, 251):
                refused[recipient] = (code, reply)
        if refused:
            session.smtp.rset()
            shown = ", ".join(f"{r} ({c} {m.decode('utf-8', 'replace')})" for r, (c, m) in refused.items())
            if all(400 <= c < 500 for c, _ in refused.values()):
                raise ToolUnavailable(f"SMTP recipients deferred, nothing sent: {shown}")
            raise ToolError(f"SMTP recipients refused, nothing sent: {shown}")
        code, reply = session.smtp.docmd("DATA")
        if code != 354:
            raise _refusal(code, reply, "DATA refused")
        session.body_sent = True
        session.smtp.send(_dot_stuffed(body))
        code, reply = session.smtp.getreply()
        if code != 250:
            raise _refusal(code, reply, "message refused")
    return {"message_id": str(_message_id(body)), "accepted": recipients, "size": len(body)}


def _text(reply: bytes | str) -> str:
    return reply.decode("utf-8", "replace") if isinstance(reply, bytes) else reply


def _message_id(body: bytes) -> str:
    found = re.search(rb"(?mi)^Message-ID:\s*(<[^>\r\n]+>)", body)
    return found.group(1).decode() if found else ""


_ATTACHMENT = {
    "type": "object",
    "required": ["artifact"],
    "additionalProperties": False,
    "properties": {
        "artifact": ARTIFACT_INPUT,
        "name": {"type": "string", "pattern": _LINE, "minLength": 1, "maxLength": 200},
        "mime": {"type": "string", "pattern": r"^[\w.+-]+/[\w.+-]+$"},
    },
}

TOOL = Tool(
    name="email.send",
    description="Send an email over SMTP (STARTTLS or TLS, AUTH), text and/or HTML, attachments from artifacts.",
    category="email",
    queue="tools.email",
    effect="once",
    integration="smtp",
    params_schema={
        "type": "object",
        "required": ["to", "subject"],
        "anyOf": [{"required": ["text"]}, {"required": ["html"]}],
        "additionalProperties": False,
        "properties": {
            # One address or a list: ``format``/``maxLength`` bind strings, the rest arrays.
            "to": {**_ADDRESS, **_ADDRESSES, "type": ["string", "array"], "minItems": 1},
            "cc": _ADDRESSES,
            "bcc": _ADDRESSES,
            "from": _ADDRESS,
            "reply_to": _ADDRESS,
            "subject": {"type": "string", "pattern": _LINE, "maxLength": 998},
            "text": {"type": "string"},
            "html": {"type": "string"},
            "attachments": {"type": "array", "items": _ATTACHMENT, "maxItems": 20},
        },
    },
    result_schema={
        "type": "object",
        "required": ["message_id", "accepted", "size"],
        "properties": {
            "message_id": {"type": "string"},
            "accepted": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "integer"},
        },
    },
    run=send,
)
