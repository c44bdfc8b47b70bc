"""Explanations: Grad-CAM / Grad-CAM++ (pytorch-grad-cam), overlays, evidence inside the lungs."""

from __future__ import annotations

from cxrlab.explain.gradcam import GradCamExplainer, resolve_target_layer
from cxrlab.explain.filters import first_conv, plot_first_layer_filters
from cxrlab.explain.gallery import plot_gallery, select_examples
from cxrlab.explain.images import explain_images
from cxrlab.explain.lung_evidence import lung_evidence, plot_lung_evidence, summarise_lung_evidence
from cxrlab.explain.overlay import cam_to_original, in_mask_share, overlay, peak_in_mask

__all__ = ["GradCamExplainer", "explain_images", "first_conv", "plot_first_layer_filters", "cam_to_original", "in_mask_share", "lung_evidence", "overlay", "plot_gallery", "plot_lung_evidence", "select_examples", "peak_in_mask", "resolve_target_layer", "summarise_lung_evidence"]
