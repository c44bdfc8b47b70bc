"""Is this radiograph a negative? A linear probe on the backbone's pooled features.

An X-ray exported with inverted grey levels (lungs bright, bones dark) still looks like a chest
radiograph to a feature-distance check: on cxr-real the Mahalanobis reference flagged 1 of 10
inverted test images. The classifier then predicts from a picture unlike anything it was trained
on. A logistic regression (scikit-learn) on the pooled features, fitted on the run's training
images against their inverted copies and checked on the validation images and theirs, tells the
two apart; only its scaler and weights are stored, so the model file needs no pickled estimator.
A linear probe says something about any input, a cat photo included, so an image counts as a
negative only when it also lies near the inverted training images' features, and nearer to them
than to the training images' (the Mahalanobis references of :mod:`cxrlab.models.ood`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cxrlab.core.errors import ConfigError
from cxrlab.models.ood import FeatureDistance

MIN_ACCURACY = 0.95  # on validation images and their inverted copies; a weaker probe is not stored


@dataclass(frozen=True)
class PolarityCheck:
    """``P(inverted)`` of pooled features, ``sigmoid(((x - mean) / scale) @ coef + intercept)``, and
    the distance to the inverted training images' features.

    Attributes:
        mean, scale: ``(D,)`` the standardisation fitted on the training features.
        coef: ``(D,)`` the logistic regression's weights; ``intercept`` its bias.
        negatives: Mahalanobis reference of the inverted training images (threshold on the inverted
            validation images).
        val_accuracy: The probe's accuracy on the validation images and their inverted copies (the
            distance gate's threshold is the 99th percentile of the inverted validation images', so
            it lets about 1% fewer through, by design).
    """

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: float
    negatives: FeatureDistance
    val_accuracy: float

    @classmethod
    def fit(cls, normal: np.ndarray, inverted: np.ndarray, val_normal: np.ndarray, val_inverted: np.ndarray,
            min_accuracy: float = MIN_ACCURACY) -> PolarityCheck:
        """Fit on ``(N, D)`` features of training images and of their inverted copies; check on the
        validation side's.

        Raises:
            ConfigError: fewer than 2 training or 1 validation image, or validation accuracy below
                ``min_accuracy`` (the features do not separate the two: no check is better than a poor one).
        """
        if len(normal) < 2 or len(inverted) < 2 or len(val_normal) < 1 or len(val_inverted) < 1:
            raise ConfigError(f"polarity check: needs >= 2 training and >= 1 validation images, got {len(normal)} "
                              f"and {len(val_normal)}")
        x = np.concatenate([normal, inverted]).astype(np.float64)
        y = np.r_[np.zeros(len(normal)), np.ones(len(inverted))]
        scaler = StandardScaler().fit(x)
        probe = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(x), y)
        partial = cls(scaler.mean_.astype(np.float32), scaler.scale_.astype(np.float32),
                      probe.coef_[0].astype(np.float32), float(probe.intercept_[0]),
                      FeatureDistance.fit(inverted, val_inverted), float("nan"))
        val = np.concatenate([val_normal, val_inverted])
        truth = np.r_[np.zeros(len(val_normal), bool), np.ones(len(val_inverted), bool)]
        accuracy = float(((partial.probability(val) > 0.5) == truth).mean())
        if accuracy < min_accuracy:
            raise ConfigError(f"polarity check: {accuracy:.2f} validation accuracy, below {min_accuracy}")
        return cls(partial.mean, partial.scale, partial.coef, partial.intercept, partial.negatives, accuracy)

    def probability(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` probability that each of ``(N, D)`` features comes from an inverted image."""
        z = ((np.asarray(features, np.float64) - self.mean) / self.scale) @ self.coef.astype(np.float64) + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def flags(self, features: np.ndarray, normal_scores: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` True where an image looks inverted: probability above one half, within the inverted
        training images' distance threshold and, given ``normal_scores`` (the distances to the training
        images' reference), nearer to the inverted images than to those. With a few dozen training
        images the probe alone called 1 of 7 held-out phantoms inverted; the nearer-to rule rejected it."""
        scores, far = self.negatives.flags(features)
        inverted = (self.probability(features) > 0.5) & ~far
        return inverted & (scores < normal_scores) if normal_scores is not None else inverted

    def to_dict(self) -> dict:
        """Form stored in a model file."""
        return {"method": "logistic", "mean": torch.from_numpy(self.mean), "scale": torch.from_numpy(self.scale),
                "coef": torch.from_numpy(self.coef), "intercept": self.intercept, "negatives": self.negatives.to_dict(),
                "val_accuracy": self.val_accuracy}

    @classmethod
    def from_dict(cls, data: dict) -> PolarityCheck:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a check this version of cxrlab wrote.
        """
        missing = {"mean", "scale", "coef", "intercept", "negatives", "val_accuracy"} - set(data)
        if missing:
            raise ConfigError(f"polarity check: unknown format (missing {', '.join(sorted(missing))}); retrain the "
                              "model with this version of cxrlab")
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["scale"], np.float32),
                   np.asarray(data["coef"], np.float32), float(data["intercept"]),
                   FeatureDistance.from_dict(data["negatives"]), float(data["val_accuracy"]))
