"""Is this radiograph a negative? A linear discriminant on the backbone's pooled features.

An X-ray exported with inverted grey levels (lungs bright, bones dark) still looks like a chest
radiograph to a feature-distance check: on cxr-real the Mahalanobis reference flagged 1 of 10
inverted test images. The classifier then predicts from a picture unlike anything it was trained
on. A linear discriminant (scikit-learn's LDA with a fixed covariance shrinkage), fitted on the run's
training images against their inverted copies and checked on the validation images and theirs,
tells the two apart; only its weights are stored, so the model file needs no pickled estimator.

Why a shrunk LDA and not a logistic regression on standardised features: with a few dozen images
and 1280 features the standardised logistic probe fits noise. On the phantom test fixture (22
training images) it misclassified 1 of 14 validation samples on one processor and none on another;
the LDA's smallest validation margin there is ~10 standard deviations of its training scores. On
cxr-real (423 training images) both are 104/104 on validation, the LDA with the larger margin
(0.64 vs 0.32 training-score SDs). Shrinkage 0.5 (halfway to a scaled identity) sat in the middle
of the range that was 104/104 there (0.1-0.7).

A linear probe says something about any input, a cat photo included, so an image counts as a
negative only when it also lies near the inverted training images' features, and nearer to them
than to the training images' (the Mahalanobis references of :mod:`cxrlab.models.ood`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from cxrlab.core.errors import ConfigError
from cxrlab.models.ood import FeatureDistance, MemberDistances

MIN_ACCURACY = 0.95  # on validation images and their inverted copies; a weaker probe is not stored
SHRINKAGE = 0.5  # covariance shrinkage of the discriminant (see the module docstring)


@dataclass(frozen=True)
class PolarityCheck:
    """``P(inverted) = sigmoid(x @ coef + intercept)`` of pooled features ``x``, and the distance to the
    inverted training images' features.

    Attributes:
        coef: ``(D,)`` the discriminant's weights; ``intercept`` its bias (log-odds, equal priors).
        negatives: Mahalanobis reference of the inverted training images (threshold on the inverted
            validation images).
        val_accuracy: The probe's accuracy on the validation images and their inverted copies (the
            distance gate's threshold is the 99th percentile of the inverted validation images', so
            it lets about 1% fewer through, by design).
        val_margin: The smallest validation margin, ``(2y - 1) * (x @ coef + intercept)``, in standard
            deviations of the training scores (negative when some validation sample is misclassified):
            how far the check is from its gate.
    """

    coef: np.ndarray
    intercept: float
    negatives: FeatureDistance
    val_accuracy: float
    val_margin: float = float("nan")

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
        # float32, as the features are: at 2 x 10 000 images scikit-learn's copies took 440 MB in float64,
        # 280 MB so, with coefficients within 1e-6 of each other
        x = np.concatenate([normal, inverted]).astype(np.float32)
        y = np.r_[np.zeros(len(normal)), np.ones(len(inverted))]
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=SHRINKAGE, priors=[0.5, 0.5]).fit(x, y)
        partial = cls(lda.coef_[0].astype(np.float32), float(lda.intercept_[0]),
                      FeatureDistance.fit(inverted, val_inverted), float("nan"))
        train_scores = partial.decision(x)
        spread = np.sqrt((train_scores[y == 0].var() + train_scores[y == 1].var()) / 2) or 1.0
        val = np.concatenate([val_normal, val_inverted])
        sign = np.r_[-np.ones(len(val_normal)), np.ones(len(val_inverted))]
        margins = sign * partial.decision(val)
        accuracy = float((margins > 0).mean())
        if accuracy < min_accuracy:
            raise ConfigError(f"polarity check: {accuracy:.2f} validation accuracy, below {min_accuracy}")
        return cls(partial.coef, partial.intercept, partial.negatives, accuracy, float(margins.min() / spread))

    def decision(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` log-odds that each of ``(N, D)`` features comes from an inverted image."""
        features, coef = np.asarray(features), self.coef.astype(np.float64)
        parts = np.array_split(features, max(1, len(features) // 4096))  # float64 a block at a time, not all at once
        return np.concatenate([np.asarray(part, np.float64) @ coef for part in parts]) + self.intercept

    def probability(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` probability that each of ``(N, D)`` features comes from an inverted image."""
        return 1.0 / (1.0 + np.exp(-np.clip(self.decision(features), -50, 50)))

    def flags(self, features: np.ndarray, normal_scores: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` True where an image looks inverted: probability above one half, within the inverted
        training images' distance threshold and, given ``normal_scores`` (the distances to the training
        images' reference), nearer to the inverted images than to those. With a few dozen training
        images a probe alone called 1 of 7 held-out phantoms inverted; the nearer-to rule rejected it."""
        scores, far = self.negatives.flags(features)
        inverted = (self.probability(features) > 0.5) & ~far
        return inverted & (scores < normal_scores) if normal_scores is not None else inverted

    def to_dict(self) -> dict:
        """Form stored in a model file."""
        return {"method": "shrinkage-lda", "coef": torch.from_numpy(self.coef), "intercept": self.intercept,
                "negatives": self.negatives.to_dict(), "val_accuracy": self.val_accuracy,
                "val_margin": self.val_margin}

    @classmethod
    def from_dict(cls, data: dict) -> PolarityCheck:
        """Inverse of :meth:`to_dict`; also reads the standardised logistic probe earlier versions wrote
        (``mean``/``scale`` folded into the weights: the same log-odds).

        Raises:
            ConfigError: not a check this version of cxrlab wrote.
        """
        missing = {"coef", "intercept", "negatives", "val_accuracy"} - set(data)
        if missing:
            raise ConfigError(f"polarity check: unknown format (missing {', '.join(sorted(missing))}); retrain the "
                              "model with this version of cxrlab")
        coef, intercept = np.asarray(data["coef"], np.float64), float(data["intercept"])
        if "scale" in data and "mean" in data:  # ((x - mean) / scale) @ coef + b == x @ (coef / scale) + b'
            coef = coef / np.asarray(data["scale"], np.float64)
            intercept -= float(np.asarray(data["mean"], np.float64) @ coef)
        return cls(coef.astype(np.float32), intercept, FeatureDistance.from_dict(data["negatives"]),
                   float(data["val_accuracy"]), float(data.get("val_margin", float("nan"))))


@dataclass(frozen=True)
class MemberPolarity:
    """A fold ensemble's inverted-image check, one per member (each fitted on the images that member
    trained on and checked on its out-of-fold images): an image counts as inverted when most members'
    checks say so, each against its own member's training-image reference."""

    members: tuple[PolarityCheck | None, ...]
    normal: MemberDistances

    def flags(self, features: np.ndarray, normal_scores: np.ndarray | None = None) -> np.ndarray:
        """``(N,)`` True where most members' checks (those that could be fitted) call the image inverted;
        ``normal_scores`` is not used: each member compares with its own training images' distances."""
        parts = self.normal.parts(features)
        votes = [check.flags(part, reference.score(part)) for check, reference, part
                 in zip(self.members, self.normal.members, parts, strict=True) if check is not None]
        if not votes:
            return np.zeros(len(features), bool)
        return np.sum(votes, axis=0) * 2 > len(votes)

    def to_dict(self) -> dict:
        fitted = [m for m in self.members if m is not None]
        return {"method": "shrinkage-lda per member", "members": [m.to_dict() if m else None for m in self.members],
                "val_accuracy": min(m.val_accuracy for m in fitted) if fitted else float("nan"),
                "val_margin": min(m.val_margin for m in fitted) if fitted else float("nan")}

    @classmethod
    def from_dict(cls, data: dict, normal: MemberDistances) -> MemberPolarity:
        return cls(tuple(PolarityCheck.from_dict(m) if m else None for m in data["members"]), normal)


def load_polarity(data: dict, normal) -> PolarityCheck | MemberPolarity:
    """An inverted-image check from a model file (``normal``: the file's training-image distance check).

    Raises:
        ConfigError: not a check this version of cxrlab wrote, or one per member without a per-member
            distance check.
    """
    if "members" not in data:
        return PolarityCheck.from_dict(data)
    if not isinstance(normal, MemberDistances):
        raise ConfigError("polarity check: one per member, but the distance check is not")
    return MemberPolarity.from_dict(data, normal)
