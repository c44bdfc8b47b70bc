"""Shared fixtures: tiny generated images, DICOMs, phantom sets and trees with planted bad files."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from cxrlab.data import generate_phantoms

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-real"


def gradient(h: int = 48, w: int = 64) -> np.ndarray:
    """A (h, w) uint8 test image with structure in both directions."""
    y, x = np.mgrid[0:h, 0:w]
    return ((x * 255 // max(w - 1, 1) + y * 2) % 256).astype(np.uint8)


def write_dicom(path: Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0, window: tuple[float, float] | None = None, patient_id: str = "P1",
                view: str = "PA", with_pixels: bool = True) -> Path:
    """Write a minimal uncompressed DICOM (uint16 pixels)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.ViewPosition, ds.Modality = patient_id, view, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if with_pixels:
        ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but holds almost no data (a bomb stand-in)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * (width + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def jpeg_declaring(path: Path, width: int, height: int) -> Path:
    """A small JPEG whose frame header (SOF0) claims width x height (a bomb stand-in for JPEG)."""
    buf = bytearray(cv2.imencode(".jpg", gradient(64, 64))[1].tobytes())
    sof = buf.index(b"\xff\xc0")
    buf[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(buf))
    return path


def write_hostile_images(folder: Path) -> dict[str, str]:
    """Files whose content breaks a decoder in a way a codec does not report by itself (the cases an
    upload can carry too).

    Returns:
        ``{file name: a fragment of the reason it must be refused with}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    raw = gradient(64, 64).astype(np.uint16) * 16
    jpeg_declaring(folder / "bomb.jpg", 20000, 20000)
    write_dicom(folder / "window-zero.dcm", raw, window=(1000, 0))
    write_dicom(folder / "window-negative.dcm", raw, window=(1000, -5))
    slope = write_dicom(folder / "slope.dcm", raw, slope=1.2345)
    slope.write_bytes(slope.read_bytes().replace(b"1.2345", b"abc   "))  # DS text a reader keeps as text
    good = cv2.imencode(".jpg", gradient(256, 256))[1].tobytes()
    (folder / "cut-with-eoi.jpg").write_bytes(good[: len(good) // 2] + b"\xff\xd9")  # ends as a whole JPEG does
    for name, value in (("nan.tif", np.nan), ("inf.tif", np.inf)):
        pixels = gradient(64, 64).astype(np.float32)
        pixels[10:20, 10:20] = value
        Image.fromarray(pixels, mode="F").save(folder / name)
    return {"bomb.jpg": "too large", "window-zero.dcm": "Window Width", "window-negative.dcm": "Window Width",
            "slope.dcm": "RescaleSlope 'abc' is not a number", "cut-with-eoi.jpg": "truncated JPEG",
            "nan.tif": "NaN or infinite", "inf.tif": "NaN or infinite"}


def write_hostile_files(folder: Path) -> dict[str, str]:
    """Entries that are not image files at all, with image names: a symbolic link loop, a FIFO and a
    device (a read would block or never end).

    Returns:
        ``{file name: a fragment of the reason it must be refused with}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "loop.png").symlink_to("loop.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    return {"loop.png": "symbolic link loop", "pipe.png": "not a regular file (a FIFO)",
            "zero.png": "not a regular file (a device)"}


@pytest.fixture(scope="session")
def phantoms(tmp_path_factory) -> Path:
    """A small phantom set (18 patients, 64 px); returns its manifest.csv."""
    return generate_phantoms(tmp_path_factory.mktemp("phantoms"), n_patients=18, size=64, seed=1)


# a phantom's class as ChestX-ray14 findings: the multi-label fixture's labels follow what the images show
NIH_FINDINGS = {"COVID-19": "Consolidation|Infiltration", "Pneumonia": "Infiltration|Pneumonia", "Normal": "No Finding"}


@pytest.fixture(scope="session")
def nih_phantoms(phantoms, tmp_path_factory) -> Path:
    """ChestX-ray14's layout over the phantom images: ``Data_Entry_2017.csv`` in NIH's columns, findings
    from each phantom's class (:data:`NIH_FINDINGS`), images in ``images_001/images/`` and the
    official ``train_val_list.txt`` / ``test_list.txt`` (every fourth patient tests); returns the folder."""
    import pandas as pd

    root = tmp_path_factory.mktemp("nih")
    table = pd.read_csv(phantoms)
    (root / "images_001" / "images").mkdir(parents=True)
    names = []
    for k, (image, label, patient) in enumerate(zip(table["image"], table["label"], table["patient_id"])):
        name = f"{k // 4:08d}_{k % 4:03d}.png"
        (root / "images_001" / "images" / name).symlink_to(phantoms.parent / image)
        names.append((name, NIH_FINDINGS[label], patient))
    patients = {p: i + 1 for i, p in enumerate(sorted(set(table["patient_id"])))}
    entry = pd.DataFrame({"Image Index": [n for n, _, _ in names], "Finding Labels": [f for _, f, _ in names],
                          "Follow-up #": 0, "Patient ID": [patients[p] for _, _, p in names], "Patient Age": 50,
                          "Patient Gender": "F", "View Position": "PA"})
    entry.to_csv(root / "Data_Entry_2017_v2020.csv", index=False)
    test = entry["Patient ID"] % 4 == 0
    (root / "test_list.txt").write_text("\n".join(entry.loc[test, "Image Index"]) + "\n")
    (root / "train_val_list.txt").write_text("\n".join(entry.loc[~test, "Image Index"]) + "\n")
    return root


@pytest.fixture()
def bad_tree(tmp_path) -> tuple[Path, dict[str, str]]:
    """A folder-per-class tree with good images and planted bad files.

    Returns:
        ``(root, {bad file name: expected reason fragment})``.
    """
    root = tmp_path / "tree"
    for cls in ("COVID", "NORMAL", "Viral Pneumonia", "Lung_Opacity"):
        (root / cls).mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(str(root / "COVID" / f"covid-{i}.png"), gradient() + i)
        cv2.imwrite(str(root / "NORMAL" / f"IM-000{i}-0001.jpeg"), gradient())
        cv2.imwrite(str(root / "Viral Pneumonia" / f"person{i}_virus_1.jpeg"), gradient())
    cv2.imwrite(str(root / "Lung_Opacity" / "opacity-1.png"), gradient())
    (root / "COVID" / "empty.png").write_bytes(b"")
    (root / "COVID" / "notes.png").write_text("this is not an image\n")
    good = cv2.imencode(".jpg", gradient(256, 256))[1].tobytes()
    (root / "NORMAL" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    cv2.imwrite(str(root / "NORMAL" / "tiny.png"), np.zeros((1, 1), np.uint8))
    png_header_only(root / "COVID" / "bomb.png", 20000, 20000)
    write_dicom(root / "NORMAL" / "nopixels.dcm", np.zeros((64, 64)), with_pixels=False)
    write_dicom(root / "NORMAL" / "good.dcm", gradient(64, 64).astype(np.uint16) * 16, patient_id="D7")
    expected = {
        "empty.png": "empty file",
        "notes.png": "not an image",
        "truncated.jpg": "truncated",
        "tiny.png": "too small",
        "bomb.png": "too large",
        "nopixels.dcm": "no pixel data",
        "opacity-1.png": "unknown label",
    }
    return root, expected


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real CXR set; skips when it is not next to the project."""
    if not (REAL_DATA / "manifest.csv").exists():
        pytest.skip(f"real data not found at {REAL_DATA} (../shared/data/cxr-real)")
    return REAL_DATA


@pytest.fixture(scope="session")
def run_dir(phantoms, tmp_path_factory) -> Path:
    """A tiny run trained on phantoms (96 px, 2 epochs): its model file carries the screening reference.

    The papers' recipe (last 2 blocks, Adam 1e-3), pinned: the screening checks' margins on this
    fixture were measured with it, and a change of the default recipe must not move them."""
    from cxrlab.train import build_config, train

    out = tmp_path_factory.mktemp("run")
    config = build_config({"recipe": "papers", "data": str(phantoms), "out": str(out / "r"), "size": 96, "epochs": 2, "batch_size": 8,
                           "ratios": (0.6, 0.2, 0.2), "mlflow_uri": f"sqlite:///{out / 'mlflow.db'}"})
    return train(config).out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """A moto S3 server on loopback with bucket ``cxr``, one per test process (fsspec caches its S3
    file system, endpoint included); the environment points boto (and Spark's Python workers, which
    inherit it) at it. ``AWS_ENDPOINT_URL_S3`` is read whenever a client is
    made; ``FSSPEC_S3_ENDPOINT_URL`` only when fsspec is first imported, which in this worker may have
    happened already (Lightning imports it)."""
    pytest.importorskip("moto", reason="moto[server] (the test extra) is not installed")
    pytest.importorskip("s3fs", reason="s3fs (the test extra) is not installed")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    import s3fs

    for _ in range(100):  # the server takes a moment to listen
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    fs.mkdir("cxr")
    try:
        yield fs
    finally:
        patch.undo()
        server.terminate()
        server.wait(10)
