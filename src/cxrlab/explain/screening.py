"""Screening images: per-class probabilities, the class the model file's decision rule reports, an
out-of-distribution flag, and a Grad-CAM heatmap, from one forward and one head-only backward pass
for an image or a batch of files.

The engine behind ``cxrlab predict``, ``cxrlab explain`` and ``cxrlab serve``: the steps up to the
class are :class:`cxrlab.models.predictor.Predictor`'s (the same as ``evaluate``'s); the model file
is loaded once; the Grad-CAM hooks stay in place for the screener's lifetime; calls are serialised
(hooks hold per-call state), so a server runs them in a worker thread, one at a time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from cxrlab.core.device import current_policy
from cxrlab.core.errors import ConfigError, DeadlineExceeded, InvalidImageError
from cxrlab.data.images import DecodedImage
from cxrlab.explain.gradcam import CamMethod, GradCamExplainer
from cxrlab.explain.model_card import model_card
from cxrlab.explain.overlay import MAX_OVERLAY_SIDE, cam_to_original, downsize, overlay
from cxrlab.models.ensemble import cam_layers
from cxrlab.models.ood import load_distance
from cxrlab.models.polarity import load_polarity
from cxrlab.models.predictor import PreparedImage, Predictor

SCREEN_BATCH = 16  # images per forward pass over files: a 5-member ensemble on 2 cores screened 1.6x as many a second as one at a time


def _check(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineExceeded("screening stopped: its time limit passed")


@dataclass
class Screening:
    """What screening says about one image.

    Attributes:
        image: The file name (or upload name).
        probabilities: Class → probability (sums to 1; a multi-label model: each finding's own).
        predicted: The class the model file's decision rule reports
            (:class:`cxrlab.models.decision.DecisionRule`).
        most_probable: The class with the highest probability.
        ood_score: Mahalanobis distance of the image's features to the training images' (a fold ensemble
            with one reference per member: the median over members of distance / threshold, 1.0 at the
            threshold); ``None`` when the model file has no reference.
        ood: ``ood_score`` above the threshold set on validation images: the image does not look like
            the training data (not a frontal chest X-ray, or from an unseen kind of source); or the
            model file's polarity check says the image is a negative; or a blank image (flagged even
            without a reference).
        ood_reason: Why ``ood`` is true, else ``None``.
        heatmap: ``(h, w) float32`` Grad-CAM for ``predicted`` on the original image (downsized to at
            most ``overlay_side``, 1024 px by default), in [0, 1]; for a multi-label model, for its
            likeliest called finding.
        finding_maps: Multi-label models only: finding -> its Grad-CAM on the original image, for the
            called findings (at most :data:`cxrlab.models.decision.MAX_FINDING_MAPS`; the likeliest finding when none is).
        original: ``(h, w) uint8`` that image.
    """

    image: str
    probabilities: dict[str, float]
    predicted: str
    most_probable: str
    ood_score: float | None
    ood: bool | None
    ood_reason: str | None
    heatmap: np.ndarray = field(repr=False)
    original: np.ndarray = field(repr=False)
    finding_maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def overlay(self, finding: str | None = None) -> np.ndarray:
        """``(h, w, 3) uint8`` RGB: the heatmap (of ``finding``, a multi-label model's) blended on the image."""
        return overlay(self.original, self.finding_maps[finding] if finding else self.heatmap)

    def overlay_png(self, finding: str | None = None) -> bytes:
        """:meth:`overlay` encoded as PNG."""
        ok, buf = cv2.imencode(".png", cv2.cvtColor(self.overlay(finding), cv2.COLOR_RGB2BGR))
        if not ok:
            raise ConfigError(f"{self.image}: cannot encode the overlay as PNG")
        return buf.tobytes()

    def record(self) -> dict:
        """JSON-ready fields (no arrays)."""
        record = {"image": self.image, "probabilities": self.probabilities, "predicted": self.predicted,
                  "most_probable": self.most_probable, "ood_score": self.ood_score, "ood": self.ood,
                  "ood_reason": self.ood_reason}
        if self.finding_maps:
            record["explained_findings"] = list(self.finding_maps)
        return record


def is_blank(pixels: np.ndarray, min_spread: float = 4.0) -> bool:
    """Whether an image is (almost) uniform: the 1st-99th percentile spread of its grey levels is
    below ``min_spread`` (of 255). CLAHE would stretch such an image's noise into texture."""
    sample = pixels[:: max(1, pixels.shape[0] // 256), :: max(1, pixels.shape[1] // 256)]
    low, high = np.percentile(sample, (1, 99))
    return float(high - low) < min_spread


class Screener(Predictor):
    """A model file ready to screen images: :class:`cxrlab.models.predictor.Predictor`'s steps plus a
    Grad-CAM map and the out-of-distribution flag; use as a context manager or call :meth:`close`.

    Args:
        model_path: A cxrlab model file, or a run folder with ``model.pt``.
        segmenter: A lung segmenter file, required for models whose preprocessing uses a lung mask
            (lung crop, artifact inpainting, lung attention).
        method: Grad-CAM variant.
        layer: The map's layer: ``last`` (default), ``fine`` or a module name.
        compile: Compile the blocks before the Grad-CAM layer (20-40 s once, then faster: a server).
        overlay_side: Longest side of the image the heatmap is drawn on (the original is downsized).

    Raises:
        ConfigError: not a model file, or the model needs lung masks and no segmenter is given.
    """

    def __init__(self, model_path: str | Path, *, segmenter: str | Path | None = None, method: CamMethod = "gradcam",
                 layer: str | None = None, compile: bool = False, overlay_side: int = MAX_OVERLAY_SIDE) -> None:
        super().__init__(model_path, segmenter=segmenter)
        self.require_segmenter()
        self.overlay_side = overlay_side
        reference = self.reference
        self.ood = load_distance(reference["ood"]) if reference.get("ood") else None
        self.ood_fine = load_distance(reference["ood_fine"]) if reference.get("ood_fine") else None
        self.polarity = load_polarity(reference["polarity"], self.ood) if reference.get("polarity") else None
        self._fine_parts: dict[int, np.ndarray] = {}
        self._fine_hooks = []
        if self.ood_fine is not None and not compile:  # a compiled prefix runs past module hooks
            self._fine_hooks = [layer.register_forward_hook(self._capture_fine(i))
                                for i, layer in enumerate(cam_layers(self.model, "fine"))]
        else:
            self.ood_fine = None
        self.method = method
        # the OOD reference was fitted on the last block's pooled features: the default map layer's activations
        self._features_from_cam = layer in (None, "last") and self.model.spec.sequential
        # an autocast policy (bf16) gives the probabilities through the predictor's forward; in fp32 the
        # Grad-CAM pass's own forward is that forward (no second pass)
        self._autocast = current_policy().autocast_dtype is not None
        # channels-last from the start, as the inference model and evaluate use it: 1.4x faster
        # convolutions on the CPU, and the first image's numbers made like the rest
        self.model.to(memory_format=torch.channels_last)
        self._cam = GradCamExplainer(self.model, method, layer, compile=compile).__enter__()
        self._lock = threading.Lock()

    def __enter__(self) -> Screener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _capture_fine(self, index: int):
        def hook(module, args, output) -> None:
            self._fine_parts[index] = output.detach().float().mean(dim=(2, 3)).cpu().numpy()
        return hook

    @property
    def _fine(self) -> np.ndarray | None:
        """The last screening's pooled mid-level features (an ensemble's members' side by side)."""
        if not self._fine_parts:
            return None
        return np.concatenate([self._fine_parts[i] for i in sorted(self._fine_parts)], axis=1)

    def close(self) -> None:
        """Remove the Grad-CAM hooks."""
        for hook in self._fine_hooks:
            hook.remove()
        self._fine_hooks = []
        if self._cam is not None:
            self._cam.__exit__(None, None, None)
            self._cam = None

    def screen_file(self, path: str | Path) -> Screening:
        """Screen an image file.

        Raises:
            InvalidImageError: unreadable, corrupt, too large or too small (names the file).
        """
        return self.screen(self.decode_file(path), str(path))

    def screen_files(self, paths: Iterable[str | Path], batch_size: int = SCREEN_BATCH
                     ) -> Iterator[tuple[Path, Screening | InvalidImageError]]:
        """Screen image files ``batch_size`` at a time (one forward and Grad-CAM pass per batch).

        Yields:
            ``(path, its Screening or the InvalidImageError that skipped it)``, in the order given; an
            unreadable file does not stop the others.
        """
        pending: list[tuple[Path, PreparedImage | InvalidImageError]] = []

        def flush() -> Iterator[tuple[Path, Screening | InvalidImageError]]:
            ready = {i: (str(path), item) for i, (path, item) in enumerate(pending)
                     if not isinstance(item, InvalidImageError)}
            with self._lock:
                screened = dict(zip(ready, self._screen_prepared(list(ready.values())) if ready else [], strict=True))
            for i, (path, item) in enumerate(pending):
                yield path, screened.get(i, item)
            pending.clear()

        for path in map(Path, paths):
            try:
                pending.append((path, self.prepare_image(self.decode_file(path), str(path))))
            except InvalidImageError as err:
                pending.append((path, err))
            if sum(not isinstance(item, InvalidImageError) for _, item in pending) >= batch_size:
                yield from flush()
        yield from flush()

    def screen_bytes(self, buf: bytes, name: str, deadline: float | None = None) -> Screening:
        """Screen image bytes (an upload); ``name`` only labels errors and marks DICOM by suffix.

        Raises:
            InvalidImageError: not an image, corrupt, truncated, too large or too small.
            DeadlineExceeded: see :meth:`screen`.
        """
        _check(deadline)
        return self.screen(self.decode_bytes(buf, name), name, deadline)

    def screen(self, decoded: DecodedImage, name: str, deadline: float | None = None) -> Screening:
        """Screen a decoded image.

        Args:
            deadline: ``time.monotonic()`` after which the work stops at its next step (decoding,
                lung mask, preprocessing, forward pass with Grad-CAM, second map): a service that has
                already answered "too late" does not keep a core busy for nothing.

        Raises:
            DeadlineExceeded: the deadline passed (before the work or between its steps).
        """
        with self._lock:
            _check(deadline)  # the queue for the lock may have used up the time
            prepared = self.prepare_image(decoded, name)
            _check(deadline)
            return self._screen_prepared([(name, prepared)], deadline)[0]

    def _screen_prepared(self, batch: list[tuple[str, PreparedImage]], deadline: float | None = None) -> list[Screening]:
        """Screen ``(name, prepared image)`` pairs in one forward and Grad-CAM pass (the caller holds the lock)."""
        if self._cam is None:
            raise ConfigError("Screener: closed")
        x = torch.cat([p.x for _, p in batch]).contiguous(memory_format=torch.channels_last)
        maps, probs = self._cam.explain(x)
        tops = probs.argmax(axis=1)  # the class each first map explains
        if self._autocast:  # the predictor's numbers (its autocast forward), the maps in fp32
            probs = self.probabilities(x)
        features, fine = self._features(x), self._fine
        _check(deadline)
        scores, far = self.ood.flags(features) if self.ood is not None else (None, None)
        inverted = self.polarity.flags(features, scores) if self.polarity is not None else None
        fine_far = self.ood_fine.flags(fine)[1] if self.ood_fine is not None and fine is not None else None
        results = []
        for i, (name, prepared) in enumerate(batch):
            maps_by_class: dict[str, np.ndarray] = {}
            for index in self.decision.targets_to_explain(probs[i]):  # the reported class, or each called finding
                found = maps[i] if index == tops[i] else self._cam.explain(x[i:i + 1], index)[0][0]
                maps_by_class[self.class_names[index]] = found
                _check(deadline)
            reasons = []  # most specific first
            if is_blank(prepared.decoded.pixels):  # feature distance alone missed blank frames on the real set
                reasons.append("blank image (almost no contrast)")
            if inverted is not None and inverted[i]:  # distance alone missed negatives
                reasons.append("looks inverted (lungs bright, bones dark): check the image's grey levels")
            if far is not None and far[i]:
                reasons.append("features far from the training images'")
            if fine_far is not None and fine_far[i]:
                reasons.append("mid-level features far from the training images' (e.g. a rotated radiograph)")
            flagged = True if reasons else (False if self.ood is not None else None)
            results.append(self._screening(name, prepared, probs[i], maps_by_class, scores[i] if scores is not None else None,
                                           flagged, reasons[0] if reasons else None))
        return results

    def _screening(self, name: str, prepared: PreparedImage, probs: np.ndarray, maps_by_class: dict[str, np.ndarray],
                   score: float | None, flagged: bool | None, reason: str | None) -> Screening:
        """One image's answer, its maps drawn on its original grid."""
        prediction = self.prediction(name, probs)
        original = downsize(prepared.decoded.pixels, self.overlay_side)
        lungs = prepared.lungs if self.preprocess.lung_crop else None
        on_original = {c: cam_to_original(m, original.shape, self.preprocess, lungs) for c, m in maps_by_class.items()}
        return Screening(name, prediction.probabilities, prediction.predicted, prediction.most_probable,
                         None if score is None else float(score), flagged, reason, next(iter(on_original.values())),
                         original, on_original if self.model.multilabel else {})

    def _features(self, x: torch.Tensor) -> np.ndarray:
        """``(1, D)`` pooled last-block features, as the OOD reference was fitted on: for a sequential
        backbone with the map on the last block, the Grad-CAM layer's output from the pass just made,
        else one more forward pass."""
        if self._features_from_cam:
            return self._cam.pooled_activations()
        with torch.no_grad():
            image, _ = self.model.split_input(x.to(self._cam.device))
            return self.model.image_features(image).float().mean(dim=(2, 3)).cpu().numpy()

    def card(self) -> dict:
        """The model's card: what it is, how it was trained and tested, what it is (not) for."""
        return model_card(self.payload, self.model_path, self.model.count_parameters())
