"""A study cell as one model: built from its runs once, rebuilt when a run is added or trained again."""

from __future__ import annotations

import json

import pandas as pd

from cxrlab.models import create_classifier, load_model, save_model
from cxrlab.preprocess import PreprocessConfig
from cxrlab.core.run_folder import ENSEMBLE_RUNS
from cxrlab.study.cell_ensemble import cell_model

NAMES = ("COVID-19", "Pneumonia", "Normal")


def _run(folder, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", fine_tune=1, class_names=NAMES, seed=seed)
    save_model(model, folder / "model.pt", PreprocessConfig(size=32), {"seen": {"patients": [f"p{seed}"], "images": []}})
    (folder / "config.yaml").write_text("seed: 0\n")


def test_the_ensemble_is_rebuilt_when_a_run_is_trained_again_and_not_otherwise(tmp_path):
    cell = tmp_path / "runs" / "c"
    for k in (0, 1):
        _run(cell / f"fold{k}", k)
    ok = pd.DataFrame({"run": ["fold0", "fold1"], "fold": [0, 1]})
    folder = cell_model(tmp_path, "c", ok)
    model, _, payload = load_model(folder / "model.pt")
    assert len(payload["members"]) == 2 and payload["extra"]["seen"]["patients"] == ["p0", "p1"]
    (folder / "test_predictions.csv").write_text("cached\n")
    assert cell_model(tmp_path, "c", ok) == folder and (folder / "test_predictions.csv").exists()  # reused
    _run(cell / "fold1", 7)  # fold 1 trained again (e.g. after its settings changed)
    again = cell_model(tmp_path, "c", ok)
    assert not (again / "test_predictions.csv").exists()  # figures of the old members are gone
    fresh, _, _ = load_model(cell / "fold1" / "model.pt")
    member = load_model(again / "model.pt")[0].members[1]
    assert all((a == b).all() for a, b in zip(member.state_dict().values(), fresh.state_dict().values(), strict=True))
    assert set(json.loads((again / ENSEMBLE_RUNS).read_text())) == {"fold0", "fold1"}
    assert cell_model(tmp_path, "c", ok.iloc[:1]) == cell / "fold0"  # one run: that run
