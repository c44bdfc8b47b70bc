"""Explain image files with a trained model: probabilities, Grad-CAM overlays, a JSON record."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cxrlab.core.errors import ConfigError, InvalidImageError  # noqa: E402
from cxrlab.data.images import find_images, read_image  # noqa: E402
from cxrlab.explain.gradcam import CamMethod, GradCamExplainer  # noqa: E402
from cxrlab.explain.overlay import MAX_OVERLAY_SIDE, cam_to_original, downsize, overlay  # noqa: E402
from cxrlab.explain.records import RecordTable, overlay_name  # noqa: E402
from cxrlab.models import load_model  # noqa: E402
from cxrlab.preprocess import Preprocessor  # noqa: E402

log = logging.getLogger(__name__)


def _figure(original: np.ndarray, blended: np.ndarray, probs: dict[str, float], title: str, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    axes[0].imshow(original, cmap="gray")
    axes[0].set_title("image")
    axes[1].imshow(blended)
    axes[1].set_title(title)
    for axis in axes[:2]:
        axis.axis("off")
    names = list(probs)
    axes[2].barh(names[::-1], [probs[n] for n in names[::-1]], color="tab:blue")
    axes[2].set_xlim(0, 1)
    axes[2].set_title("model confidence per class")
    for i, name in enumerate(names[::-1]):
        axes[2].text(min(probs[name] + 0.02, 0.8), i, f"{probs[name]:.2f}", va="center")
    fig.suptitle("research use only - not for clinical diagnosis", fontsize=8, color="grey")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def explain_images(model_path: str | Path, images: list[str | Path], out: str | Path, method: CamMethod = "gradcam",
                   layer: str | None = None, progress: Callable[[int], None] | None = None) -> list[dict]:
    """Write ``<stem>_gradcam.png`` per image (files, and folders searched recursively) and
    ``explanations.csv`` / ``explanations.json`` into ``out``.

    An unreadable image is a row with its reason (``error``) and a warning; the others go on. The
    tables are rewritten every 50 images, so an interrupted run keeps what it finished.

    Returns:
        One record per image: ``image``, ``probabilities`` (per class), ``predicted``, ``overlay``
        (or ``error``).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, preprocess, _ = load_model(model_path)
    if model.lung_attention:
        raise ConfigError(f"{model_path}: this model uses lung attention and needs a lung mask per image; explain "
                          "it with 'cxrlab evaluate' on a manifest with masks ('cxrlab segment predict' makes them)")
    pre = Preprocessor(preprocess)
    taken: set[str] = set()
    with GradCamExplainer(model, method, layer) as cam, \
            RecordTable(out, "explanations", list(model.class_names), ["predicted", "overlay"]) as table:
        for image in find_images(images):
            try:
                processed = pre(image)
                original = read_image(image, max_pixels=preprocess.max_pixels, reduce_to=MAX_OVERLAY_SIDE).pixels
            except InvalidImageError as err:
                log.warning("%s", err)
                table.add({"image": str(image), "error": err.reason})
            else:
                heatmap, probs = cam.explain_image(processed.pixels)
                probabilities = {c: float(p) for c, p in zip(model.class_names, probs)}
                predicted = max(probabilities, key=probabilities.get)
                original = downsize(original)
                blended = overlay(original, cam_to_original(heatmap, original.shape, preprocess))
                target = out / overlay_name(image, taken)
                _figure(original, blended, probabilities, f"{method}: evidence for {predicted}", target)
                table.add({"image": str(image), "probabilities": probabilities, "predicted": predicted,
                           "overlay": str(target)})
            if progress:
                progress(1)
    return table.records
