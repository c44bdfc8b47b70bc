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
from cxrlab.explain.screening import decide, finding_targets_to_explain  # noqa: E402
from cxrlab.models import load_model  # noqa: E402
from cxrlab.preprocess import Preprocessor  # noqa: E402

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
    model, preprocess, payload = load_model(model_path)
    point = ((payload.get("extra") or {}).get("screening") or {}).get("operating_point")
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
                names = list(model.class_names)
                targets = finding_targets_to_explain(probs, names, point) if model.multilabel else [names.index(predicted)]
                panels = []
                for index in targets:  # one map per called finding (a multi-label model), else the top class
                    found = heatmap if index == int(np.argmax(probs)) else cam.explain_image(processed.pixels, index)[0]
                    panels.append((f"{method}: evidence for {names[index]}",
                                   overlay(original, cam_to_original(found, original.shape, preprocess))))
                if model.multilabel:
                    predicted = decide(probs, names, point or {"per_finding": {}})
                target = out / overlay_name(image, taken)
                _figure(original, panels, probabilities, target)
                table.add({"image": str(image), "probabilities": probabilities, "predicted": predicted,
                           "overlay": str(target)})
            if progress:
                progress(1)
    return table.records
