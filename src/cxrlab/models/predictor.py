"""One predictor for every door: image → lung mask → preprocessing → model → decision rule.

``predict``, ``explain`` and ``serve`` (through :class:`cxrlab.explain.Screener`, which adds the
Grad-CAM map and the out-of-distribution flag), ``evaluate``, the study's test side and
``train --folds``' out-of-fold side all go through :class:`Predictor`, so the same image and model
give the same probabilities and the same class whichever door they come through:

* the model file is read once (:func:`cxrlab.models.load_model`: a single model or a fold ensemble
  with its test-time views);
* a model whose preprocessing uses a lung mask (lung crop, inpainting, lung attention) takes it from
  the input's table (a manifest's ``mask`` column) or, given a segmenter, from the segmenter for every
  image (one origin for all masks);
* the model's own :class:`cxrlab.preprocess.PreprocessConfig` turns the decoded image into its
  input (:func:`cxrlab.preprocess.transforms.to_model_input` normalises it);
* :class:`cxrlab.models.inference.InferenceModel` runs it on the command's device and precision;
* the model file's :class:`cxrlab.models.decision.DecisionRule` names the class.

One image at a time (:meth:`Predictor.predict_file`) and a table of images through prepared shards
(:meth:`Predictor.predict_frame`: decoding in parallel, cached between runs) run the same steps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch

from cxrlab.core.errors import ConfigError, InvalidImageError
from cxrlab.core.io import atomic_write_bytes
from cxrlab.core.run_folder import model_file
from cxrlab.data.images import DecodedImage, decode_image, read_image, read_mask
from cxrlab.data.manifest import Manifest
from cxrlab.models.checkpoint import load_model
from cxrlab.models.decision import DecisionRule
from cxrlab.models.ensemble import EnsembleClassifier
from cxrlab.models.inference import InferenceModel
from cxrlab.models.segmenter import LungSegmenter
from cxrlab.models.tta import TtaMode
from cxrlab.preprocess import PreprocessConfig, Preprocessor, ShardDataset, ShardReader, prepare
from cxrlab.preprocess.pipeline import ProcessedImage
from cxrlab.preprocess.transforms import to_model_input


@dataclass
class Prediction:
    """What the predictor says of one image.

    Attributes:
        image: The file (or upload) name.
        probabilities: Class → probability (a multi-label model: each finding's own).
        predicted: The class the model file's decision rule reports.
        most_probable: The class with the highest probability.
    """

    image: str
    probabilities: dict[str, float]
    predicted: str
    most_probable: str

    def record(self) -> dict:
        """JSON-ready fields."""
        return {"image": self.image, "probabilities": self.probabilities, "predicted": self.predicted,
                "most_probable": self.most_probable}


@dataclass
class Predictions:
    """A model's outputs on a table of images (rows that could not be read are left out).

    Attributes:
        frame: The rows predicted, in order.
        logits: ``(N, C)`` the model's logits.
        probs: ``(N, C)`` probabilities (softmax over classes, or a sigmoid per finding).
        y_true: ``(N,)`` class indices, or for a multi-label model ``(N, F)`` 1/0 with NaN where unknown.
        class_names: Column order.
        skipped: ``(image, reason)`` of the rows left out.
        predicted: The decision rule's class per row.
        multilabel: Independent findings.
    """

    frame: pd.DataFrame
    logits: np.ndarray
    probs: np.ndarray
    y_true: np.ndarray
    class_names: tuple[str, ...]
    skipped: list[tuple[str, str]]
    predicted: list[str] = field(default_factory=list)
    multilabel: bool = False


@dataclass(frozen=True)
class PreparedImage:
    """One image made ready for the model.

    Attributes:
        decoded: The decoded file.
        lungs: Its lung mask on the decoded grid when the preprocessing uses one, else ``None``.
        processed: The preprocessed pixels (and the mask on their grid, for a lung-attention model).
        x: ``(1, C, S, S) float32`` the model's input.
    """

    decoded: DecodedImage
    lungs: np.ndarray | None
    processed: ProcessedImage
    x: torch.Tensor


def mask_file_name(image: str) -> str:
    """A file name for ``image``'s lung mask: its stem (readable) and a hash of the whole path (two images
    with one stem in two folders stay apart)."""
    return f"{Path(image).stem}-{hashlib.sha1(str(image).encode()).hexdigest()[:8]}.png"


class Predictor:
    """A model file ready to predict images; the steps every door shares.

    Args:
        model: A model file, or a run folder with one.
        segmenter: A lung segmenter file: every image's mask comes from it (required by the
            one-image doors for a model whose preprocessing uses masks).
        views: Test-time views to average over instead of the model file's own (``train --folds``
            predicts each fold's out-of-fold side with the views its ensemble will use).

    Raises:
        ConfigError: not a model file, a segmenter that cannot be read, or an invalid decision rule.
    """

    def __init__(self, model: str | Path, *, segmenter: str | Path | None = None, views: TtaMode | None = None) -> None:
        self.model_path = model_file(model)
        self.model, self.preprocess, self.payload = load_model(self.model_path)
        if views is not None and views != getattr(self.model, "tta", "none"):  # another set of test-time views
            members = list(self.model.members) if isinstance(self.model, EnsembleClassifier) else [self.model]
            self.model = EnsembleClassifier(members, views).eval()
        self.class_names = list(self.model.class_names)
        self.preprocessor = Preprocessor(self.preprocess)
        self.reference = (self.payload.get("extra") or {}).get("screening") or {}
        self.operating_point = self.reference.get("operating_point")
        self.decision = DecisionRule.from_operating_point(self.operating_point, self.class_names, self.model.multilabel,
                                                          f"{self.model_path}: operating point")
        self.segmenter = LungSegmenter(segmenter) if segmenter is not None and self.needs_mask else None
        self._inference: InferenceModel | None = None

    @property
    def needs_mask(self) -> bool:
        """Whether the model's preprocessing uses a lung mask (lung crop, inpainting, lung attention)."""
        return self.preprocessor.needs_mask

    def require_segmenter(self) -> None:
        """For doors whose inputs carry no masks (files, uploads).

        Raises:
            ConfigError: the model uses lung masks and no segmenter was given.
        """
        if self.needs_mask and self.segmenter is None:
            raise ConfigError(f"{self.model_path}: this model's preprocessing uses a lung mask (lung crop, inpainting "
                              "or lung attention): give a lung segmenter file (--segmenter; 'cxrlab segment train' "
                              "makes one)")

    # one image
    def decode_file(self, path: str | Path) -> DecodedImage:
        """Decode a file as the model's preprocessing asks.

        Raises:
            InvalidImageError: unreadable, corrupt, too large or too small (names the file).
        """
        return read_image(path, **self.preprocessor.decode_options)

    def decode_bytes(self, buf: bytes, name: str) -> DecodedImage:
        """Decode bytes (an upload) as the model's preprocessing asks; ``name`` labels errors."""
        return decode_image(buf, name, **self.preprocessor.decode_options)

    def lungs(self, decoded: DecodedImage, name: str | Path, mask_path: str | Path | None = None) -> np.ndarray | None:
        """``(H, W) bool`` lung mask of a decoded image on its grid, when the model uses one: the
        segmenter's if given, else the file ``mask_path``, else ``None``.

        Raises:
            InvalidImageError: the mask file is unusable (names the image and the mask).
        """
        if not self.needs_mask:
            return None
        if self.segmenter is not None:
            return self.segmenter(decoded)
        if mask_path:
            try:
                return read_mask(mask_path, decoded.pixels.shape)
            except InvalidImageError as err:
                raise InvalidImageError(name, f"its lung mask is unusable ({err.reason}): {mask_path}") from err
        return None

    def prepare_image(self, decoded: DecodedImage, name: str | Path, mask_path: str | Path | None = None) -> PreparedImage:
        """Mask, preprocess and normalise a decoded image into the model's input.

        Raises:
            InvalidImageError: a lung-attention model's image has no usable mask (names it).
        """
        lungs = self.lungs(decoded, name, mask_path)
        processed = self.preprocessor.process(decoded, name, lungs)
        return PreparedImage(decoded, lungs, processed, self.model_input(processed))

    def model_input(self, processed: ProcessedImage) -> torch.Tensor:
        """``(1, C, S, S) float32``: a preprocessed image normalised as the model expects (its mask as a
        last channel for a lung-attention model)."""
        spec = self.model.spec
        mask = processed.mask if self.model.lung_attention else None
        if self.model.lung_attention and mask is None:
            raise ConfigError("this model uses lung attention: its input needs a lung mask")
        return torch.from_numpy(to_model_input(processed.pixels, spec.mean, spec.std, spec.in_chans, mask))[None]

    @property
    def inference(self) -> InferenceModel:
        """The model on the command's device and precision (made on first use)."""
        if self._inference is None:
            self._inference = InferenceModel(self.model)
        return self._inference

    def probabilities(self, x: torch.Tensor) -> np.ndarray:
        """``(B, C)`` probabilities of a normalised batch."""
        return self.inference.probabilities(x).numpy()

    def prediction(self, name: str | Path, probabilities: np.ndarray) -> Prediction:
        """The record of one image's ``(C,)`` probabilities under the decision rule."""
        probabilities = np.asarray(probabilities, dtype=float)
        return Prediction(str(name), {c: float(p) for c, p in zip(self.class_names, probabilities, strict=True)},
                          self.decision.decide(probabilities), self.class_names[int(np.argmax(probabilities))])

    def predict_file(self, path: str | Path, mask_path: str | Path | None = None) -> Prediction:
        """Predict one image file (no explanation).

        Raises:
            InvalidImageError: the image (or its mask) cannot be used; names the file.
        """
        prepared = self.prepare_image(self.decode_file(path), path, mask_path)
        return self.prediction(path, self.probabilities(prepared.x)[0])

    # a table of images
    def segment_frame(self, frame: pd.DataFrame, folder: Path) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
        """``frame`` with every row's ``mask`` from the segmenter (PNG files under ``folder``, reused when
        there), and the rows whose image could not be read; unchanged without a segmenter."""
        if self.segmenter is None:
            return frame, []
        folder.mkdir(parents=True, exist_ok=True)
        masks, skipped = [], []
        for image in frame["image"]:
            target = folder / mask_file_name(image)
            if not target.exists():
                try:
                    lungs = self.segmenter(self.decode_file(image))
                except InvalidImageError as err:
                    skipped.append((str(image), err.reason))
                    masks.append("")
                    continue
                ok, buf = cv2.imencode(".png", lungs.astype(np.uint8) * 255)
                if not ok:
                    raise ConfigError(f"{image}: cannot encode its lung mask as PNG")
                atomic_write_bytes(target, buf.tobytes())
            masks.append(str(target))
        frame = frame.assign(mask=masks, mask_source="predicted")
        return frame[frame["mask"] != ""], skipped

    def _prepared_already(self, frame: pd.DataFrame, prepared: Path | None) -> ShardReader | None:
        """A folder of shards that already holds every image of ``frame`` made with this model's
        preprocessing (a cross-validation's shared shards: its held-out fold), else None."""
        if prepared is None or self.segmenter is not None or not (Path(prepared) / "shards").is_dir():
            return None
        reader = ShardReader(prepared)
        made = PreprocessConfig.from_dict(reader.config).pixel_settings() if reader.config else None
        if made != self.preprocess.pixel_settings():
            return None
        if self.model.lung_attention and not reader.config.get("keep_mask"):  # its input carries the mask
            return None
        return reader if set(frame["image"]) <= set(reader.table["image"]) else None

    def dataset(self, frame: pd.DataFrame, work_dir: Path,
                prepared: Path | None = None) -> tuple[pd.DataFrame, ShardDataset, list[tuple[str, str]]]:
        """Preprocess ``frame``'s images into shards under ``work_dir`` (reused when already there), or
        read them from ``prepared`` when it already holds them all, made the same way.

        Returns:
            ``(rows that could be read, their dataset normalised for the model, skipped (image, reason))``.

        Raises:
            ConfigError: a label is not one of the model's classes, or no image could be read.
        """
        model = self.model
        unknown = [] if model.multilabel else sorted(set(frame["label"]) - set(model.class_names))
        if unknown:
            raise ConfigError(f"labels {unknown} are not classes of the model {list(model.class_names)}; "
                              "use the scheme the model was trained with")
        frame = frame.reset_index(drop=True).assign(view=frame.get("view", ""))
        reader = self._prepared_already(frame, prepared)
        if reader is not None:
            skipped = []
        else:
            frame, unread = self.segment_frame(frame, Path(work_dir) / "masks")
            summary = prepare(Manifest(frame.reset_index(drop=True), model.class_names), work_dir, self.preprocess)
            skipped = unread + list(summary.skipped)
            if summary.images == 0:
                raise ConfigError(f"no image could be read ({len(skipped)} skipped)")
            reader = ShardReader(work_dir)
        kept = frame[frame["image"].isin(set(reader.table["image"]))].reset_index(drop=True)
        dataset = ShardDataset(reader, model.class_names, images=kept["image"].tolist(), mean=model.spec.mean,
                               std=model.spec.std, in_chans=model.spec.in_chans, with_masks=model.lung_attention,
                               multilabel=model.multilabel)
        return kept, dataset, skipped

    def predict_frame(self, frame: pd.DataFrame, work_dir: Path, batch_size: int = 32,
                      prepared: Path | None = None) -> Predictions:
        """Preprocess ``frame``'s images (``image``, ``label`` and optionally ``mask``) into shards under
        ``work_dir`` (or read them from ``prepared``, :meth:`dataset`) and predict them.

        Raises:
            ConfigError: a label is not one of the model's classes, or no image could be read.
        """
        kept, dataset, skipped = self.dataset(frame, work_dir, prepared)
        logits = torch.cat([self.inference.logits(x) for x, _ in torch.utils.data.DataLoader(dataset, batch_size=batch_size)])
        probs = self.model.probabilities(logits).numpy()
        return Predictions(kept, logits.numpy(), probs, np.asarray(dataset.targets), self.model.class_names, skipped,
                           self.decision.decide_all(probs), self.model.multilabel)
