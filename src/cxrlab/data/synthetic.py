"""Synthetic chest-X-ray-like phantoms: the embedded default data (no downloads needed).

Each phantom has a body outline, two lung fields, a mediastinum and heart shadow, a spine,
ribs, and a class-specific opacity inside the lungs:

* ``Normal`` — none;
* ``Pneumonia`` — a focal lobar consolidation: one dense blob in one lung's middle/lower zone;
* ``COVID-19`` — bilateral peripheral ground-glass: faint patches along both lungs' outer edges.

Patients have fixed anatomy and 1-3 images each (small pose and exposure changes). Two
synthetic sources differ in exposure and a burned-in side marker, so cross-source checks have
something to find. Lung masks and lesion masks are written beside the images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from cxrlab.core.errors import ConfigError
from cxrlab.data.classes import COVID, NORMAL, PNEUMONIA
from cxrlab.data.manifest import write_table

PHANTOM_CLASSES = (COVID, PNEUMONIA, NORMAL)
SOURCES = ("phantom-a", "phantom-b")


@dataclass(frozen=True)
class _Anatomy:
    cx: float
    cy: float
    lung_w: float
    lung_h: float
    gap: float
    heart: float
    tilt: float
    body_w: float
    body_h: float


def random_anatomy(rng: np.random.Generator) -> _Anatomy:
    """One fake patient's fixed anatomy (lung, heart and body geometry)."""
    return _Anatomy(cx=rng.uniform(0.45, 0.55), cy=rng.uniform(0.46, 0.56), lung_w=rng.uniform(0.11, 0.14),
                    lung_h=rng.uniform(0.27, 0.32), gap=rng.uniform(0.14, 0.17), heart=rng.uniform(0.09, 0.13),
                    tilt=rng.uniform(-6, 6), body_w=rng.uniform(0.36, 0.47), body_h=rng.uniform(0.42, 0.52))


def _lungs(size: int, a: _Anatomy) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    for side in (-1, 1):
        center = (int(size * (a.cx + side * a.gap)), int(size * a.cy))
        axes = (int(size * a.lung_w), int(size * a.lung_h))
        cv2.ellipse(mask, center, axes, a.tilt * side, 0, 360, 255, -1)
    # the heart shadow cuts into the lower left lung (image right)
    cv2.circle(mask, (int(size * (a.cx + 0.05)), int(size * (a.cy + 0.17))), int(size * a.heart), 0, -1)
    return mask


def _lesion(size: int, label: str, lungs: np.ndarray, a: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    lesion = np.zeros((size, size), np.float32)
    if label == PNEUMONIA:
        side = rng.choice((-1, 1))
        center = (int(size * (a.cx + side * a.gap + rng.uniform(-0.03, 0.03))),
                  int(size * (a.cy + rng.uniform(0.02, 0.15))))
        axes = (int(size * rng.uniform(0.06, 0.09)), int(size * rng.uniform(0.07, 0.1)))
        cv2.ellipse(lesion, center, axes, rng.uniform(0, 180), 0, 360, 0.55, -1)
    elif label == COVID:
        for side in (-1, 1):
            for _ in range(int(rng.integers(3, 6))):
                x = a.cx + side * (a.gap + a.lung_w * rng.uniform(0.55, 0.9))
                y = a.cy + a.lung_h * rng.uniform(-0.2, 0.75)
                r = int(size * rng.uniform(0.03, 0.05))
                cv2.circle(lesion, (int(size * x), int(size * y)), r, 0.28, -1)
    lesion = cv2.GaussianBlur(lesion, (0, 0), size / 64)
    return lesion * (lungs > 0)


def render_phantom(size: int, label: str, anatomy: _Anatomy, rng: np.random.Generator,
                   source: str = SOURCES[0], with_lesion: bool = True,
                   marker: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw one phantom.

    ``with_lesion=False`` draws the same phantom (same random draws) without its opacity, the
    lesion mask still marking where it would be: the counterfactual that shows whether a model
    relies on the finding itself. ``marker`` scales the second source's burned-in side marker.

    Returns:
        ``(image, lung_mask, lesion_mask)``, each ``(size, size) uint8``; masks are 0/255.
    """
    img = np.zeros((size, size), np.float32)
    cv2.ellipse(img, (int(size * anatomy.cx), int(size * 0.55)),
                (int(size * anatomy.body_w), int(size * anatomy.body_h)), 0, 0, 360, 0.55, -1)  # soft tissue
    lungs = _lungs(size, anatomy)
    img[lungs > 0] = 0.18
    cv2.rectangle(img, (int(size * (anatomy.cx - 0.03)), 0), (int(size * (anatomy.cx + 0.03)), size), 0.75, -1)
    cv2.circle(img, (int(size * (anatomy.cx + 0.05)), int(size * (anatomy.cy + 0.17))),
               int(size * anatomy.heart), 0.7, -1)  # heart shadow
    ribs = np.zeros_like(img)
    for k in range(7):
        y = int(size * (anatomy.cy - anatomy.lung_h + 0.02 + k * anatomy.lung_h * 0.28))
        for side in (-1, 1):
            center = (int(size * (anatomy.cx + side * 0.02)), y)
            cv2.ellipse(ribs, center, (int(size * 0.3), int(size * 0.08)), 0,
                        0 if side > 0 else 90, 90 if side > 0 else 180, 0.22, max(1, size // 100))
    img += ribs * (lungs > 0)
    lesion = _lesion(size, label, lungs, anatomy, rng)
    if with_lesion:
        img += lesion
    img = cv2.GaussianBlur(img, (0, 0), size / 200)
    shift = rng.uniform(-0.05, 0.05, size=2) * size
    angle = rng.uniform(-6, 6)
    warp = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
    warp[:, 2] += shift
    img = cv2.warpAffine(img, warp, (size, size))
    lungs = cv2.warpAffine(lungs, warp, (size, size), flags=cv2.INTER_NEAREST)
    lesion_mask = cv2.warpAffine((lesion > 0.05).astype(np.uint8) * 255, warp, (size, size), flags=cv2.INTER_NEAREST)
    gain, offset = (1.0, 0.05) if source == SOURCES[0] else (0.85, 0.12)
    # uneven exposure (heel effect, positioning): a random linear ramp across the film
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, size=2)
    exposure = 1 + gx * ramp[None, :] + gy * ramp[:, None]
    # smooth tissue-density variation, so unrelated phantoms are not near-duplicates by pHash
    field = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), size / 16)
    exposure += 0.6 * field / (np.abs(field).max() + 1e-6)
    img = img * exposure * gain * rng.uniform(0.85, 1.15) + offset + rng.normal(0, 0.03, img.shape)
    image = np.clip(img * 255, 0, 255).astype(np.uint8)
    if source != SOURCES[0]:  # burned-in side marker, the kind of shortcut real sources carry
        cv2.putText(image, "R", (size // 20, int(size / 8 * marker)), cv2.FONT_HERSHEY_SIMPLEX, marker * size / 300,
                    255, max(1, int(marker * size / 150)))
    return image, lungs, lesion_mask


def generate_phantoms(out_dir: str | Path, n_patients: int = 60, size: int = 256, seed: int = 0,
                      max_images_per_patient: int = 3, marker: float = 1.0) -> Path:
    """Write a phantom data set: ``images/``, ``masks/``, ``lesions/`` and ``manifest.csv``.

    Patients are spread evenly over the three classes and two sources. The output depends
    only on the arguments (same arguments → byte-identical files).

    Args:
        out_dir: Destination folder (created).
        n_patients: Number of fake patients (>= 6).
        size: Image side in pixels (>= 32).
        seed: Seed.
        max_images_per_patient: Each patient gets 1..this many images.
        marker: Size of the second source's burned-in side marker, times the default (a shortcut
            that is plain to see, for checks that must find one).

    Returns:
        Path of the written ``manifest.csv``.

    Raises:
        ConfigError: too few patients or too small a size.

    Example:
        >>> generate_phantoms("data/phantoms", n_patients=30, size=128)  # doctest: +SKIP
    """
    if n_patients < 6:
        raise ConfigError(f"n_patients: need at least 6 (two per class), got {n_patients}")
    if size < 32:
        raise ConfigError(f"size: need at least 32 px, got {size}")
    out = Path(out_dir)
    for sub in ("images", "masks", "lesions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = PHANTOM_CLASSES[p % 3]
        source = SOURCES[(p // 3) % 2]
        anatomy = random_anatomy(rng)
        for k in range(int(rng.integers(1, max_images_per_patient + 1))):
            image, lungs, lesion = render_phantom(size, label, anatomy, rng, source, marker=marker)
            stem = f"{source}-p{p:04d}-{k}"
            for sub, array in (("images", image), ("masks", lungs), ("lesions", lesion)):
                cv2.imwrite(str(out / sub / f"{stem}.png"), array)
            rows.append({"image": str(out / "images" / f"{stem}.png"), "label": label,
                         "patient_id": f"{source}:p{p:04d}", "source": source, "view": "PA",
                         "mask": str(out / "masks" / f"{stem}.png"),
                         "lesion": str(out / "lesions" / f"{stem}.png")})
    return write_table(pd.DataFrame(rows), out / "manifest.csv")
