"""Out-of-distribution score: Mahalanobis distance of an image's pooled features to the training set's.

A classifier gives confident probabilities for anything, including a lateral view, a CT slice,
a photo or a blank frame. The distance of the globally pooled last-block features to the
training images' feature distribution (mean and Ledoit-Wolf shrunk covariance: the features
have more dimensions than there are training images) flags such inputs (Lee et al., NeurIPS
2018). The threshold is a quantile of the *validation* images' distances (the training images
sit closer to their own fitted distribution), so about ``1 - quantile`` of in-distribution
images are flagged by design.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from sklearn.covariance import ledoit_wolf_shrinkage

from cxrlab.core.device import current_policy
from cxrlab.core.errors import ConfigError
from cxrlab.models.ensemble import cam_layers

DEFAULT_QUANTILE = 0.99


@dataclass(frozen=True)
class FeatureDistance:
    """Mahalanobis distance to the training features under the Ledoit-Wolf shrunk covariance, and the
    threshold above which an input is flagged.

    The shrunk covariance of ``N`` training features in ``D > N`` dimensions is ``shift * I`` plus a
    rank-``N`` part, so it is kept in that form (components and weights: the Woodbury identity)
    rather than as a ``D x D`` precision matrix: the same distances (a test checks them against
    scikit-learn's), ~10x less to store and no ``D x D`` inversion after every training run.

    Attributes:
        mean: ``(D,)`` mean training feature.
        components: ``(K, D)`` orthonormal principal directions of the training features.
        weights: ``(K,)`` ``lambda_k / (shift + lambda_k)`` for their shrunk variances ``lambda_k``.
        shift: The shrinkage's isotropic variance.
        threshold: Distances above it are flagged.
        quantile: The validation quantile the threshold is.
    """

    mean: np.ndarray
    components: np.ndarray
    weights: np.ndarray
    shift: float
    threshold: float
    quantile: float = DEFAULT_QUANTILE

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, quantile: float = DEFAULT_QUANTILE) -> FeatureDistance:
        """Fit on ``(N, D)`` training features; threshold at ``quantile`` of the ``(M, D)`` validation ones.

        Raises:
            ConfigError: fewer than 2 training or 1 validation image, constant features, or a quantile
                outside (0, 1].
        """
        if len(train) < 2 or len(val) < 1:
            raise ConfigError(f"ood reference: needs >= 2 training and >= 1 validation images, got {len(train)} "
                              f"and {len(val)}")
        if not 0 < quantile <= 1:
            raise ConfigError(f"ood reference: quantile must be in (0, 1], got {quantile}")
        centred = np.array(train, np.float64)  # a copy, centred in place
        mean = centred.mean(axis=0)
        centred -= mean
        shrinkage = ledoit_wolf_shrinkage(centred, assume_centered=True)
        if len(centred) > centred.shape[1]:  # more images than features: the D x D scatter's eigenvectors,
            # without the SVD's N x D factor (10 000 images: 100 MB and as much again of workspace)
            eigenvalues, vectors = np.linalg.eigh(centred.T @ centred)
            order = eigenvalues.argsort()[::-1]
            variances, components = np.clip(eigenvalues[order], 0, None) / len(centred), vectors[:, order].T
        else:
            _, singular, components = np.linalg.svd(centred, full_matrices=False)
            variances = singular**2 / len(centred)  # eigenvalues of the empirical covariance
        del centred
        shift = shrinkage * variances.sum() / train.shape[1]  # shrinkage * trace / D, as scikit-learn's
        if shift <= 0:
            raise ConfigError("ood reference: the training features do not vary")
        shrunk = (1 - shrinkage) * variances
        partial = cls(mean.astype(np.float32), components.astype(np.float32),
                      (shrunk / (shift + shrunk)).astype(np.float32), float(shift), np.inf, quantile)
        threshold = float(np.quantile(partial.score(val), quantile))
        return cls(partial.mean, partial.components, partial.weights, partial.shift, threshold, quantile)

    @cached_property
    def _components64(self) -> np.ndarray:
        # made once: converting a fold member's (K, D) directions on every call cost ~2 ms an image
        return self.components.T.astype(np.float64)

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` Mahalanobis distances of ``(N, D)`` features."""
        centred = np.asarray(features, np.float64) - self.mean
        projected = centred @ self._components64
        squared = ((centred**2).sum(axis=1) - (projected**2 * self.weights).sum(axis=1)) / self.shift
        return np.sqrt(np.maximum(squared, 0.0))

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, scores > threshold)``."""
        scores = self.score(features)
        return scores, scores > self.threshold

    def to_dict(self) -> dict:
        """Form stored in a model file."""
        return {"method": "mahalanobis", "mean": torch.from_numpy(self.mean), "components": torch.from_numpy(self.components),
                "weights": torch.from_numpy(self.weights), "shift": self.shift, "threshold": self.threshold,
                "quantile": self.quantile}

    @classmethod
    def from_dict(cls, data: dict) -> FeatureDistance:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a reference this version of cxrlab wrote.
        """
        missing = {"mean", "components", "weights", "shift", "threshold", "quantile"} - set(data)
        if missing:
            raise ConfigError(f"ood reference: unknown format (missing {', '.join(sorted(missing))}); retrain or "
                              "re-export the model with this version of cxrlab")
        return cls(np.asarray(data["mean"], np.float32), np.asarray(data["components"], np.float32),
                   np.asarray(data["weights"], np.float32), float(data["shift"]), float(data["threshold"]),
                   float(data["quantile"]))


@dataclass(frozen=True)
class MemberDistances:
    """A fold ensemble's feature-distance check, one reference per member: member k's fitted on the images
    it trained on and thresholded on its own out-of-fold images, which no member's reference saw as
    training data. An image is flagged when most members find it far; its score is the median over
    members of distance / threshold (1.0: at the threshold). Each member's check flags about
    ``1 - quantile`` of images like its out-of-fold ones, and the median of several such checks no more.

    Attributes:
        members: One :class:`FeatureDistance` per member.
        dims: Each member's feature width, in the order the ensemble concatenates them.
        fitted_on: What the references were fitted and thresholded on, in words.
    """

    members: tuple[FeatureDistance, ...]
    dims: tuple[int, ...]
    fitted_on: str = "each member's training images; thresholds on its out-of-fold images"

    @property
    def threshold(self) -> float:
        return 1.0

    @property
    def quantile(self) -> float:
        return self.members[0].quantile

    def parts(self, features: np.ndarray) -> list[np.ndarray]:
        """``features`` (the members' side by side) split per member.

        Raises:
            ConfigError: the width is not the members' total.
        """
        features = np.asarray(features)
        if features.shape[1] != sum(self.dims):
            raise ConfigError(f"ood reference: {features.shape[1]} features, the members have {sum(self.dims)}")
        return np.split(features, np.cumsum(self.dims)[:-1], axis=1)

    def member_scores(self, features: np.ndarray) -> np.ndarray:
        """``(K, N)`` each member's distance divided by its threshold."""
        return np.stack([m.score(part) / m.threshold for m, part in zip(self.members, self.parts(features), strict=True)])

    def score(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` the median over members of distance / threshold."""
        return np.median(self.member_scores(features), axis=0)

    def flags(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, flagged by most members)``."""
        each = self.member_scores(features)
        return np.median(each, axis=0), (each > 1.0).sum(axis=0) * 2 > len(self.members)

    def to_dict(self) -> dict:
        """Form stored in a model file."""
        return {"method": "mahalanobis per member", "members": [m.to_dict() for m in self.members],
                "dims": list(self.dims), "fitted_on": self.fitted_on, "threshold": 1.0, "quantile": self.quantile}

    @classmethod
    def from_dict(cls, data: dict) -> MemberDistances:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(FeatureDistance.from_dict(m) for m in data["members"]), tuple(int(d) for d in data["dims"]),
                   str(data.get("fitted_on", "")))


def load_distance(data: dict) -> FeatureDistance | MemberDistances:
    """A distance check from a model file: one reference, or one per member of a fold ensemble.

    Raises:
        ConfigError: not a reference this version of cxrlab wrote.
    """
    return MemberDistances.from_dict(data) if "members" in data else FeatureDistance.from_dict(data)


def pooled_features_at(model, dataset, levels: tuple[str, ...] = ("last",), batch_size: int = 32) -> dict[str, np.ndarray]:
    """``{level: (N, D)}`` globally pooled features of a dataset's images (before any lung attention):
    ``last``, the last block's output; ``fine``, the output of the block ``model.cam_layer("fine")``
    ends (a finer grid, mid-level features). Runs in fp32 on the current policy's device
    (:func:`cxrlab.core.device.current_policy`; the model is moved there): distances are fitted and
    scored on fp32 features."""
    # moved outside inference mode: weights copied inside it could never ask for gradients again (Grad-CAM, training)
    model.eval().to(torch.device(current_policy().device), memory_format=torch.channels_last)
    with torch.inference_mode():
        return _pooled(model, dataset, levels, batch_size)


def _pooled(model, dataset, levels: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    out: dict[str, list[torch.Tensor]] = {level: [] for level in levels}
    fine: dict[int, torch.Tensor] = {}  # per member of an ensemble, joined side by side per batch

    def capture(index: int):
        return lambda module, args, output: fine.__setitem__(index, output.float().mean(dim=(2, 3)))

    hooks = ([layer.register_forward_hook(capture(i)) for i, layer in enumerate(cam_layers(model, "fine"))]
             if "fine" in levels else [])
    try:
        device = next(model.parameters()).device
        for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            image, _ = model.split_input(x.to(device).contiguous(memory_format=torch.channels_last))
            last = model.image_features(image).float().mean(dim=(2, 3))
            if "last" in out:
                out["last"].append(last)
            if hooks:
                out["fine"].append(torch.cat([fine[i] for i in sorted(fine)], dim=1))
    finally:
        for hook in hooks:
            hook.remove()
    return {level: torch.cat(v).cpu().numpy() if v else np.zeros((0, 0), np.float32) for level, v in out.items()}


def pooled_features(model, dataset, batch_size: int = 32) -> np.ndarray:
    """``(N, D)`` globally pooled last-block features (before any lung attention) of a dataset's images."""
    return pooled_features_at(model, dataset, ("last",), batch_size)["last"]
