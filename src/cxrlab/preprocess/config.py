"""``PreprocessConfig``: every preprocessing setting in one frozen, dict-round-tripping record."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Literal

from cxrlab.core.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE
from cxrlab.core.errors import ConfigError

Contrast = Literal["none", "clahe", "equalize"]
ResizeMode = Literal["stretch", "letterbox"]
ContrastAt = Literal["source", "target"]
Artifacts = Literal["keep", "inpaint"]


@dataclass(frozen=True)
class PreprocessConfig:
    """How an image file becomes a ``(size, size) uint8`` array.

    Attributes:
        size: Output side in pixels (the papers used 224-800).
        resize: ``stretch`` to a square (the papers' choice) or ``letterbox`` (keep the aspect
            ratio, pad with black).
        contrast: ``none``, ``clahe`` (contrast-limited adaptive histogram equalisation) or
            ``equalize`` (global histogram equalisation).
        clahe_clip: CLAHE clip limit.
        clahe_grid: CLAHE tiles per side.
        contrast_at: Apply the contrast step at the ``source`` resolution (then resize; the
            papers' order) or at the ``target`` size (about twice as fast; slightly different).
        lung_crop: Crop to the lung mask's bounding box (images without a mask stay whole).
        crop_margin: Margin around the lung box, as a share of the box size.
        keep_mask: Store each image's lung mask, cropped and resized like the pixels, beside them
            (guided-attention models need it; images without a usable, non-empty mask are skipped).
        artifacts: ``inpaint`` paints out burned-in text, markers and thin frames before any other
            step (:mod:`cxrlab.preprocess.artifacts`; uses the lung mask when there is one), or
            ``keep`` them.
        fast_decode: Decode JPEGs at a reduced scale (DCT scaling) while the shorter side
            stays >= 2 x ``size``; faster, slightly different pixels.
        max_pixels: Refuse larger images (decompression-bomb guard).
        min_side: Refuse images whose shorter side is smaller.
    """

    size: int = 224
    resize: ResizeMode = "stretch"
    contrast: Contrast = "none"
    clahe_clip: float = 2.0
    clahe_grid: int = 8
    contrast_at: ContrastAt = "source"
    lung_crop: bool = False
    crop_margin: float = 0.05
    artifacts: Artifacts = "keep"
    keep_mask: bool = False
    fast_decode: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    min_side: int = DEFAULT_MIN_SIDE

    def __post_init__(self) -> None:
        checks = {
            "size": 16 <= self.size <= 4096,
            "resize": self.resize in ("stretch", "letterbox"),
            "contrast": self.contrast in ("none", "clahe", "equalize"),
            "clahe_clip": self.clahe_clip > 0,
            "clahe_grid": 1 <= self.clahe_grid <= 64,
            "contrast_at": self.contrast_at in ("source", "target"),
            "crop_margin": 0 <= self.crop_margin <= 1,
            "artifacts": self.artifacts in ("keep", "inpaint"),
            "max_pixels": self.max_pixels > 0,
            "min_side": self.min_side >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ConfigError(f"preprocess.{name}: invalid value {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessConfig:
        """Build from a dict, refusing unknown keys by name (missing keys take their defaults, so
        settings recorded before a key existed still load)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"preprocess: unknown setting(s) {', '.join(unknown)}")
        return cls(**data)
