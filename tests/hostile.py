"""A generated corpus of hostile inputs, one of each class a hostile user tried: files whose content
breaks a decoder, entries that are not files, names that are not UTF-8, very long or full of console
markup, images found only by their content, the same radiograph in several encodings, damaged model
files and settings out of range. ``tests/integration/test_hostile_corpus.py`` runs it through every
door."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from cxrlab.models.checkpoint import FORMAT, read_payload, write_payload
from tests.conftest import write_dicom, write_hostile_files, write_hostile_images

NOT_UTF8 = b"scan\xff\xfe.png"
"""A file name no UTF-8 decoder accepts (a Latin-1 export): kept escaped (``scan\\xff\\xfe.png``)."""


@dataclass
class Corpus:
    """The corpus in one folder.

    Attributes:
        folder: Where it lies.
        good: Names that must be screened (a row without an error).
        bad: Name -> a fragment of the reason it must be refused with.
        same: Names holding one radiograph losslessly (8-bit PNG, 16-bit PNG with a saturated
            pixel, DICOM with and without its preamble): their probabilities must agree.
    """

    folder: Path
    good: list[str] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)
    same: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        return self.folder / name

    @property
    def names(self) -> list[str]:
        return [*self.good, *self.bad]


def shown(name: str) -> str:
    """How a table and a message write ``name``: bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _dicom_without_preamble(source: Path, target: Path) -> None:
    target.write_bytes(source.read_bytes()[132:])  # file meta first, no 128-byte preamble nor DICM


def write_corpus(folder: Path, radiograph: np.ndarray, *, entries: bool = True) -> Corpus:
    """Write the corpus around one (H, W) uint8 ``radiograph``.

    Args:
        entries: Include entries that are not files (a FIFO, a device, a link loop); a class-folder
            tree given to ``manifest`` also holds them.
    """
    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(folder)
    png = cv2.imencode(".png", radiograph)[1].tobytes()
    jpeg = cv2.imencode(".jpg", radiograph, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    # found by content, whatever the name
    files = {"plain.png": png, "photo.jfif": jpeg, "IMG0001": png, "bad [final].png": png,
             "L" * 240 + ".png": png}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with open(os.fsencode(folder) + b"/" + NOT_UTF8, "wb") as f:
        f.write(png)
    corpus.good += [*files, os.fsdecode(NOT_UTF8)]
    # the same radiograph, losslessly, in other encodings: 16 bits with one saturated pixel, DICOM
    sixteen = radiograph.astype(np.uint16) * 257
    sixteen[0, 0] = 65535 if radiograph[0, 0] < 128 else 0
    sixteen[-1, -1] = 0 if sixteen[0, 0] else 65535  # an extreme at each end, as a burned-in marker
    cv2.imwrite(str(folder / "sixteen.png"), sixteen)
    write_dicom(folder / "scan.dat", radiograph.astype(np.uint16) * 16)
    _dicom_without_preamble(folder / "scan.dat", folder / "nopreamble")
    corpus.good += ["sixteen.png", "scan.dat", "nopreamble"]
    corpus.same = ["plain.png", "sixteen.png", "scan.dat", "nopreamble"]
    # files that are not (whole) images
    corpus.bad.update(write_hostile_images(folder))
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_text("hello")
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    damaged = bytearray((folder / "scan.dat").read_bytes())
    at = damaged.find(b"\x28\x00\x10\x00US")  # Rows (0028,0010), a US of 2 bytes, now claims 3
    damaged[at + 6:at + 8] = b"\x03\x00"
    (folder / "damaged.dcm").write_bytes(bytes(damaged))
    corpus.bad.update({"empty.png": "(0 bytes)", "text.png": "not an image", "truncated.png": "truncated",
                       "damaged.dcm": "not a readable DICOM file"})
    if entries:
        corpus.bad.update(write_hostile_files(folder))
    return corpus


def _nan_weights(payload: dict) -> None:
    payload["state_dict"]["head.fc.weight"] = torch.full_like(payload["state_dict"]["head.fc.weight"], float("nan"))


def _nan_threshold(payload: dict) -> None:
    payload["extra"].setdefault("screening", {})["operating_point"] = {"positive": "COVID-19", "threshold": float("nan")}


MODEL_CASES = {
    "nan weights": (_nan_weights, r"weight tensor\(s\) hold NaN or infinite values \(e.g. head.fc.weight"),
    "nan threshold": (_nan_threshold, "threshold nan is not a probability"),
    "missing keys": (lambda p: p.pop("state_dict") and p.pop("backbone"), "damaged model file: missing backbone, state_dict"),
    "more names than outputs": (lambda p: p.update(class_names=[*p["class_names"], "Other"]),
                                r"4 class name\(s\) for a head of 3 output\(s\)"),
    "wrong head size": (lambda p: p.update(num_classes=2, class_names=["COVID-19", "other"]),
                        "its weights do not fit a efficientnet_lite0 with 2 output"),
    "unknown backbone": (lambda p: p.update(backbone="vgg17"), "cannot build its model .*unknown name 'vgg17'"),
    "bad preprocessing": (lambda p: p["preprocess"].update(size=-3), "its preprocessing is invalid"),
}
"""A damaged model file -> a regular expression its one-line refusal matches."""


def broken_model(good: Path, folder: Path, case: str) -> Path:
    """``good`` with one of :data:`MODEL_CASES` applied, written as ``folder/<case>.pt``."""
    payload = read_payload(good, FORMAT, "model")
    MODEL_CASES[case][0](payload)
    return write_payload(payload, folder / f"{case.replace(' ', '-')}.pt")


def random_bytes_model(folder: Path) -> Path:
    path = folder / "random.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    return path


SETTINGS = {
    "lr=.inf": "optim.lr",
    "optim.attention_loss=.nan": "finite number",
    "seed=-1": "runtime.seed",
    "seed=1e20": "runtime.seed",
    "augment.crop_scale=[1.5,0.1]": "0 < low <= high <= 1",
    "ratios=[0.5,0.5,0.5]": "sum to 1",
    "head={hidden: [8], dropout: [2.0]}": "dropout in [0, 1)",
    "tracking.mlflow_uri=gopher://x": "unsupported tracking URI scheme",
    "precision=31": "precision",
    "batch_size=0": "optim.batch_size",
    "backbone=vgg17": "vgg17",
}
"""A ``--set`` assignment ``train`` must refuse -> a fragment of its one-line reason."""

