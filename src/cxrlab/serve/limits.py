"""A time limit on receiving a request's body: a client that sends its upload slowly (or stops
half-way) gets 408 instead of holding a connection and a parser for as long as it likes.

uvicorn limits keep-alive and header time, not body time, and FastAPI parses a multipart body
before the endpoint runs, so the limit wraps the ASGI ``receive`` channel.
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
