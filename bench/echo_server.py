"""The loopback echo service of ``bench_engine.py``'s outside-call workloads.

    python bench/echo_server.py PORT_FILE

A bare asyncio HTTP/1.1 server (uvloop when installed) with keep-alive: every request is
answered ``200`` with a small JSON body echoing the request's body length, whatever its
path or method. No framework and no per-request thread, so at the benchmark's rates it
costs well under a tenth of a millisecond of CPU per call and is never the bottleneck
(its CPU is reported as its own component). It binds 127.0.0.1 on a free port and writes
the port to ``PORT_FILE`` once it listens; it stops on SIGTERM or when its parent dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

_HEAD_END = b"\r\n\r\n"


class Echo(asyncio.Protocol):
    """One keep-alive connection: parse heads by ``Content-Length``, answer each request."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport (answers go to it)."""
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer (pipelining included)."""
        self.buffer += data
        while True:
            end = self.buffer.find(_HEAD_END)
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            close = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                lowered = name.strip().lower()
                if lowered == "content-length":
                    length = int(value.strip() or 0)
                elif lowered == "connection" and value.strip().lower() == "close":
                    close = True
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            self.buffer = self.buffer[total:]
            body = b'{"ok": true, "echoed": %d}' % length
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            if close:
                self.transport.close()
                return


async def serve(port_file: Path) -> None:
    """Listen on a free loopback port, publish it, serve until SIGTERM."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=1024)
    port = server.sockets[0].getsockname()[1]
    tmp = port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.rename(port_file)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    parent = os.getppid()

    async def orphaned() -> None:
        while os.getppid() == parent:
            await asyncio.sleep(1.0)
        stop.set()

    watcher = asyncio.create_task(orphaned())
    await stop.wait()
    watcher.cancel()
    server.close()


def main() -> None:
    """Entry point: ``echo_server.py PORT_FILE``."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
