"""The pointing game: geometry of hits, and a known answer through files, preprocessing and mapping back."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrlab.explain import lesion_evidence, pointing_hit, summarise_lesion_evidence
from cxrlab.explain.lesion_evidence import POINTING_TOLERANCE
from cxrlab.preprocess import PreprocessConfig


def test_pointing_hit_geometry():
    lesion = np.zeros((200, 200), bool)
    lesion[50:70, 50:70] = True
    cam = np.zeros((200, 200), np.float32)
    cam[60, 60] = 1.0
    assert pointing_hit(cam, lesion) == (True, 0.0)
    cam[:] = 0
    cam[60, 80] = 1.0  # 11 px right of the lesion: within 15/224 of 200 px (13.4 px)
    hit, distance = pointing_hit(cam, lesion)
    assert hit and distance == pytest.approx(11 / 200, abs=0.01)
    cam[:] = 0
    cam[150, 150] = 1.0
    hit, distance = pointing_hit(cam, lesion)
    assert not hit and distance > 0.3


class Gate(nn.Module):
    """Multiplies by a fixed spatial region (all ones: no gate)."""

    def __init__(self, region: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("region", region)

    def forward(self, x):
        return x * self.region


class SpotNet(nn.Module):
    """Class 0's evidence is brightness, optionally only inside a fixed region of the input grid."""

    def __init__(self, region: torch.Tensor | None = None) -> None:
        super().__init__()
        self.spec = SimpleNamespace(mean=(0.0,), std=(1.0,), in_chans=1)
        self.class_names = ("Pneumonia", "Normal")
        self.conv = nn.Conv2d(1, 1, 1, bias=False)
        self.gate = Gate(torch.ones(1, 1, 1, 1) if region is None else region)
        self.fc = nn.Linear(1, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[1.0], [-1.0]]))

    def cam_layer(self) -> nn.Module:
        return self.gate

    def forward(self, x):
        return self.fc(torch.relu(self.gate(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture()
def spots(tmp_path) -> pd.DataFrame:
    """Non-square dark images, each with one bright disc (the 'lesion') away from the top-left corner."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        image = np.full((90, 140), 20, np.uint8)
        lesion = np.zeros_like(image)
        centre = (int(rng.integers(70, 125)), int(rng.integers(45, 75)))
        cv2.circle(image, centre, 8, 230, -1)
        cv2.circle(lesion, centre, 8, 255, -1)
        cv2.imwrite(str(tmp_path / f"i{i}.png"), image)
        cv2.imwrite(str(tmp_path / f"l{i}.png"), lesion)
        rows.append({"image": str(tmp_path / f"i{i}.png"), "lesion": str(tmp_path / f"l{i}.png"),
                     "label": "Pneumonia", "predicted": "Pneumonia"})
    empty = np.zeros((90, 140), np.uint8)
    cv2.imwrite(str(tmp_path / "empty.png"), empty)
    rows.append({"image": str(tmp_path / "i0.png"), "lesion": str(tmp_path / "empty.png"),  # nothing to point at
                 "label": "Normal", "predicted": "Normal"})
    rows.append({"image": str(tmp_path / "i1.png"), "lesion": "", "label": "Normal", "predicted": "Normal"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_known_answer_through_files_and_geometry(spots, resize):
    preprocess = PreprocessConfig(size=64, contrast="none", resize=resize)
    table = lesion_evidence(SpotNet().eval(), preprocess, spots)
    assert len(table) == 6  # the empty mask and the row without one are left out
    assert table["hit"].all() and (table["lesion_share"] > 5 * table["lesion_area"]).all()
    summary = summarise_lesion_evidence(table)
    assert summary["hit_rate"] == 1.0 and summary["per_class"]["Pneumonia"]["n"] == 6


def test_boxes_in_place_of_mask_files_give_the_same_verdicts(spots):
    """A collection's boxes (RSNA's opacities) in the lesion column: drawn at the map's size on the
    image's own geometry, the pointing game gives the same hits as the masks the boxes bound."""
    from cxrlab.data.boxes import format_boxes

    def bounding(path: str) -> str:
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if not mask.any():
            return ""
        x, y, w, h = cv2.boundingRect((mask > 127).astype(np.uint8))
        return format_boxes([(x, y, w, h)])

    boxed = spots.assign(lesion=[bounding(p) if p else "" for p in spots["lesion"]])
    preprocess = PreprocessConfig(size=64, contrast="none", resize="letterbox")
    by_mask = lesion_evidence(SpotNet().eval(), preprocess, spots)
    by_box = lesion_evidence(SpotNet().eval(), preprocess, boxed)
    assert len(by_box) == len(by_mask) == 6 and by_box["hit"].all()
    area = {p: (cv2.imread(p, cv2.IMREAD_GRAYSCALE) > 127).mean() for p in spots["lesion"] if p}
    assert (by_box["lesion_area"].to_numpy() >= [area[p] for p in spots["lesion"][:6]]).all()  # a box bounds its disc
    assert np.allclose(by_box["lesion_area"], by_mask["lesion_area"] * 4 / np.pi, rtol=0.35)


def test_evidence_elsewhere_scores_no_hits(spots):
    region = torch.zeros(1, 1, 64, 64)
    region[..., :16, :16] = 1.0  # the model only looks at the top-left corner
    table = lesion_evidence(SpotNet(region).eval(), PreprocessConfig(size=64, contrast="none"), spots)
    assert len(table) == 6 and not table["hit"].any()
    assert summarise_lesion_evidence(table)["hit_rate"] == 0.0


def test_on_phantoms_every_held_out_lesion_is_scored_with_a_real_fine_grained_map(tmp_path):
    """A real fine-tuned backbone (efficientnet_lite0, k=2, one epoch) on phantoms: every held-out image
    with a planted opacity gets a LayerCAM pointing-game row on the finer grid. How often the peak
    lands on the opacity depends on how well a tiny model trained, which differs between processors'
    kernels: that figure is measured in bench/bench_phantom_evidence.py, not asserted here."""
    from cxrlab.data import generate_phantoms
    from cxrlab.models import load_model
    from cxrlab.train import build_config, train

    manifest = generate_phantoms(tmp_path / "phantoms", n_patients=60, size=128, seed=2)
    result = train(build_config({"data": str(manifest), "out": str(tmp_path / "run"), "size": 128, "epochs": 1,
                                 "fine_tune": 2, "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}))
    model, preprocess, _ = load_model(result.out / "model.pt")
    held_out = pd.read_csv(result.out / "splits.csv").query("split != 'train'")
    for column in ("image", "lesion"):
        held_out[column] = [str((result.out / p).resolve()) for p in held_out[column]]
    table = lesion_evidence(model, preprocess, held_out.assign(predicted=held_out["label"]), "layercam", "fine")
    with_opacity = [p for p in held_out["lesion"] if (cv2.imread(p, cv2.IMREAD_GRAYSCALE) > 0).any()]
    assert len(with_opacity) > 0 and sorted(table["image"]) == sorted(held_out.loc[held_out["lesion"].isin(with_opacity), "image"])
    assert (table["hit"] == (table["peak_distance"] <= POINTING_TOLERANCE)).all()
    assert table["lesion_share"].notna().all() and (table["lesion_area"] > 0).all()
