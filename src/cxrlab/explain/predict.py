"""``predict``: screen image files and folders; a table, a JSON record and an overlay per image."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from cxrlab.core.errors import InvalidImageError
from cxrlab.core.io import atomic_write_bytes, atomic_write_text
from cxrlab.data.images import IMAGE_SUFFIXES
from cxrlab.explain.gradcam import CamMethod
from cxrlab.explain.screening import Screener

log = logging.getLogger(__name__)
SAVE_EVERY = 50  # rows between rewrites of the tables: a crash loses at most this much work


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given; folders searched recursively for image files (by suffix), sorted."""
    out: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            out += sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            out.append(item)  # missing files are reported per image, not here
    return out


def _overlay_name(image: Path, taken: set[str]) -> str:
    name, n = f"{image.stem}_gradcam.png", 1
    while name in taken:  # the same stem from two folders
        n += 1
        name = f"{image.stem}_{n}_gradcam.png"
    taken.add(name)
    return name


def _write(out: Path, rows: list[dict], class_names: list[str]) -> None:
    table = pd.DataFrame([{**r, **r["probabilities"]} for r in rows if "error" not in r],
                         columns=["image", *class_names, "predicted", "ood_score", "ood", "ood_reason", "overlay"])
    atomic_write_text(out / "predictions.csv", table.to_csv(index=False))
    atomic_write_text(out / "predictions.json", json.dumps(rows, indent=2) + "\n")


def predict_images(model_path: str | Path, inputs: Iterable[str | Path], out: str | Path, *,
                   segmenter: str | Path | None = None, method: CamMethod = "gradcam", overlays: bool = True,
                   progress: Callable[[int], None] | None = None) -> list[dict]:
    """Screen every image under ``inputs``; write ``predictions.csv`` (one row per screened image:
    ``image``, a probability column per class, ``predicted``, ``ood_score``, ``ood``, ``ood_reason``,
    ``overlay``),
    ``predictions.json`` (the same plus ``most_probable``, and an ``error`` record per skipped
    file) and ``overlays/<stem>_gradcam.png``.

    Unreadable files are skipped and reported; the tables are rewritten every 50 images, so an
    interrupted run keeps what it finished.

    Returns:
        One record per input file.
    """
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    taken: set[str] = set()
    with Screener(model_path, segmenter=segmenter, method=method) as screener:
        for i, image in enumerate(expand_inputs(inputs)):
            try:
                result = screener.screen_file(image)
            except InvalidImageError as err:
                log.warning("%s", err)
                rows.append({"image": str(image), "error": err.reason})
            else:
                record = {**result.record(), "overlay": ""}
                if overlays:
                    target = out / "overlays" / _overlay_name(image, taken)
                    atomic_write_bytes(target, result.overlay_png())
                    record["overlay"] = str(target)
                rows.append(record)
            if progress:
                progress(1)
            if (i + 1) % SAVE_EVERY == 0:
                _write(out, rows, screener.class_names)
        _write(out, rows, screener.class_names)
    return rows
