"""The web service through its HTTP API (httpx via FastAPI's TestClient): answers, model card, bad uploads."""

from __future__ import annotations

import base64

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cxrlab.serve import ServeSettings, create_app
from tests.conftest import png_header_only, write_dicom

CLASSES = ["COVID-19", "Pneumonia", "Normal"]


@pytest.fixture(scope="module")
def client(run_dir):
    with TestClient(create_app(run_dir, ServeSettings(max_upload_mb=1)), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def xray(phantoms) -> bytes:
    return next((phantoms.parent / "images").glob("*.png")).read_bytes()


def test_predict_answers_probabilities_class_ood_flag_and_an_overlay(client, xray):
    response = client.post("/predict", files={"file": ("chest.png", xray, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body["probabilities"]) == CLASSES and abs(sum(body["probabilities"].values()) - 1) < 1e-5
    assert body["predicted"] in CLASSES and isinstance(body["ood"], bool) and body["ood_score"] > 0
    assert "not for clinical diagnosis" in body["notice"]
    overlay = cv2.imdecode(np.frombuffer(base64.b64decode(body["overlay_png_base64"]), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(xray, np.uint8), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape[:2] == original.shape


def test_dicom_and_jpeg_uploads_are_screened(client, xray, tmp_path):
    pixels = cv2.imdecode(np.frombuffer(xray, np.uint8), cv2.IMREAD_GRAYSCALE)
    write_dicom(tmp_path / "x.dcm", pixels.astype(np.uint16) * 16)
    jpeg = cv2.imencode(".jpg", pixels)[1].tobytes()
    for name, data in (("x.dcm", (tmp_path / "x.dcm").read_bytes()), ("x.jpg", jpeg)):
        response = client.post("/predict", files={"file": (name, data)})
        assert response.status_code == 200, (name, response.text)


def test_health_model_card_and_openapi(client):
    assert client.get("/health").json()["status"] == "ok"
    card = client.get("/model").json()
    assert card["model"]["backbone"] == "efficientnet_lite0" and card["model"]["classes"] == CLASSES
    assert "research use only" in card["intended_use"].lower() and "not for clinical diagnosis" in card["notice"]
    assert card["test"].startswith("not measured")  # a plain run has no held-out figures: it says so
    assert card["operating_point"]["chosen_on"] == "validation" and card["out_of_distribution"]["threshold"] > 0
    assert card["out_of_distribution"]["inverted_image_check"]["validation_accuracy"] >= 0.95
    assert set(card["training_data"]["images"]) == {"train", "val", "test"}
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    assert "Drop a chest X-ray" in client.get("/").text


@pytest.mark.parametrize(("name", "make", "status", "reason"), [
    ("empty.png", lambda tmp: b"", 400, "empty upload"),
    ("notes.txt", lambda tmp: b"patient notes, not an image", 415, "not a PNG, JPEG, TIFF, BMP, GIF, WebP or DICOM"),
    ("notes.png", lambda tmp: b"%PDF-1.7 binary \x00\x01\x02 stuff", 415, "not a PNG"),
    ("cut.png", lambda tmp: cv2.imencode(".png", np.random.default_rng(0).integers(0, 255, (300, 300), np.uint8))[1].tobytes()[:4000],
     422, "truncated"),
    ("tiny.png", lambda tmp: cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes(), 422, "too small"),
    ("bomb.png", lambda tmp: png_header_only(tmp / "bomb.png", 30000, 30000).read_bytes(), 413, "decompression bomb"),
    ("big.png", lambda tmp: b"\x89PNG\r\n\x1a\n" + bytes(1 << 20), 413, "larger than the limit of 1 MB"),
])
def test_bad_uploads_get_a_4xx_with_a_reason_and_no_stack_trace(client, tmp_path, name, make, status, reason):
    response = client.post("/predict", files={"file": (name, make(tmp_path))})
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert reason in detail and "Traceback" not in detail and str(tmp_path) not in detail


def test_bodies_far_over_the_limit_are_refused_before_parsing(client):
    huge = b"\x89PNG\r\n\x1a\n" + bytes(8 << 20)
    declared = client.post("/predict", files={"file": ("huge.png", huge)})  # Content-Length says 8 MB
    assert declared.status_code == 413 and declared.text == "Content Too Large"

    def chunked():  # no Content-Length: counted while it streams in
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="huge.png"\r\n\r\n'
        yield from (bytes(1 << 20) for _ in range(8))
        yield b"\r\n--b--\r\n"

    streamed = client.post("/predict", content=chunked(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "larger than the limit" in streamed.json()["detail"]
    assert client.get("/health").status_code == 200


def test_client_paths_are_reduced_to_a_name_and_uploads_are_not_stored_by_default(run_dir, xray, tmp_path):
    store = tmp_path / "kept"
    with TestClient(create_app(run_dir, ServeSettings(store_uploads=store))) as c:
        body = c.post("/predict", files={"file": ("../../../etc/passwd.png", xray)}).json()
    assert body["image"] == "passwd.png"
    kept = list(store.iterdir())
    assert len(kept) == 1 and kept[0].name.endswith("-passwd.png") and kept[0].read_bytes() == xray
    with TestClient(create_app(run_dir, ServeSettings(store_uploads=store))) as c:  # names no file system takes
        for name in ("a\x00b.png", "é" * 200 + ".png"):
            response = c.post("/predict", files={"file": (name, xray)})
            assert response.status_code == 200, (name[:8], response.text)
    from cxrlab.serve.uploads import safe_name

    assert safe_name("a\x00b\n.png") == "ab.png"  # a NUL byte as some clients send it, raw
    names = [p.name for p in store.iterdir()]
    assert any(n.endswith("-" + "é" * 75) for n in names) and all(len(n.encode()) <= 255 and "\x00" not in n
                                                                    for n in names)
    with TestClient(create_app(run_dir)) as c:  # default: nothing written anywhere
        c.post("/predict", files={"file": ("a.png", xray)})
    assert len(list(store.iterdir())) == 3


def test_a_screening_over_the_time_limit_gets_504(run_dir, xray):
    with TestClient(create_app(run_dir, ServeSettings(timeout_s=1e-4))) as c:
        response = c.post("/predict", files={"file": ("a.png", xray)})
        assert response.status_code == 504 and "longer than" in response.json()["detail"]
        assert c.get("/health").status_code == 200  # the service carries on


def test_an_unexpected_error_is_a_500_without_internals(run_dir, xray, monkeypatch):
    from cxrlab.explain.screening import Screener

    def broken(self, buf, name):
        raise RuntimeError("secret internal state /opt/model")

    monkeypatch.setattr(Screener, "screen_bytes", broken)
    with TestClient(create_app(run_dir), raise_server_exceptions=False) as c:
        response = c.post("/predict", files={"file": ("a.png", xray)})
    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
