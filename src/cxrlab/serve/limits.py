"""Time limits on receiving a request: a client that sends its headers or its upload slowly (or
stops half-way) gets 408 instead of holding a connection and a parser for as long as it likes.

uvicorn bounds only the idle time between requests. The body's limit wraps the ASGI ``receive``
channel (FastAPI parses a multipart body before the endpoint runs); the headers' limit is a small
subclass of uvicorn's HTTP/1.1 protocol (:func:`header_deadline_protocol`).
"""

from __future__ import annotations

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooSlow(HTTPException):
    """The request body did not arrive in time (408); an HTTPException, so that FastAPI's body parser
    passes it on instead of turning it into 'error parsing the body'."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s")


class BodyTimeout:
    """ASGI middleware: every ``http.request`` message of a request must arrive within ``seconds`` of
    the request's start."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app, self.seconds = app, seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = anyio.current_time() + self.seconds
        complete = False

        async def timed_receive() -> Message:
            nonlocal complete
            if complete:  # after the body: waiting for a disconnect is not the client's fault
                return await receive()
            with anyio.move_on_after(max(0.0, deadline - anyio.current_time())) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise BodyTooSlow(self.seconds)
            complete = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        await self.app(scope, timed_receive, send)


def header_deadline_protocol(seconds: float) -> type:
    """uvicorn's HTTP/1.1 protocol with a time limit on each request's headers: a client that opens a
    connection and sends its request line and headers slowly (one line a second, say) gets 408 and
    the connection is closed after ``seconds``, instead of holding it for as long as it likes.

    uvicorn bounds the idle time between requests (keep-alive) and cxrlab's :class:`BodyTimeout` the
    body; neither bounds the headers, so this subclass arms a timer when a request's first bytes
    arrive (or the connection opens) and disarms it once h11 has parsed the request's headers.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            self._arm()

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(seconds, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._waiting_for_headers() and self.conn.their_state in (h11.IDLE, h11.DONE):
                self._arm()  # the first bytes of a request: its headers are on the clock
            super().data_received(data)
            if not self._waiting_for_headers():
                self._disarm()  # h11 parsed the headers: the body has its own limit

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol


def server_options(body_timeout_s: float) -> dict:
    """The uvicorn settings ``cxrlab serve`` runs with (tests start their servers with the same)."""
    return {"http": header_deadline_protocol(body_timeout_s), "timeout_graceful_shutdown": 10}
