"""The service under hostile requests: undecodable uploads, every accepted format, duplicate parts, a
request over its time limit (its work stops), a full queue and a client that sends its body slowly."""

from __future__ import annotations

import io
import socket
import threading
import time
from urllib.parse import urlparse

import cv2
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cxrlab.serve import ServeSettings, create_app
from tests.conftest import write_hostile_images
from tests.serve.conftest import live_server


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def pixels(phantoms) -> np.ndarray:
    return cv2.imread(str(next((phantoms.parent / "images").glob("*.png"))), cv2.IMREAD_GRAYSCALE)


def test_every_hostile_image_gets_a_4xx_with_its_reason_in_one_line(client, tmp_path):
    for name, reason in write_hostile_images(tmp_path).items():
        response = client.post("/predict", files={"file": (name, (tmp_path / name).read_bytes())})
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert reason in detail and "\n" not in detail and "Traceback" not in detail, (name, detail)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("kind", ["WEBP", "GIF", "BMP", "TIFF"])
def test_the_formats_predict_reads_are_accepted(client, pixels, kind):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=kind)
    response = client.post("/predict", files={"file": (f"x.{kind.lower()}", buffer.getvalue())})
    assert response.status_code == 200, response.text


def test_two_file_parts_are_refused_rather_than_one_silently_dropped(client, pixels):
    png = cv2.imencode(".png", pixels)[1].tobytes()
    response = client.post("/predict", files=[("file", ("a.png", png)), ("file", ("b.png", png))])
    assert response.status_code == 400 and "exactly one 'file' part" in response.json()["detail"]


def test_a_request_over_its_time_limit_stops_its_work_and_the_next_one_is_served(run_dir, pixels, monkeypatch):
    from cxrlab.explain.screening import Screener, Screening

    original, encoded = Screener._features, []
    slow = threading.Event()

    def features(self, image):  # the forward pass of one request is made slow
        if slow.is_set():
            time.sleep(1.0)
        return original(self, image)

    monkeypatch.setattr(Screener, "_features", features)
    monkeypatch.setattr(Screening, "overlay_png", lambda self, _f=Screening.overlay_png: encoded.append(1) or _f(self))
    png = cv2.imencode(".png", pixels)[1].tobytes()
    with TestClient(create_app(run_dir, ServeSettings(timeout_s=0.3))) as c:
        slow.set()
        response = c.post("/predict", files={"file": ("a.png", png)})
        assert response.status_code == 504
        time.sleep(1.5)  # long enough for the abandoned thread to reach its next step
        assert encoded == []  # it stopped there: no overlay was encoded for a client that had gone
        slow.clear()
        again = TestClient(create_app(run_dir, ServeSettings(timeout_s=30)))
        with again:
            assert again.post("/predict", files={"file": ("a.png", png)}).status_code == 200
    assert encoded == [1]


def test_a_full_queue_answers_503_at_once(run_dir, pixels, monkeypatch):
    from cxrlab.explain.screening import Screener

    original, entered, release = Screener._features, threading.Event(), threading.Event()

    def features(self, image):
        entered.set()
        release.wait(30)  # the first request holds the model until released
        return original(self, image)

    monkeypatch.setattr(Screener, "_features", features)
    png = cv2.imencode(".png", pixels)[1].tobytes()
    with live_server(create_app(run_dir, ServeSettings(max_queue=1))) as url:
        first: list[httpx.Response] = []
        worker = threading.Thread(target=lambda: first.append(httpx.post(url + "predict", files={"file": ("a.png", png)},
                                                                         timeout=60)))
        worker.start()
        assert entered.wait(30)  # the first request is being screened
        second = httpx.post(url + "predict", files={"file": ("b.png", png)}, timeout=60)
        release.set()
        worker.join(60)
    assert second.status_code == 503 and "Retry-After" in second.headers
    assert first[0].status_code == 200


def test_a_client_that_sends_its_headers_one_line_at_a_time_gets_408(run_dir):
    """A slow-headers client (one header line every 0.4 s) is cut off at the limit, not after 75 s;
    a prompt request on another connection is answered meanwhile."""
    with live_server(create_app(run_dir, ServeSettings(body_timeout_s=1.0)), body_timeout_s=1.0) as url:
        address = urlparse(url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
            sock.settimeout(0.4)  # a header line every 0.4 s, listening in between
            start, answer = time.monotonic(), b""
            for line in [b"GET /health HTTP/1.1\r\n"] + [f"X-Slow-{i}: y\r\n".encode() for i in range(20)]:
                try:
                    sock.sendall(line)
                    answer = sock.recv(4096)
                except TimeoutError:  # no answer yet: the next line
                    assert httpx.get(url + "health", timeout=30).status_code == 200  # others are served
                    continue
                except OSError:  # the server closed the connection
                    break
                break
            elapsed = time.monotonic() - start
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert elapsed < 5, elapsed


def test_a_client_that_stops_sending_its_body_gets_408(run_dir):
    with live_server(create_app(run_dir, ServeSettings(body_timeout_s=0.5)), body_timeout_s=0.5) as url:
        address = urlparse(url)
        with socket.create_connection((address.hostname, address.port), timeout=30) as sock:
            head = ("POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                    "Content-Length: 100000\r\n\r\n")
            sock.sendall(head.encode() + b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n')
            answer = sock.recv(4096).decode(errors="replace")  # nothing more is sent: the server must answer
        assert answer.startswith("HTTP/1.1 408"), answer
        assert httpx.get(url + "health", timeout=30).status_code == 200
