"""``explain``: image files through the screener (the same answers as ``predict``), each drawn as a figure:
the image, a Grad-CAM map per explained class and the probabilities."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrlab.core.errors import InvalidImageError  # noqa: E402
from cxrlab.data.images import find_images  # noqa: E402
from cxrlab.explain.gradcam import CamMethod  # noqa: E402
from cxrlab.explain.overlay import overlay  # noqa: E402
from cxrlab.explain.records import COLUMNS, RecordTable, overlay_name  # noqa: E402
from cxrlab.explain.screening import Screener  # noqa: E402

log = logging.getLogger(__name__)


def _figure(original: np.ndarray, panels: list[tuple[str, np.ndarray]], probs: dict[str, float], path: Path) -> None:
    """The image, one panel per explained class or finding (title, blended overlay), and the bars."""
    fig, axes = plt.subplots(1, 2 + len(panels), figsize=(4 * (1 + len(panels)) + 3.2, 4.4),
                             gridspec_kw={"width_ratios": [1] * (1 + len(panels)) + [0.8]})
    axes[0].imshow(original, cmap="gray")
    axes[0].set_title("image")
    for axis, (title, blended) in zip(axes[1:], panels):
        axis.imshow(blended)
        axis.set_title(title)
    for axis in axes[:-1]:
        axis.axis("off")
    names = list(probs)
    axes[-1].barh(names[::-1], [probs[n] for n in names[::-1]], color="tab:blue")
    axes[-1].set_xlim(0, 1)
    axes[-1].set_title("model confidence per class")
    for i, name in enumerate(names[::-1]):
        axes[-1].text(min(probs[name] + 0.02, 0.8), i, f"{probs[name]:.2f}", va="center")
    fig.suptitle("research use only - not for clinical diagnosis", fontsize=8, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def explain_images(model_path: str | Path, images: list[str | Path], out: str | Path, method: CamMethod = "gradcam",
                   layer: str | None = None, progress: Callable[[int], None] | None = None, *,
                   segmenter: str | Path | None = None) -> list[dict]:
    """Write ``<stem>_gradcam.png`` per image (files, and folders searched recursively: the image, a map
    per explained class and the probabilities) and ``explanations.csv`` / ``explanations.json`` into
    ``out``, with the columns ``predict`` writes (the class from the model file's decision rule, the
    out-of-distribution flag; ``overlay`` is the figure).

    An unreadable image is a row with its reason (``error``) and a warning; the others go on. The
    tables are rewritten every 50 images, so an interrupted run keeps what it finished.

    Args:
        segmenter: Lung segmenter file, for models whose preprocessing uses lung masks.

    Returns:
        One record per image: ``image``, ``probabilities`` (per class), ``predicted``, ``most_probable``,
        the out-of-distribution fields and ``overlay`` (or ``error``).

    Raises:
        ConfigError: not a model file, or a model that uses lung masks without a segmenter.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    with Screener(model_path, segmenter=segmenter, method=method, layer=layer) as screener, \
            RecordTable(out, "explanations", screener.class_names, COLUMNS) as table:
        for image, result in screener.screen_files(find_images(images)):
            if isinstance(result, InvalidImageError):
                log.warning("%s", result)
                table.add({"image": str(image), "error": result.reason})
            else:
                maps = result.finding_maps or {result.predicted: result.heatmap}
                panels = [(f"{method}: evidence for {name}", overlay(result.original, heatmap))
                          for name, heatmap in maps.items()]
                target = out / overlay_name(image, taken)
                _figure(result.original, panels, result.probabilities, target)
                table.add({**result.record(), "overlay": str(target)})
            if progress:
                progress(1)
    return table.records
