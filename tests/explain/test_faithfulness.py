"""ROAD scores: cxrlab's glue gives the library's numbers, and a lung-attention model's mask is never imputed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.road import (
    ROADLeastRelevantFirstAverage,
    ROADMostRelevantFirstAverage,
)
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from cxrlab.data import load_source
from cxrlab.explain.faithfulness import road_scores
from cxrlab.explain.gradcam import GradCamExplainer
from cxrlab.models import create_classifier
from cxrlab.preprocess import PreprocessConfig, Preprocessor
from cxrlab.preprocess.transforms import to_model_input

NAMES = ("COVID-19", "Pneumonia", "Normal")


def test_road_scores_are_the_libraries_on_the_model_s_own_maps(phantoms):
    rows = load_source(phantoms).table.head(2)
    model = create_classifier("efficientnet_lite0", 3, class_names=NAMES, seed=0, pretrained="none").eval()
    preprocess = PreprocessConfig(size=48)
    table = road_scores(model, preprocess, rows, percentiles=(30, 70), seed=3)
    assert len(table) == 2 and np.allclose(table["road"], (table["lerf"] - table["morf"]) / 2)
    first = rows.iloc[0]
    x = torch.from_numpy(to_model_input(Preprocessor(preprocess)(first["image"]).pixels, model.spec.mean,
                                        model.spec.std, model.spec.in_chans))[None]
    with GradCamExplainer(model) as cam:
        maps, probs = cam.explain(x)
    targets = [ClassifierOutputSoftmaxTarget(int(probs[0].argmax()))]
    torch.manual_seed(3)  # the imputation's noise, drawn in the same order
    morf = float(ROADMostRelevantFirstAverage([30, 70])(x, maps, targets, model)[0])
    lerf = float(ROADLeastRelevantFirstAverage([30, 70])(x, maps, targets, model)[0])
    assert table["morf"].iloc[0] == pytest.approx(morf, abs=1e-6) and table["lerf"].iloc[0] == pytest.approx(lerf, abs=1e-6)
    assert table["predicted"].iloc[0] == NAMES[int(probs[0].argmax())]


def test_a_lung_attention_model_keeps_its_mask_channel(phantoms):
    rows = load_source(phantoms).table.head(2)
    model = create_classifier("efficientnet_lite0", 3, class_names=NAMES, seed=0, pretrained="none",
                              lung_attention=True).eval()
    seen = []
    original = model.forward
    model.forward = lambda x: (seen.append(x[:, -1].clone()), original(x))[1]  # record the mask channel it gets
    table = road_scores(model, PreprocessConfig(size=48, keep_mask=True), rows, percentiles=(50,))
    assert len(table) == 2 and seen
    assert all(set(torch.unique(m).tolist()) <= {0.0, 1.0} for m in seen)  # 0/1 always: never imputed
    no_masks = rows.assign(mask="")
    assert road_scores(model, PreprocessConfig(size=48, keep_mask=True), no_masks).empty  # skipped, with a warning
