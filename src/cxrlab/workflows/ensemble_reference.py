"""The screening reference of a fold ensemble (``train --folds``' model, a study cell's ensemble), set
on data its members did not choose on."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrlab.evaluate.screening_reference import operating_point, screening_reference
from cxrlab.models import EnsembleClassifier
from cxrlab.preprocess import ShardDataset, ShardReader


def oof_reference(ensemble: EnsembleClassifier, predictions: pd.DataFrame, names: list[str], reader: ShardReader,
                  batch_size: int = 32) -> dict:
    """The ensemble's screening reference from out-of-fold ``predictions`` (``image``, ``label``, ``fold``
    and a probability column per class, images in ``reader``): out-of-distribution and inverted-image
    references fitted on every fold but the last and thresholded on the last (every member but one
    trained on those images, so new images may be flagged somewhat more often than the nominal 1%);
    the operating point on all the out-of-fold predictions."""
    spec = ensemble.spec
    last = (predictions["fold"] == predictions["fold"].max()).to_numpy()

    def dataset(rows: pd.DataFrame) -> ShardDataset:
        return ShardDataset(reader, names, images=rows["image"].tolist(), mean=spec.mean, std=spec.std,
                            in_chans=spec.in_chans, with_masks=ensemble.lung_attention)

    y = np.array([names.index(v) for v in predictions["label"]])
    probs = predictions[names].to_numpy(dtype=float)
    reference = screening_reference(ensemble, dataset(predictions[~last]), dataset(predictions[last]), y[last],
                                    probs[last], batch_size)
    reference["operating_point"] = operating_point(y, probs, names, "out-of-fold predictions")
    return reference
