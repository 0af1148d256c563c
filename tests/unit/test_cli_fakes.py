"""``shiftflow fakes llm|deploy`` as a person runs them: a process that serves until Ctrl-C."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shiftflow.cli.main import main
from shiftflow.kernel.llm import LlmRequest, Message, make_client
from tests.support.stopping import DIAGNOSABLE, stop_or_explain

SHIFTFLOW = str(Path(sys.executable).with_name("shiftflow"))


def _ctrl_c_ignored_and_blocked() -> None:
    """What a background job of a shell, or a parent that blocked signals, hands down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


@contextmanager
def serving(*args: str, stop: signal.Signals = signal.SIGINT, inherited_ignore: bool = False,
            command: tuple[str, ...] = ("fakes",)) -> Iterator[list[str]]:
    """Run ``shiftflow fakes ARGS`` until it printed its Stop line; yield what it printed; stop it with ``stop``."""
    proc = subprocess.Popen([SHIFTFLOW, *command, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=DIAGNOSABLE, preexec_fn=_ctrl_c_ignored_and_blocked if inherited_ignore else None)
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "Stop: Ctrl-C" in line:
                break
        assert lines and "Stop: Ctrl-C" in lines[-1], "\n".join(lines)
        yield lines
    finally:
        assert stop_or_explain(proc, stop) == 0


def test_fakes_llm_serves_both_apis_until_interrupted():
    with serving("llm", "--api-key", "sk-demo-key-123456", "--alias", "fake-echo=fake-echo-2025-01-01") as lines:
        connections = {
            line.split(":", 1)[0].strip(): json.loads(line.split(":", 1)[1])
            for line in lines
            if line.strip().startswith(("openai:", "anthropic:"))
        }
        assert set(connections) == {"openai", "anthropic"}
        for provider, credentials in connections.items():
            with make_client(provider, credentials, allow_private=True) as client:
                out = client.complete(LlmRequest(model="fake-echo", messages=(Message.user("ping"),)))
                assert out.text == "echo: ping" and out.model == "fake-echo-2025-01-01"


@pytest.mark.parametrize("command", [("fakes", "llm"), ("fakes", "deploy"), ("sideshift", "fakes")])
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_a_fake_even_when_the_parent_ignored_or_blocked_it(command, stop):
    """Started from a shell's background job SIGINT arrives ignored (and a parent may have
    blocked it): a command that says "Stop: Ctrl-C" must still stop on it."""
    with serving(stop=stop, inherited_ignore=True, command=command) as lines:
        assert "Stop: Ctrl-C" in lines[-1]


def test_fakes_deploy_runs_a_deployment_in_real_time():
    stop = signal.SIGTERM  # as a process supervisor stops it
    with serving("deploy", "--queued-seconds", "0", "--building-seconds", "0", "--token", "t", stop=stop) as lines:
        root = next(line.split("API root ", 1)[1].split()[0] for line in lines if "API root" in line)
        with httpx.Client(base_url=root, headers={"authorization": "Bearer t"}, timeout=10) as http:
            made = http.post("/deployments", json={"project": "web", "ref": "main"})
            assert made.status_code == 201
            assert http.get(f"/deployments/{made.json()['id']}").json()["status"] == "ready"


def test_a_busy_port_or_a_bad_flag_is_a_usage_error(capsys):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        port = sock.getsockname()[1]
        for service in ("llm", "deploy"):
            assert main(["fakes", service, "--port", str(port)]) == 2
            err = capsys.readouterr().err
            assert "--port" in err and str(port) in err
    assert main(["fakes", "llm", "--alias", "nonsense"]) == 2
    assert "--alias: expected MODEL=ANSWERED" in capsys.readouterr().err
    assert main(["fakes", "llm", "--delay", "-1"]) == 2
    assert "--delay" in capsys.readouterr().err
    assert main(["fakes", "deploy", "--building-seconds", "-1"]) == 2
    assert "--building-seconds" in capsys.readouterr().err
