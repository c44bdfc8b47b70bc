"""``predict``: screen image files and folders; a table, a JSON record and an overlay per image."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

from cxrlab.core.errors import InvalidImageError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.data.images import find_images
from cxrlab.explain.gradcam import CamMethod
from cxrlab.explain.records import COLUMNS, RecordTable, overlay_name
from cxrlab.explain.screening import SCREEN_BATCH, Screener

log = logging.getLogger(__name__)


def predict_images(model_path: str | Path, inputs: Iterable[str | Path], out: str | Path, *,
                   segmenter: str | Path | None = None, method: CamMethod = "gradcam", overlays: bool = True,
                   progress: Callable[[int], None] | None = None, batch_size: int = SCREEN_BATCH) -> list[dict]:
    """Screen every image under ``inputs`` (files, and folders searched recursively); write
    ``predictions.csv`` (one row per input: ``image``, a probability column per class, ``predicted``,
    ``most_probable``, ``ood_score``, ``ood``, ``ood_reason``, ``overlay``, and ``error``: why an input
    was skipped, empty for the others), ``predictions.json`` (the same records) and
    ``overlays/<stem>_gradcam.png``. ``explain`` writes the same columns.

    An input that cannot be read is a row with its reason (and a warning); the others go on. The
    tables are rewritten every 50 images, so an interrupted run keeps what it finished. Images go
    through the model ``batch_size`` at a time.

    Returns:
        One record per input file.
    """
    out = Path(out)
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    with Screener(model_path, segmenter=segmenter, method=method) as screener:
        with RecordTable(out, "predictions", screener.class_names, COLUMNS) as table:
            for image, result in screener.screen_files(find_images(inputs), batch_size):
                if isinstance(result, InvalidImageError):
                    log.warning("%s", result)
                    table.add({"image": str(image), "error": result.reason})
                else:
                    record = {**result.record(), "overlay": ""}
                    if overlays:
                        target = out / "overlays" / overlay_name(image, taken)
                        atomic_write_bytes(target, result.overlay_png())
                        record["overlay"] = str(target)
                        for finding in list(result.finding_maps)[1:]:  # multi-label: each further called finding
                            extra = target.with_name(f"{target.stem}_{finding.replace(' ', '_')}.png")
                            atomic_write_bytes(extra, result.overlay_png(finding))
                    table.add(record)
                if progress:
                    progress(1)
    return table.records
