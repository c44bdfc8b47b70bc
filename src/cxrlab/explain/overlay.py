"""Heatmaps on the original image, and the share of evidence inside the lungs."""

from __future__ import annotations

import cv2
import numpy as np
from pytorch_grad_cam.utils.image import show_cam_on_image

from cxrlab.preprocess.config import PreprocessConfig
from cxrlab.preprocess.transforms import LungCrop


MAX_OVERLAY_SIDE = 1024  # overlays are drawn on the original image downsized to at most this


def downsize(pixels: np.ndarray, side: int = MAX_OVERLAY_SIDE) -> np.ndarray:
    """``pixels`` scaled (area interpolation) so that the longer side is at most ``side``."""
    if max(pixels.shape[:2]) <= side:
        return pixels
    scale = side / max(pixels.shape[:2])
    return cv2.resize(pixels, (round(pixels.shape[1] * scale), round(pixels.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def cam_to_original(cam: np.ndarray, original_shape: tuple[int, int], preprocess: PreprocessConfig,
                    lung_mask: np.ndarray | None = None) -> np.ndarray:
    """Map a ``(size, size)`` map back onto the original ``(H, W)`` image, undoing stretch or letterbox
    and, for a lung-cropping model, the crop (``lung_mask``: the mask it cropped to; outside the
    crop the map is 0)."""
    h, w = original_shape
    if preprocess.lung_crop and lung_mask is not None:
        if lung_mask.shape != (h, w):
            lung_mask = cv2.resize(lung_mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
        box = LungCrop(preprocess.crop_margin).box(lung_mask)
        if box is not None:
            y0, y1, x0, x1 = box
            out = np.zeros((h, w), np.float32)
            out[y0:y1, x0:x1] = cam_to_original(cam, (y1 - y0, x1 - x0), preprocess)
            return out
    if preprocess.resize == "letterbox":
        size = cam.shape[0]
        scale = size / max(h, w)
        sh, sw = max(1, round(h * scale)), max(1, round(w * scale))
        top, left = (size - sh) // 2, (size - sw) // 2
        cam = cam[top:top + sh, left:left + sw]
    return cv2.resize(cam, (w, h), interpolation=cv2.INTER_LINEAR)


def overlay(image: np.ndarray, cam: np.ndarray, weight: float = 0.45) -> np.ndarray:
    """``(H, W, 3) uint8`` RGB: the grayscale image with the heatmap (jet) blended on top."""
    rgb = np.repeat((image.astype(np.float32) / 255.0)[..., None], 3, axis=2)
    return show_cam_on_image(rgb, np.clip(cam, 0, 1), use_rgb=True, image_weight=1 - weight)


def in_mask_share(cam: np.ndarray, mask: np.ndarray) -> float | None:
    """Share of the map's mass inside ``mask`` (resized to the map); ``None`` for an all-zero map."""
    if mask.shape != cam.shape:
        mask = cv2.resize(mask.astype(np.uint8), cam.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    total = float(cam.sum())
    return float(cam[mask].sum() / total) if total > 0 else None


def peak_in_mask(cam: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the map's maximum lies inside ``mask`` (resized to the map)."""
    if mask.shape != cam.shape:
        mask = cv2.resize(mask.astype(np.uint8), cam.shape[::-1], interpolation=cv2.INTER_NEAREST) > 0
    return bool(mask.flat[int(np.argmax(cam))])
