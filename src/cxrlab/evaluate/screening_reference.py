"""What screening needs from training, stored in the model file: an out-of-distribution reference,
a check for inverted images and an operating point, all set on the run's own training and
validation images."""

from __future__ import annotations

import logging

import numpy as np
import torch

from cxrlab.core.errors import ConfigError
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.models.classifier import CxrClassifier
from cxrlab.models.ood import FeatureDistance, MemberDistances, pooled_features_at
from cxrlab.models.polarity import MemberPolarity, PolarityCheck
from cxrlab.evaluate.operating_point import choose_operating_point

log = logging.getLogger(__name__)
# The last block's features catch non-radiographs; the mid-level ones of the finer grid catch
# radiographs on their side (on cxr-real: 10/10 turned X-rays vs 3/10, no held-out image more).
OOD_LEVELS = ("last", "fine")
# images a reference is fitted on (a seeded sample above it): the mean and covariance of 1280 features
# are settled well before, and the fit's SVD holds N x D doubles (at 80 000 training images: 0.8 GB, twice)
MAX_REFERENCE_IMAGES = 10_000


def bounded(dataset, limit: int = MAX_REFERENCE_IMAGES, seed: int = 0):
    """``dataset``, or a seeded sample of ``limit`` of its images (in their order) when it is larger:
    what a screening reference is fitted on, so its memory and time stay bounded at any size."""
    if len(dataset) <= limit:
        return dataset
    rows = np.sort(np.random.default_rng(seed).choice(len(dataset), limit, replace=False))
    return torch.utils.data.Subset(dataset, rows.tolist())


class InvertedImages(torch.utils.data.Dataset):
    """A dataset's images as negatives (``255 - v``), in the normalised space the model reads: with
    ``x = (v / 255 - mean) / std`` the negative is ``(1 - 2 mean) / std - x``. A lung-mask channel
    after the image channels is left as it is."""

    def __init__(self, dataset, mean, std, channels: int) -> None:
        self.dataset, self.channels = dataset, channels
        mean, std = (torch.as_tensor(v, dtype=torch.float32).expand(channels) for v in (mean, std))
        self.offset = ((1 - 2 * mean) / std).view(channels, 1, 1)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        x = x.clone()
        x[:self.channels] = self.offset - x[:self.channels]
        return x, y


def _polarity_check(model: CxrClassifier, train_set, val_set, train: np.ndarray, val: np.ndarray,
                    batch_size: int) -> dict | None:
    spec = model.spec
    inverted = [pooled_features_at(model, InvertedImages(ds, spec.mean, spec.std, spec.in_chans), ("last",),
                                   batch_size)["last"] for ds in (train_set, val_set)]
    try:
        return PolarityCheck.fit(train, inverted[0], val, inverted[1]).to_dict()
    except ConfigError as err:
        log.warning("no check for inverted images in the model file: %s", err)
        return None


def screening_reference(model: CxrClassifier, train_set, val_set, val_targets: np.ndarray, val_probs: np.ndarray,
                        batch_size: int = 32) -> dict:
    """``{"ood": FeatureDistance.to_dict() of the last block's pooled features, "ood_fine": the same for
    the finer-grid block's, "polarity": PolarityCheck.to_dict() on the last block's pooled features,
    "operating_point": {...} or None}``; a part that cannot be set is ``None``, with a warning.

    The operating point is the Youden threshold on validation P(COVID-19) when the classes include
    COVID-19 and the validation side has both COVID-19 and other images; otherwise screening
    predicts the most probable class.

    The out-of-distribution and polarity references are fitted on at most
    :data:`MAX_REFERENCE_IMAGES` training and validation images (a seeded sample above that).

    Args:
        train_set: The training images, not augmented.
        val_set: The validation images.
        val_targets: ``(M,)`` their class indices; ``val_probs``: ``(M, C)`` the model's probabilities.
    """
    reference: dict = {"ood": None, "ood_fine": None, "polarity": None, "operating_point": None}
    train_set, sample = bounded(train_set), bounded(val_set)  # the operating point takes every validation image
    train = pooled_features_at(model, train_set, OOD_LEVELS, batch_size)
    val = pooled_features_at(model, sample, OOD_LEVELS, batch_size)
    for level in OOD_LEVELS:
        try:
            reference["ood" if level == "last" else f"ood_{level}"] = FeatureDistance.fit(train[level], val[level]).to_dict()
        except ConfigError as err:
            log.warning("no out-of-distribution reference (%s features) in the model file: %s", level, err)
    reference["polarity"] = _polarity_check(model, train_set, sample, train["last"], val["last"], batch_size)
    reference["operating_point"] = operating_point(val_targets, val_probs, model.class_names, "validation")
    return reference


def member_screening_reference(members, train_sets, oof_sets, batch_size: int = 32) -> dict:
    """A fold ensemble's out-of-distribution (``ood``, ``ood_fine``) and inverted-image (``polarity``)
    checks, one per member: member k's fitted on ``train_sets[k]`` (the images it trained on) and
    thresholded (checked) on ``oof_sets[k]`` (its out-of-fold images), so no threshold is set on images a
    member learned (:class:`cxrlab.models.ood.MemberDistances`). A level whose reference cannot be set
    for some member is left out, with a warning."""
    fitted: dict[str, list] = {level: [] for level in OOD_LEVELS}
    dims: dict[str, list[int]] = {level: [] for level in OOD_LEVELS}
    polarity = []
    for k, (member, train_set, oof_set) in enumerate(zip(members, train_sets, oof_sets, strict=True)):
        train_set, oof_set = bounded(train_set, seed=k), bounded(oof_set, seed=k)
        train = pooled_features_at(member, train_set, OOD_LEVELS, batch_size)
        oof = pooled_features_at(member, oof_set, OOD_LEVELS, batch_size)
        for level in OOD_LEVELS:
            dims[level].append(train[level].shape[1])
            try:
                fitted[level].append(FeatureDistance.fit(train[level], oof[level]))
            except ConfigError as err:
                log.warning("no out-of-distribution reference (%s features) for member %d: %s", level, k, err)
                fitted[level].append(None)
        polarity.append(_polarity_check(member, train_set, oof_set, train["last"], oof["last"], batch_size))
    reference: dict = {"ood": None, "ood_fine": None, "polarity": None}
    for level in OOD_LEVELS:
        if all(f is not None for f in fitted[level]):
            reference["ood" if level == "last" else f"ood_{level}"] = MemberDistances(
                tuple(fitted[level]), tuple(dims[level])).to_dict()
    if reference["ood"] is not None and any(polarity):
        normal = MemberDistances(tuple(fitted["last"]), tuple(dims["last"]))
        reference["polarity"] = MemberPolarity(tuple(PolarityCheck.from_dict(c) if c else None for c in polarity),
                                               normal).to_dict()
    return reference


def operating_point(targets: np.ndarray, probs: np.ndarray, class_names, chosen_on: str) -> dict | None:
    """The Youden threshold on ``P(COVID-19)`` over ``(N,)`` class indices and ``(N, C)`` probabilities
    (``chosen_on`` says which images they are), or None with a warning when the classes lack COVID-19
    or the images lack either side. Multi-label targets (``(N, F)``, NaN unknown): a Youden threshold
    per finding (``per_finding``; None for a finding without positives and negatives there)."""
    if np.asarray(targets).ndim == 2:
        return finding_operating_points(targets, probs, class_names, chosen_on)
    if POSITIVE_CLASS not in class_names:
        return None
    column = list(class_names).index(POSITIVE_CLASS)
    try:
        point = choose_operating_point(np.asarray(targets) == column, np.asarray(probs)[:, column])
    except ConfigError as err:
        log.warning("no operating point in the model file (most probable class instead): %s", err)
        return None
    return {"positive": POSITIVE_CLASS, "threshold": point.threshold, "method": point.method, "chosen_on": chosen_on}


def finding_operating_points(targets: np.ndarray, probs: np.ndarray, class_names, chosen_on: str) -> dict:
    """``{"per_finding": {finding: Youden threshold or None}, "method": "youden", "chosen_on"}`` over
    ``(N, F)`` multi-label targets (NaN: unknown, left out) and probabilities."""
    targets, probs = np.asarray(targets, dtype=float), np.asarray(probs, dtype=float)
    thresholds = {}
    for i, name in enumerate(class_names):
        known = ~np.isnan(targets[:, i])
        try:
            thresholds[name] = choose_operating_point(targets[known, i] == 1, probs[known, i]).threshold
        except ConfigError:
            thresholds[name] = None  # screening calls it at 0.5 then
    missing = [n for n, t in thresholds.items() if t is None]
    if missing:
        log.warning("no operating point for %s (the %s lack positives or negatives): 0.5 instead", ", ".join(missing),
                    chosen_on)
    return {"per_finding": thresholds, "method": "youden", "chosen_on": chosen_on}
