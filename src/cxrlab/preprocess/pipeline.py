"""One preprocessing implementation for training, ETL and serving: file → ``(size, size) uint8``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cxrlab.core.errors import InvalidImageError
from cxrlab.data.images import DecodedImage, read_image, read_mask
from cxrlab.preprocess.artifacts import remove_artifacts
from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.transforms import Clahe, Compose, Equalize, LungCrop, Resize


@dataclass(frozen=True)
class ProcessedImage:
    """Result of :class:`Preprocessor`.

    Attributes:
        pixels: ``(size, size) uint8``.
        orig_height: Stored height of the source file.
        orig_width: Stored width of the source file.
        artifact_pixels: Pixels painted out as burned-in marks (``artifacts="inpaint"``).
        mask: ``(size, size) bool`` lung mask on the pixels' grid (``keep_mask`` only).
    """

    pixels: np.ndarray
    orig_height: int
    orig_width: int
    artifact_pixels: int = 0
    mask: np.ndarray | None = None


def build_transforms(config: PreprocessConfig) -> Compose:
    """The transform chain a config describes (without decoding)."""
    steps: list = []
    if config.lung_crop:
        steps.append(LungCrop(config.crop_margin))
    contrast = {"clahe": Clahe(config.clahe_clip, config.clahe_grid), "equalize": Equalize()}.get(config.contrast)
    resize = Resize(config.side, config.resize)
    if contrast is not None and config.contrast_at == "source":
        steps += [contrast, resize]
    else:
        steps += [resize] + ([contrast] if contrast is not None else [])
    return Compose(steps)


class Preprocessor:
    """Decode and preprocess image files according to a :class:`PreprocessConfig`.

    Example:
        >>> pre = Preprocessor(PreprocessConfig(size=224, contrast="clahe"))  # doctest: +SKIP
        >>> pre("images/nih-00000129_000.jpg").pixels.shape
        (224, 224)
    """

    def __init__(self, config: PreprocessConfig) -> None:
        self.config = config
        self.transforms = build_transforms(config)

    def __call__(self, path: str | Path, mask_path: str | Path | None = None) -> ProcessedImage:
        """Preprocess one file.

        Args:
            path: Image file (any format :func:`cxrlab.data.read_image` reads).
            mask_path: Lung mask, used by ``lung_crop``, ``artifacts="inpaint"`` and ``keep_mask``.

        Raises:
            InvalidImageError: the image (or its mask) cannot be used, or ``keep_mask`` is set and
                there is no non-empty mask; names the file.
        """
        if self.config.keep_mask and not mask_path:
            raise InvalidImageError(path, "no lung mask (the model multiplies its features by one; "
                                          "'cxrlab segment predict' makes them)")
        decoded = read_image(path, **self.decode_options)
        mask = None
        if self.needs_mask and mask_path:
            try:
                mask = read_mask(mask_path, decoded.pixels.shape)
            except InvalidImageError as err:
                raise InvalidImageError(path, f"its lung mask is unusable ({err.reason}): {mask_path}") from err
        return self.process(decoded, path, mask, mask_path)

    @property
    def decode_options(self) -> dict:
        """Keyword arguments for :func:`cxrlab.data.read_image` / ``decode_image`` under this config."""
        cfg = self.config
        return {"max_pixels": cfg.max_pixels, "min_side": cfg.min_side,
                "reduce_to": 2 * cfg.size if cfg.fast_decode else None}

    @property
    def needs_mask(self) -> bool:
        """Whether this config uses a lung mask (lung crop, inpainting, or a model that keeps it)."""
        cfg = self.config
        return cfg.lung_crop or cfg.artifacts == "inpaint" or cfg.keep_mask

    def process(self, decoded: DecodedImage, name: str | Path, mask: np.ndarray | None = None,
                mask_label: str | Path | None = None) -> ProcessedImage:
        """Preprocess an already decoded image (a file's or an upload's); ``mask``: its lung mask on the
        image's grid (``read_mask`` and ``LungSegmenter`` give it so).

        Raises:
            InvalidImageError: ``keep_mask`` is set and the mask is missing or empty; names ``name``.
        """
        cfg = self.config
        if cfg.keep_mask and mask is None:
            raise InvalidImageError(name, "no lung mask (the model multiplies its features by one)")
        pixels, touched = decoded.pixels, 0
        if cfg.artifacts == "inpaint":
            cleaned = remove_artifacts(pixels, mask)
            pixels, touched = cleaned.pixels, cleaned.touched
        pixels, moved = self.transforms(pixels, mask if cfg.lung_crop or cfg.keep_mask else None)
        if cfg.keep_mask and not moved.any():
            raise InvalidImageError(name, f"its lung mask is empty{f': {mask_label}' if mask_label else ''}")
        return ProcessedImage(np.ascontiguousarray(pixels), decoded.orig_height, decoded.orig_width, touched,
                              np.ascontiguousarray(moved) if cfg.keep_mask else None)
