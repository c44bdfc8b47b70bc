"""A real uvicorn server on loopback, in a thread, for tests that need concurrency or raw sockets."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn


@contextlib.contextmanager
def live_server(app, body_timeout_s: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on a free loopback port as ``cxrlab serve`` does (its uvicorn options); yields its
    base URL; shuts it down gracefully (the lifespan closes the screener)."""
    from cxrlab.serve.limits import server_options

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    instance = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                             **server_options(body_timeout_s)))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not instance.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        instance.should_exit = True
        thread.join(timeout=30)
        assert not thread.is_alive()
