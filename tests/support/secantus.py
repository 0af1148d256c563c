"""SecantusDB (a MongoDB-wire server) in a process of its own, for the Mongo log tests."""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port, port_open


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class SecantusProcess:
    """A ``secantusd-py`` server in its own process, on a free loopback port, in a temp dir.

    A process rather than the in-process ``SecantusDBServer``: SecantusDB is the largest
    CPU user of a logging workflow and must not share the test process's
    GIL, and a crash in its storage engine must not take pytest down with it. The child
    gets SIGTERM when pytest dies, so a killed session leaves no server behind.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sf-secantus-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The client URL; retryWrites=false, else SecantusDB slows 20x after ~15k writes."""
        return f"mongodb://127.0.0.1:{self.port}/?retryWrites=false&serverSelectionTimeoutMS=10000"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and return its URL once it answers ``ping``.

        Raises:
            RuntimeError: it did not answer within ``timeout`` seconds (three ports tried);
                the message ends with its log.
        """
        config = self.dir / "secantusd.toml"
        config.write_text("# empty: stops discovery of ./secantusd.toml and /etc/secantus\n")
        exe = Path(sys.executable).with_name("secantusd-py")
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "secantus"]
        for _attempt in range(3):  # a free port can be taken between the probe and the bind
            self.port = free_port()
            args = ["--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)]
            args += ["--storage-path", str(self.dir / "data"), "--log-level", "WARNING"]
            with (self.dir / "secantusd.log").open("ab") as log:
                self.proc = subprocess.Popen(
                    [*command, *args],
                    cwd=self.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if port_open("127.0.0.1", self.port, timeout=0.5) and self.ping():
                    return self.url
                time.sleep(0.05)
            self.stop(keep_dir=True)
        log_text = (self.dir / "secantusd.log").read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"SecantusDB did not start within {timeout:g}s; its log ends:\n{log_text}")

    def ping(self) -> bool:
        """True when the server answers ``ping`` within 2 s."""
        import pymongo

        client: Any = pymongo.MongoClient(self.url, serverSelectionTimeoutMS=2000, connectTimeoutMS=2000)
        try:
            client.admin.command("ping")
            return True
        except Exception:
            return False
        finally:
            client.close()

    def stop(self, keep_dir: bool = False, graceful: bool = False) -> None:
        """Stop the server and remove its directory.

        Parameters:
            keep_dir: keep the storage directory (for a restart on the same data).
            graceful: SIGTERM and wait (SecantusDB's shutdown takes ~2 s) instead of SIGKILL,
                which is enough for data that is thrown away.
        """
        if self.proc is not None:
            if self.proc.poll() is None:
                if graceful or keep_dir:
                    self.proc.terminate()
                else:
                    self.proc.kill()
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

