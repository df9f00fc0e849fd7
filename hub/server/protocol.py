"""uvicorn's HTTP/1.1 protocol with the deadline it lacks: a request's headers.

uvicorn closes a keep-alive connection only after a response, and restarts that timer on
every byte, so a connection that opens and sends nothing, trickles its headers, or keeps
trickling a body the app already answered without reading, is held forever. With this
protocol a connection has ``timeout`` seconds from opening, or from its previous response,
until the next request's headers are complete; bodies are timed by ``BoundedBodies``.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

READ_SIZE = 64 * 1024


def deadline_protocol(timeout: float) -> type[asyncio.Protocol]:
    """The protocol class to pass as ``uvicorn.run(..., http=...)``.

    Example:
        >>> uvicorn.run(app, http=deadline_protocol(30.0))           # doctest: +SKIP
    """

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            if hasattr(transport, "max_size"):
                # asyncio reads up to 256 KiB per socket read, and uvicorn keeps a read until
                # the app takes it: many connections sending at once would hold that each.
                transport.max_size = READ_SIZE
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            cycle = self.cycle
            super().handle_events()
            if self.cycle is not cycle:  # a request's headers are complete: the app runs
                self._disarm()

        def on_response_complete(self) -> None:
            if self.cycle is not None:
                # Once answered, the app can no longer read the request's body (uvicorn's
                # receive says "disconnect"): what it had buffered of it is dropped now, not
                # when the connection closes.
                self.cycle.body = bytearray()
            # Armed first: a pipelined request already received is parsed (and disarms it)
            # inside the call below.
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._arm()
            super().on_response_complete()

    return DeadlineProtocol
