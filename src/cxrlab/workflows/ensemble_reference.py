"""The screening reference of a fold ensemble (``train --folds``' model, a study cell's ensemble), set on
the outputs it will judge and on images its members did not learn:

* the operating point on the out-of-fold predictions: each image predicted by the member that never
  trained on it, with the ensemble's test-time views (the ``fold`` of a row names that member's fold);
* the out-of-distribution and inverted-image checks one per member, each fitted on the images that
  member trained on and thresholded on its own out-of-fold images; an image is flagged when most
  members flag it (:class:`cxrlab.models.ood.MemberDistances`). A single reference on the ensemble's
  features could only be thresholded on images most members had trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrlab.core.device import current_policy
from cxrlab.evaluate.screening_reference import member_screening_reference, operating_point
from cxrlab.models import EnsembleClassifier
from cxrlab.preprocess import ShardDataset, ShardReader
from cxrlab.train.runner import reference_record


def oof_reference(ensemble: EnsembleClassifier, predictions: pd.DataFrame, names: list[str], reader: ShardReader,
                  batch_size: int = 32, member_folds: Sequence[int] | None = None) -> dict:
    """The ensemble's screening reference from out-of-fold ``predictions`` (``image``, ``label``, ``fold``
    and a probability column per class, images in ``reader``); ``member_folds[k]``: the fold member k did
    not train on (default: member k, fold k). Records what each part was fitted on (``fitted_on``) and
    what the features were computed on (``ran_on``: fp32 on the current policy's device)."""
    spec = ensemble.spec
    folds = list(member_folds) if member_folds is not None else list(range(len(ensemble.members)))
    fold = pd.to_numeric(predictions["fold"]).to_numpy()

    def dataset(rows: pd.DataFrame) -> ShardDataset:
        return ShardDataset(reader, names, images=rows["image"].tolist(), mean=spec.mean, std=spec.std,
                            in_chans=spec.in_chans, with_masks=ensemble.lung_attention)

    trained = [dataset(predictions[fold != k]) for k in folds]
    held_out = [dataset(predictions[fold == k]) for k in folds]
    reference = member_screening_reference(list(ensemble.members), trained, held_out, batch_size)
    y = np.array([names.index(v) for v in predictions["label"]])
    views = f" with test-time views ({ensemble.tta})" if ensemble.tta != "none" else ""
    reference["operating_point"] = operating_point(y, predictions[names].to_numpy(dtype=float), names,
                                                   f"out-of-fold predictions{views}")
    reference["ran_on"] = reference_record(current_policy(), ensemble)
    reference["fitted_on"] = {
        "operating_point": f"out-of-fold predictions: each image by the member that never trained on it{views}",
        "ood": "one reference per member, fitted on its training images, thresholded on its out-of-fold images; "
               "an image is flagged when most members flag it",
        "polarity": "one check per member, fitted on its training images and their negatives, checked on its "
                    "out-of-fold images; most members decide"}
    return reference
