"""Dev mode: the whole flow in one process on embedded defaults.

SQLite file, Dramatiq's in-process broker with worker threads, an embedded
MongoDB-wire store (SecantusDB, an optional extra), the webhook ingress, a local
echo service for the example workflow's HTTP step, and a local fake LLM provider with the
prompt example (``examples/prompt_ops``) loaded against it. Nothing has to be installed.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any

import dramatiq
import yaml

from shiftflow import actors
from shiftflow.cli import dev_digest
from shiftflow.consumers import timers
from shiftflow.consumers.dead_letters import DeadLetters
from shiftflow.kernel.broker import build_broker, install
from shiftflow.kernel.db import bind_database
from shiftflow.kernel.errors import SettingsError
from shiftflow.kernel.metrics import serve_registry
from shiftflow.kernel.mongo import get_sink
from shiftflow.kernel.settings import Settings, configure
from shiftflow.models.manage import apikeys, catalog
from shiftflow.models.manage.access import Principal
from shiftflow.models.manage.apikeys import hash_key
from shiftflow.models.tables import webhook_secrets
from shiftflow.models.tables.registry import create_all
from shiftflow.models.tables.tenancy import ApiKey, User, WorkspaceMember
from shiftflow.models.tables.workflows import Webhook

DEV_ENV_FILE = "dev.env"
DEV_KEY_FILE = "dev.key"
HOOK_TOKEN = "dev-hello"


class _Echo(BaseHTTPRequestHandler):
    """Answers every POST with the JSON it received: the example's "outside service"."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b"{}"
        out = json.dumps({"received": json.loads(body or b"{}"), "service": "echo"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: dev mode prints its own progress."""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def embedded_mongo(data_dir: str) -> Iterator[str]:
    """Run SecantusDB in this process; yield its URL.

    Raises:
        SystemExit: SecantusDB (the ``embedded`` extra) is not installed.
    """
    try:
        from secantus.server import SecantusDBServer
    except ImportError:
        raise SystemExit("dev mode needs the embedded MongoDB-wire store: pip install 'shiftflow[embedded]'") from None
    server = SecantusDBServer(host="127.0.0.1", port=_free_port(), storage_path=os.path.join(data_dir, "mongo"))
    server.start()
    host, port = server.address
    try:
        # retryWrites=false: with it on, SecantusDB slows down after some thousands of writes
        # (docs/architecture.md#components).
        yield f"mongodb://{host}:{port}/?retryWrites=false&directConnection=true"
    finally:
        server.stop()


def curl_command(url: str, secret: str, body: str) -> str:
    """A shell one-liner that signs ``body`` (Standard Webhooks v1) and POSTs it."""
    hexkey = base64.b64decode(secret.removeprefix("whsec_")).hex()
    return (
        f"BODY='{body}'; ID=msg_$(date +%s%N); TS=$(date +%s); "
        f"SIG=$(printf '%s' \"$ID.$TS.$BODY\" | openssl dgst -sha256 -mac HMAC -macopt hexkey:{hexkey} -binary "
        f"| base64); curl -sS -X POST {url} -H 'content-type: application/json' -H \"webhook-id: $ID\" "
        f"-H \"webhook-timestamp: $TS\" -H \"webhook-signature: v1,$SIG\" -d \"$BODY\"; echo"
    )


def _load_example(settings: Settings, echo_url: str) -> Webhook:
    text = resources.files("shiftflow.examples").joinpath("hello.yaml").read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    data["vars"]["echo_url"] = echo_url
    workspace = catalog.ensure_workspace("dev", "Dev workspace")
    applied = catalog.apply_definition(workspace, data)
    hook = Webhook.get_or_none(Webhook.token == HOOK_TOKEN)
    if hook is None:
        hook = catalog.create_webhook(applied.workflow, token=HOOK_TOKEN)
    elif hook.workflow_id != applied.workflow.id:
        hook.workflow = applied.workflow
        hook.save()
    print(f"  workflow {applied.workflow.name!r} version {applied.version} ({'new' if applied.changed else 'unchanged'})")
    return hook


#: The prompt example (a repository file: dev mode runs from a checkout, ``make run``).
PROMPT_EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "prompt_ops" / "prompt.yaml"
#: The API key the dev fake LLM provider takes (it is not a secret: the fake is local).
FAKE_LLM_KEY = "sk-dev-fake-llm"


def _load_prompt_example(llm_base_url: str) -> str | None:
    """Point the dev workspace's ``openai-main`` connection at the fake provider and create
    the example prompt (published) unless it exists; its id, or None without the example."""
    from shiftflow.models.engine.connection_secrets import store_connection
    from shiftflow.models.manage import prompts
    from shiftflow.models.tables.prompts import Prompt

    workspace = catalog.ensure_workspace("dev", "Dev workspace")
    store_connection(workspace.id, "openai", "openai-main", {"api_key": FAKE_LLM_KEY, "base_url": llm_base_url})
    if not PROMPT_EXAMPLE.exists():
        return None
    data = yaml.safe_load(PROMPT_EXAMPLE.read_text(encoding="utf-8"))
    found = Prompt.get_or_none((Prompt.workspace == workspace.id) & (Prompt.name == data["name"]))
    if found is None:
        found = prompts.create_from_definition(Principal.operator(workspace.id), data)
        print(f"  prompt {found.name!r} created and published from {PROMPT_EXAMPLE}")
    return str(found.id)


def _dev_key(data_dir: str) -> str:
    """The dev workspace owner's API key: made on the first start, kept in ``dev.key``.

    Dev mode only: the file lives in the (local, git-ignored) data directory, readable by
    its owner, so every start can print the same key for the management API.
    """
    path = os.path.join(data_dir, DEV_KEY_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            text = handle.read().strip()
        if ApiKey.get_or_none(ApiKey.key_hash == hash_key(text)) is not None:
            return text
    workspace = catalog.ensure_workspace("dev", "Dev workspace")
    user, _ = User.get_or_create(email="dev@localhost", defaults={"name": "Dev owner"})
    WorkspaceMember.get_or_create(workspace=workspace.id, user=user.id, defaults={"role": "OWNER"})
    _, text = apikeys.create_key(Principal.operator(workspace.id), name="dev mode", user_id=user.id)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return text


def _check_port(host: str, port: int) -> None:
    """Refuse a busy port before anything starts, naming the way out."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise SettingsError(
                f"{host}:{port} is not free ({exc.strerror}): stop what listens there, or start dev mode on "
                f"another port with `shiftflow dev --port N` (or SHIFTFLOW_INGRESS_PORT)"
            ) from None


#: Dev mode's own secret key (when SHIFTFLOW_SECRET_KEYS is not set), beside its database.
DEV_SECRET_KEY_FILE = "secret.key"


def dev_secret_key(data_dir: str) -> str:
    """The key dev mode seals its stored secrets with: read from ``data_dir``, made there
    (random, owner-only) on first use, so that restarts still open what was sealed."""
    path = os.path.join(data_dir, DEV_SECRET_KEY_FILE)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32) + "\n")
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def run(settings: Settings) -> None:
    """Start everything in this process and serve until interrupted."""
    import uvicorn

    from shiftflow.kernel.batch_publisher import SendPublisher
    from shiftflow.producers.app import create_app
    from shiftflow.producers.scheduler.replica import run_replica

    # Absolute paths in dev.env: `--dev-dir` works from any directory.
    data_dir = os.path.abspath(settings.data_dir)
    database_url = settings.database_url
    if database_url.startswith("sqlite:///") and not database_url.startswith("sqlite:////"):
        database_url = "sqlite:///" + os.path.abspath(database_url[len("sqlite:///"):])
    settings = dataclasses.replace(settings, data_dir=data_dir, database_url=database_url)
    _check_port(settings.ingress_host, settings.ingress_port)
    os.makedirs(settings.data_dir, exist_ok=True)
    print(f"ShiftFlow dev mode (data in {settings.data_dir})")
    with embedded_mongo(settings.data_dir) as mongo_url:
        print(f"  embedded MongoDB-wire store at {mongo_url.split('/?')[0]}")
        keys = settings.secret_keys or (dev_secret_key(settings.data_dir),)
        settings = configure(dataclasses.replace(settings, mongo_url=mongo_url, metrics_port=0, secret_keys=keys))
        with open(os.path.join(settings.data_dir, DEV_ENV_FILE), "w", encoding="utf-8") as env:
            os.chmod(env.fileno(), 0o600)  # it holds the dev key
            env.write(f"SHIFTFLOW_MODE=dev\nSHIFTFLOW_DATA_DIR={settings.data_dir}\n"
                      f"SHIFTFLOW_MONGO_URL={mongo_url}\nSHIFTFLOW_DATABASE_URL={settings.database_url}\n"
                      f"SHIFTFLOW_SECRET_KEYS={','.join(keys)}\n")
        db = bind_database(settings.database_url)
        create_all(db)
        print(f"  SQLite database {settings.database_url}")
        broker = install(build_broker(settings, extra=[DeadLetters()]))
        actors.declare(broker)
        worker = dramatiq.Worker(broker, worker_threads=4)
        worker.start()
        stop_timers = threading.Event()
        threading.Thread(target=timers.run_loop, args=(stop_timers,), name="dev-timers", daemon=True).start()
        # Schedules and polling triggers fire here too, on the in-process broker.
        scheduler = threading.Thread(target=run_replica, args=(settings, SendPublisher, stop_timers),
                                     kwargs={"sync_seconds": 2.0}, name="dev-scheduler", daemon=True)
        scheduler.start()
        echo_port = 8099 if _port_free(8099) else _free_port()
        echo = ThreadingHTTPServer(("127.0.0.1", echo_port), _Echo)
        threading.Thread(target=echo.serve_forever, name="dev-echo", daemon=True).start()
        echo_url = f"http://127.0.0.1:{echo_port}/echo"
        # The page-digest example (when Chromium is here) first: `hello-order`, the one the
        # banner starts with, stays the newest workflow in the lists.
        digest = dev_digest.load(settings)
        from shiftflow.cli import dev_multi_phase  # the fake deploy service and the multi-phase examples

        # Before the hello example, which stays the newest workflow (the first one listed).
        deploy, multi_phase_lines = dev_multi_phase.start(catalog.ensure_workspace("dev", "Dev workspace"))
        hook = _load_example(settings, echo_url)
        from shiftflow.fakes.llm import FakeLlm, FakeLlmServer

        fake_llm = FakeLlmServer(FakeLlm(api_key=FAKE_LLM_KEY)).start()
        print(f"  fake LLM provider at {fake_llm.openai_base_url} (OpenAI) and {fake_llm.anthropic_base_url} "
              "(Anthropic)")
        prompt_id = _load_prompt_example(fake_llm.openai_base_url)
        key = _dev_key(settings.data_dir)
        base = settings.public_url or f"http://{settings.ingress_host}:{settings.ingress_port}"
        cli = f".venv/bin/shiftflow --dev-dir {settings.data_dir}"
        metrics_port = settings.ingress_metrics_port
        metrics_port = metrics_port if metrics_port and _port_free(metrics_port) else _free_port()
        metrics = serve_registry("127.0.0.1", metrics_port)
        banner = "\n".join([
            "\nTrigger the example workflow with a signed webhook:\n",
            "  " + curl_command(f"{base}/hooks/{hook.token}", webhook_secrets.reveal(hook)[0],
                                '{"amount": 42, "customer": "ada"}'),
            "\nThen show the finished execution, its steps and their log documents:\n",
            f"  {cli} executions show --latest\n",
            *dev_digest.banner(digest, base, curl_command),
            f"Workspace: dev (slug `dev`). A local echo service answers POSTs at {echo_url}",
            "(HTTP steps in dev mode can reach it; the scheduler and timers run in this process too).",
            f"Management API: {base}/api/v1 (OpenAPI at {base}/api/v1/openapi.json)",
            f"  API key of the dev owner: {key}  (kept in {os.path.join(settings.data_dir, DEV_KEY_FILE)})",
            f"  curl -H 'Authorization: Bearer {key}' {base}/api/v1/workflows",
            *multi_phase_lines,
            *([
                "\nRun the example prompt (examples/prompt_ops) against the local fake LLM, then read its runs:\n",
                f"  curl -s -X POST -H 'Authorization: Bearer {key}' -H 'content-type: application/json' "
                f"{base}/api/v1/prompts/{prompt_id}/run -d '{{\"variables\": {{\"ticket\": \"I was charged "
                f"twice\"}}, \"priority\": \"HIGH\"}}'; echo",
                f"  curl -s -H 'Authorization: Bearer {key}' {base}/api/v1/prompts/{prompt_id}/runs; echo",
                f"  {cli} prompts stats ticket-triage --workspace dev\n",
            ] if prompt_id else []),
            f"Metrics: http://127.0.0.1:{metrics_port}/metrics    Stop: Ctrl-C\n",
        ])
        server = uvicorn.Server(uvicorn.Config(create_app(settings), host=settings.ingress_host,
                                               port=settings.ingress_port, log_level="warning"))

        def announce() -> None:
            # The commands are printed once the server listens: a person (or a script)
            # who runs the printed curl at once must not be refused.
            while not server.started and not server.should_exit:
                time.sleep(0.05)
            if server.started:
                print(banner, flush=True)

        threading.Thread(target=announce, name="dev-banner", daemon=True).start()
        try:
            server.run()
        finally:
            stop_timers.set()
            scheduler.join(timeout=10)
            worker.stop()
            echo.shutdown()
            if digest is not None:
                digest.close()
            deploy.stop()
            fake_llm.stop()
            metrics.shutdown()
            sink = get_sink()
            if sink is not None:
                sink.close()
            db.close()
