"""Explanations: Grad-CAM / Grad-CAM++ (pytorch-grad-cam), overlays, evidence inside the lungs and on lesions."""

from __future__ import annotations

from cxrlab.explain.gradcam import CamMethod, GradCamExplainer, resolve_target_layers
from cxrlab.explain.filters import first_conv, plot_first_layer_filters
from cxrlab.explain.gallery import plot_gallery, select_examples
from cxrlab.explain.images import explain_images
from cxrlab.explain.lesion_evidence import lesion_evidence, pointing_hit, summarise_lesion_evidence
from cxrlab.explain.lung_evidence import lung_evidence, plot_lung_evidence, summarise_lung_evidence
from cxrlab.explain.model_card import model_card
from cxrlab.explain.predict import predict_images
from cxrlab.explain.screening import Screener, Screening
from cxrlab.explain.overlay import cam_to_original, in_mask_share, overlay, peak_in_mask

__all__ = ["CamMethod", "GradCamExplainer", "Screener", "Screening", "model_card", "predict_images", "explain_images", "first_conv", "plot_first_layer_filters", "cam_to_original", "in_mask_share", "lesion_evidence", "lung_evidence", "overlay", "plot_gallery", "plot_lung_evidence", "select_examples", "peak_in_mask", "pointing_hit", "resolve_target_layers", "summarise_lesion_evidence", "summarise_lung_evidence"]
