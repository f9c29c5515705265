"""A bare TCP relay: the least CPU any Python server can spend per forwarded chunk.

It parses nothing: each accepted connection gets its own connection to the upstream
and bytes are copied both ways as they arrive, with back-pressure (a side that
cannot keep up pauses reading on the other). Clients send the upstream's own
request through it, plain or TLS end to end. Whatever a real server spends above
this is the price of HTTP, SSE and its framework.

``python -m bench.relay --port P --upstream-port U``
"""

from __future__ import annotations

import argparse
import asyncio
from typing import cast

from bench import aio

CONNECT_TIMEOUT_SECONDS = 10.0


class Side(asyncio.Protocol):
    """One end of a relayed connection: what it receives, its peer sends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Side | None = None
        self.pending: list[bytes] = []  # received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def link(self, peer: Side) -> None:
        self.peer = peer
        for data in self.pending:
            self.data_received(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
        else:
            self.peer.transport.write(data)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write_eof()
        return True  # keep the other direction open until the peer is done

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class ClientSide(Side):
    """The accepted end; it opens the upstream end as soon as it is accepted."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__()
        self.upstream_port = upstream_port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self) -> None:
        assert self.transport is not None
        upstream = Side()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_SECONDS):
                await asyncio.get_running_loop().create_connection(
                    lambda: upstream, "127.0.0.1", self.upstream_port
                )
        except (OSError, TimeoutError):
            self.transport.close()
            return
        if self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        upstream.link(self)
        self.link(upstream)


async def main(port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: ClientSide(upstream_port), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    aio.run(main(args.port, args.upstream_port))


if __name__ == "__main__":
    cli()
