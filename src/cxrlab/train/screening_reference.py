"""What screening needs from training, stored in the model file: an out-of-distribution reference
and an operating point, both set on the run's own training and validation images."""

from __future__ import annotations

import logging

import numpy as np

from cxrlab.core.errors import ConfigError
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.ood import FeatureDistance, pooled_features
from cxrlab.train.operating_point import choose_operating_point

log = logging.getLogger(__name__)
POSITIVE_CLASS = "COVID-19"  # the class screening thresholds, as in the papers


def screening_reference(model: CxrClassifier, train_set, val_set, val_targets: np.ndarray, val_probs: np.ndarray,
                        batch_size: int = 32) -> dict:
    """``{"ood": FeatureDistance.to_dict(), "operating_point": {...} or None}``.

    The operating point is the Youden threshold on validation P(COVID-19) when the classes include
    COVID-19 and the validation side has both COVID-19 and other images; otherwise screening
    predicts the most probable class.

    Args:
        train_set: The training images, not augmented.
        val_set: The validation images.
        val_targets: ``(M,)`` their class indices; ``val_probs``: ``(M, C)`` the model's probabilities.
    """
    reference: dict = {"ood": None, "operating_point": None}
    try:
        reference["ood"] = FeatureDistance.fit(pooled_features(model, train_set, batch_size),
                                               pooled_features(model, val_set, batch_size)).to_dict()
    except ConfigError as err:
        log.warning("no out-of-distribution reference in the model file: %s", err)
    if POSITIVE_CLASS in model.class_names:
        column = list(model.class_names).index(POSITIVE_CLASS)
        try:
            point = choose_operating_point(np.asarray(val_targets) == column, val_probs[:, column])
            reference["operating_point"] = {"positive": POSITIVE_CLASS, "threshold": point.threshold,
                                            "method": point.method, "chosen_on": "validation"}
        except ConfigError as err:
            log.warning("no operating point in the model file (most probable class instead): %s", err)
    return reference
