"""The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /model``, the page at ``/``, docs at ``/docs``.

One :class:`cxrlab.explain.Screener` per app, loaded at start-up and closed at shutdown; each
screening runs in a worker thread (never on the event loop), one at a time, under a time limit
that also stops the thread's work at its next step (a 504 frees the core for the next request);
at most ``max_queue`` requests wait, the next get 503. A request body that does not arrive within
``body_timeout_s`` gets 408 (a slow client holds no connection for long). Uploads are checked
before decoding (size, content sniffing, exactly one file part), decoded with the
decompression-bomb guard, never written to disk unless ``store_uploads`` is set, and errors reach
the client as a one-line reason without a stack trace.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import anyio
import anyio.to_thread
from fastapi import FastAPI, File, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

import cxrlab
from cxrlab.core.errors import CxrlabError, DeadlineExceeded, InvalidImageError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.explain.model_card import NOTICE
from cxrlab.explain.screening import Screener
from cxrlab.serve.limits import BodyTimeout
from cxrlab.serve.uploads import ACCEPTED, UploadRejected, safe_name, sniff

log = logging.getLogger(__name__)
CHUNK = 1 << 20
MULTIPART_SLACK = 64 * 1024  # boundaries and part headers around the file


@dataclass(frozen=True)
class ServeSettings:
    """How the service treats requests.

    Attributes:
        max_upload_mb: Larger uploads get 413 (checked on the declared length and while reading).
        timeout_s: A screening (queue wait included) that takes longer gets 504.
        store_uploads: Folder to keep accepted uploads in (under random names); ``None``: nothing stored.
        segmenter: Lung segmenter file, for models whose preprocessing uses lung masks.
        compile: Compile the model at start-up (slower start, faster requests).
        overlay_side: Longest side of the returned overlay (smaller: faster answers, lighter pages).
        max_queue: Requests screened or waiting at once; more get 503 at once (not a 504 later).
        body_timeout_s: A request whose body has not fully arrived after this long gets 408.
    """

    max_upload_mb: float = 20.0
    timeout_s: float = 30.0
    store_uploads: Path | None = None
    segmenter: Path | None = None
    compile: bool = False
    overlay_side: int = 512
    max_queue: int = 16
    body_timeout_s: float = 30.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


def _error(status: int, reason: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"detail": " ".join(reason.split())}, status_code=status, headers=headers)


def _status_for(err: InvalidImageError) -> int:
    return 413 if err.reason.startswith("image too large") else 422


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    parts, size = [], 0
    while chunk := await upload.read(CHUNK):
        size += len(chunk)
        if size > limit:
            raise UploadRejected(413, f"upload larger than the limit of {limit / 1024 / 1024:g} MB")
        parts.append(chunk)
    return b"".join(parts)


class _Slot:
    """One request's place in the queue: given back by the request when its work never started, else by
    the worker thread when the work ends (a 504 answers the client before that)."""

    def __init__(self, queue: _Queue) -> None:
        self._queue, self._started, self._released = queue, False, False

    def running(self) -> None:
        with self._queue.lock:
            self._started = True

    def release(self) -> None:
        with self._queue.lock:
            if not self._released:
                self._released = True
                self._queue.taken -= 1

    def release_unless_running(self) -> None:
        with self._queue.lock:
            started = self._started
        if not started:
            self.release()


class _Queue:
    """Requests screened or waiting, at most ``size`` (threads and the event loop both count)."""

    def __init__(self, size: int) -> None:
        self.size, self.taken, self.lock = size, 0, threading.Lock()

    def take(self) -> _Slot | None:
        with self.lock:
            if self.taken >= self.size:
                return None
            self.taken += 1
        return _Slot(self)


def create_app(model_path: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The app for one model file or run folder (loaded now; its Grad-CAM hooks released at shutdown).

    Raises:
        ConfigError: not a model file, or a model that needs lung masks without a segmenter.
    """
    settings = settings or ServeSettings()
    queue = _Queue(settings.max_queue)
    # loaded here, not at start-up: a bad model file fails before a server starts, in one line
    screener = Screener(model_path, segmenter=settings.segmenter, compile=settings.compile,
                        overlay_side=settings.overlay_side)
    card = screener.card()
    state: dict = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        state["limiter"] = anyio.CapacityLimiter(1)  # one screening at a time (the Grad-CAM hooks hold state)
        log.info("serving %s (%s)", model_path, card["model"]["backbone"])
        yield
        screener.close()

    # the whole request body is capped before parsing (FastAPI's limit: a bigger upload is never
    # spooled to disk); the file part is measured again below for a precise message
    app = FastAPI(title="cxrlab screening", version=cxrlab.__version__, lifespan=lifespan,
                  description=f"Chest X-ray screening with Grad-CAM: {NOTICE}.",
                  max_body_size=settings.max_upload_bytes + MULTIPART_SLACK)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        if err.status_code == 413:
            return _error(413, f"upload larger than the limit of {settings.max_upload_mb:g} MB")
        return _error(err.status_code, str(err.detail))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error on %s", request.url.path)  # the trace stays in the server log
        return _error(500, "internal error")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return resources.files("cxrlab.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/health")
    async def health() -> dict:
        """Liveness: the model is loaded."""
        return {"status": "ok", "model": Path(model_path).name, "classes": screener.class_names}

    @app.get("/model")
    async def model() -> dict:
        """The model card: backbone, fine-tuning degree, training data, test figures with 95% CIs,
        operating point, out-of-distribution check, intended use."""
        return card

    @app.post("/predict", responses={400: {}, 408: {}, 413: {}, 415: {}, 422: {}, 503: {}, 504: {}})
    async def predict(request: Request, file: Annotated[UploadFile, File(description=ACCEPTED)]):
        """Per-class probabilities, the predicted class (at the model's operating point), an
        out-of-distribution flag and the Grad-CAM overlay (PNG, base64)."""
        name = safe_name(file.filename)
        if len((await request.form()).getlist("file")) != 1:  # parsed once already: no second read
            return _error(400, "send exactly one 'file' part (one image per request)")
        try:
            buf = await _read_limited(file, settings.max_upload_bytes)
            sniff(buf, name)
        except UploadRejected as err:
            return _error(err.status, err.reason)
        slot = queue.take()
        if slot is None:
            return _error(503, f"{settings.max_queue} screenings already running or waiting; try again shortly",
                          {"Retry-After": str(max(1, round(settings.timeout_s / 4)))})
        start = time.perf_counter()
        deadline = time.monotonic() + settings.timeout_s
        try:
            with anyio.fail_after(settings.timeout_s):
                body = await anyio.to_thread.run_sync(_screen, buf, name, deadline, slot, abandon_on_cancel=True,
                                                      limiter=state["limiter"])
        except TimeoutError:  # also the thread's own DeadlineExceeded
            return _error(504, f"screening took longer than {settings.timeout_s:g} s; try again later")
        except InvalidImageError as err:
            return _error(_status_for(err), f"{name}: {err.reason}")
        except CxrlabError as err:
            return _error(422, str(err))
        finally:
            slot.release_unless_running()
        if settings.store_uploads is not None:
            atomic_write_bytes(Path(settings.store_uploads) / f"{uuid.uuid4().hex}-{name}", buf)
        return {**body, "seconds": round(time.perf_counter() - start, 4), "notice": NOTICE}

    def _screen(buf: bytes, name: str, deadline: float, slot: _Slot) -> dict:
        """Screening and the overlay's PNG encoding: both off the event loop; both stop once the
        request's deadline has passed (its client has had its 504). The queue slot is given back
        here, when the work really ends, not when an impatient client was answered."""
        slot.running()
        try:
            result = screener.screen_bytes(buf, name, deadline)
            if time.monotonic() > deadline:
                raise DeadlineExceeded("screening stopped before encoding the overlay: its time limit passed")
            return {**result.record(), "overlay_png_base64": base64.b64encode(result.overlay_png()).decode("ascii")}
        finally:
            slot.release()

    app.add_middleware(BodyTimeout, seconds=settings.body_timeout_s)
    return app
