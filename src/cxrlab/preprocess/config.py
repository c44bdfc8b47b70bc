"""``PreprocessConfig``: every preprocessing setting, once: the ``preprocess`` section of a training
config, what ``cxrlab prepare`` takes (``--config``, ``--set preprocess.size=...``) and what a model
file records."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from cxrlab.core.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from cxrlab.core.errors import ConfigError
from cxrlab.core.settings import Settings

Contrast = Literal["none", "clahe", "equalize"]
ResizeMode = Literal["stretch", "letterbox"]
ContrastAt = Literal["source", "target"]
Artifacts = Literal["keep", "inpaint"]


class PreprocessConfig(Settings):
    """How an image file becomes a ``(size, size) uint8`` array.

    ``contrast`` defaults to ``clahe``: the papers' pipeline, and every model cxrlab's recipe was chosen
    with (docs/benchmarks/recipe.md) was trained on CLAHE images. ``size`` defaults to the backbone's
    own input size (224 for EfficientNet-Lite0); a model file records the size it was trained at.
    """

    section: ClassVar[str] = "preprocess"

    size: int | None = Field(None, ge=16, le=4096, description="output side in pixels; default: the backbone's native "
                                                              "input size (the papers used 224-800)")
    resize: ResizeMode = Field("stretch", description="stretch to a square (the papers' choice) or letterbox (keep "
                                                      "the aspect ratio, pad with black)")
    contrast: Contrast = Field("clahe", description="none, clahe (contrast-limited adaptive histogram equalisation) "
                                                    "or equalize (global histogram equalisation)")
    clahe_clip: float = Field(2.0, gt=0, description="CLAHE clip limit")
    clahe_grid: int = Field(8, ge=1, le=64, description="CLAHE tiles per side")
    contrast_at: ContrastAt = Field("source", description="apply the contrast step at the source resolution, then "
                                                          "resize (the papers' order), or at the target size (about "
                                                          "twice as fast; slightly different)")
    lung_crop: bool = Field(False, description="crop each image to its lung mask's box (images without a mask stay "
                                               "whole; cxrlab segment predict fills in masks)")
    crop_margin: float = Field(0.05, ge=0, le=1, description="margin around the lung box, as a share of the box size")
    artifacts: Artifacts = Field("keep", description="inpaint: paint out burned-in text, markers and thin frames "
                                                     "before any other step (uses the lung mask when there is one)")
    keep_mask: bool = Field(False, description="store each image's lung mask beside its pixels, cropped and resized "
                                               "like them (lung-attention models need it; images without a usable "
                                               "mask are skipped)")
    fast_decode: bool = Field(False, description="decode JPEGs at a reduced scale (DCT scaling) while the shorter side "
                                                 "stays >= 2 x size: faster, slightly different pixels")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, gt=0, description="refuse larger images (decompression-bomb guard)")
    min_side: int = Field(DEFAULT_MIN_SIDE, ge=1, description="refuse images whose shorter side is smaller")

    def resolved(self, input_size: int) -> PreprocessConfig:
        """This config with ``size`` set: its own, else ``input_size`` (the backbone's)."""
        return self if self.size is not None else self.updated(size=input_size)

    @property
    def side(self) -> int:
        """The output side.

        Raises:
            ConfigError: ``size`` is not resolved yet (see :meth:`resolved`).
        """
        if self.size is None:
            raise ConfigError("preprocess.size: not set; give a size or resolve it with the backbone's input size")
        return self.size

    def to_dict(self) -> dict:
        """Plain-dict form (what a model file and a prepared folder's plan record)."""
        return self.model_dump(mode="json")

    def pixel_settings(self) -> dict:
        """:meth:`to_dict` without what leaves the pixels as they are (``keep_mask``): two preparations
        with equal pixel settings make the same images."""
        return {k: v for k, v in self.to_dict().items() if k != "keep_mask"}

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        """Build from a dict, refusing unknown keys by name (missing keys take their defaults, so
        settings recorded before a key existed still load).

        Raises:
            ConfigError: an unknown key or a bad value (named).
        """
        unknown = sorted(set(data) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"preprocess: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)
