"""Does a map point at what the model uses? ROAD deletion scores, a measure no attention loss trains for.

ROAD (Rong et al., ICML 2022; pytorch-grad-cam's implementation) removes a share of the pixels —
the most relevant first (MoRF) or the least relevant first (LeRF) by the map — fills them by noisy
linear imputation (so the removal itself leaks no shape) and records the change in the softmax
confidence of the explained class, averaged over several shares. A faithful map loses confidence
fast when its top pixels go and slowly when its bottom ones do: ``road = (LeRF - MoRF) / 2`` is
higher for a more faithful map. The guided-attention models are trained on where their map lies
(inside the lungs), not on whether it is faithful, so this judges them on something they were not
optimised for.
"""

from __future__ import annotations

import logging

import pandas as pd
import torch
from pytorch_grad_cam.metrics.road import (
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from cxrlab.core.errors import InvalidImageError
from cxrlab.explain.gradcam import CamMethod, GradCamExplainer
from cxrlab.models.classifier import CxrClassifier
from cxrlab.preprocess import PreprocessConfig, Preprocessor
from cxrlab.preprocess.transforms import to_model_input

log = logging.getLogger(__name__)
PERCENTILES = (20, 40, 60, 80)


class _WithMask(nn.Module):
    """A lung-attention model seen as a function of the image channels only (its mask channel held
    fixed), so the imputation never touches the mask."""

    def __init__(self, model: nn.Module, mask: torch.Tensor) -> None:
        super().__init__()
        self.model, self.mask = model, mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.cat([x, self.mask.expand(len(x), -1, -1, -1)], dim=1))


def road_scores(model: CxrClassifier, preprocess: PreprocessConfig, frame: pd.DataFrame,
                method: CamMethod = "gradcam", layer: str | None = None,
                percentiles: tuple[int, ...] = PERCENTILES, seed: int = 0) -> pd.DataFrame:
    """ROAD scores of the maps of the predicted class, one row per readable image of ``frame``.

    Args:
        model: The classifier.
        preprocess: Its preprocessing.
        frame: Rows with ``image`` and ``label`` (``mask`` for lung-cropping or lung-attention models).
        method, layer: The maps (as in the reports).
        percentiles: Shares of the pixels removed, averaged over.
        seed: Seed of the imputation's noise.

    Returns:
        ``image, label, predicted, morf, lerf, road`` (confidence changes; ``road`` higher = more faithful).
    """
    pre, spec = Preprocessor(preprocess), model.spec
    morf, lerf = ROADMostRelevantFirstAverage(list(percentiles)), ROADLeastRelevantFirstAverage(list(percentiles))
    needs_mask = getattr(model, "lung_attention", False)
    rows = []
    with torch.random.fork_rng(), GradCamExplainer(model, method, layer=layer) as cam:
        torch.manual_seed(seed)
        for row in frame.itertuples():
            mask_path = str(getattr(row, "mask", "") or "") or None
            try:
                processed = pre(row.image, mask_path)
            except InvalidImageError as err:
                log.warning("ROAD: %s", err)
                continue
            if needs_mask and processed.mask is None:
                log.warning("ROAD: %s: no lung mask for a lung-attention model; skipped", row.image)
                continue
            x = torch.from_numpy(to_model_input(processed.pixels, spec.mean, spec.std, spec.in_chans,
                                                processed.mask if needs_mask else None))[None]
            maps, probs = cam.explain(x)
            predicted = int(probs[0].argmax())
            scored, net = (x[:, :-1], _WithMask(model, x[:, -1:])) if needs_mask else (x, model)
            targets = [ClassifierOutputSoftmaxTarget(predicted)]
            down, up = (float(m(scored, maps, targets, net.eval())[0]) for m in (morf, lerf))
            rows.append({"image": row.image, "label": row.label, "predicted": model.class_names[predicted],
                         "morf": down, "lerf": up, "road": (up - down) / 2})
    return pd.DataFrame(rows, columns=["image", "label", "predicted", "morf", "lerf", "road"])

