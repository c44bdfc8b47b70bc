"""What screening needs from training, stored in the model file: an out-of-distribution reference
and an operating point, both set on the run's own training and validation images."""

from __future__ import annotations

import logging

import numpy as np

from cxrlab.core.errors import ConfigError
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.ood import FeatureDistance, pooled_features_at
from cxrlab.train.operating_point import choose_operating_point

log = logging.getLogger(__name__)
POSITIVE_CLASS = "COVID-19"  # the class screening thresholds, as in the papers
# The last block's features catch non-radiographs; the mid-level ones of the finer grid catch
# radiographs on their side (on cxr-real: 10/10 turned X-rays vs 3/10, no held-out image more).
OOD_LEVELS = ("last", "fine")


def screening_reference(model: CxrClassifier, train_set, val_set, val_targets: np.ndarray, val_probs: np.ndarray,
                        batch_size: int = 32) -> dict:
    """``{"ood": FeatureDistance.to_dict() of the last block's pooled features, "ood_fine": the same for
    the finer-grid block's, "operating_point": {...} or None}``.

    The operating point is the Youden threshold on validation P(COVID-19) when the classes include
    COVID-19 and the validation side has both COVID-19 and other images; otherwise screening
    predicts the most probable class.

    Args:
        train_set: The training images, not augmented.
        val_set: The validation images.
        val_targets: ``(M,)`` their class indices; ``val_probs``: ``(M, C)`` the model's probabilities.
    """
    reference: dict = {"ood": None, "ood_fine": None, "operating_point": None}
    train = pooled_features_at(model, train_set, OOD_LEVELS, batch_size)
    val = pooled_features_at(model, val_set, OOD_LEVELS, batch_size)
    for level in OOD_LEVELS:
        try:
            reference["ood" if level == "last" else f"ood_{level}"] = FeatureDistance.fit(train[level], val[level]).to_dict()
        except ConfigError as err:
            log.warning("no out-of-distribution reference (%s features) in the model file: %s", level, err)
    if POSITIVE_CLASS in model.class_names:
        column = list(model.class_names).index(POSITIVE_CLASS)
        try:
            point = choose_operating_point(np.asarray(val_targets) == column, val_probs[:, column])
            reference["operating_point"] = {"positive": POSITIVE_CLASS, "threshold": point.threshold,
                                            "method": point.method, "chosen_on": "validation"}
        except ConfigError as err:
            log.warning("no operating point in the model file (most probable class instead): %s", err)
    return reference
