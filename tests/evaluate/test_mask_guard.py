"""The mask rule training applies, at the other doors: evaluation of a mask-using model, the in-lung
share, and a guided model's in-lung share marked circular."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from cxrlab.core import ConfigError
from cxrlab.evaluate.runner import evaluate_run
from cxrlab.models import create_classifier, save_model
from cxrlab.preprocess import PreprocessConfig
from cxrlab.workflows.evaluation import evaluate_and_explain

CLASSES = ("COVID-19", "Pneumonia", "Normal")


def _class_linked(phantoms, tmp_path):
    """The phantom images with lung masks on the COVID-19 images only (as in public collections)."""
    table = pd.read_csv(phantoms)
    for column in ("image", "mask"):
        table[column] = [str(phantoms.parent / v) for v in table[column]]
    table["mask"] = table["mask"].where(table["label"] == "COVID-19", "")
    table = table.drop(columns=["lesion"], errors="ignore")
    table.to_csv(tmp_path / "linked.csv", index=False)
    return tmp_path / "linked.csv"


def test_a_lung_crop_model_on_class_linked_masks_is_refused_as_training_would(phantoms, tmp_path):
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", 3, class_names=CLASSES, pretrained="none", fine_tune=1)
    path = save_model(model, tmp_path / "crop.pt", PreprocessConfig(size=64, lung_crop=True))
    data = _class_linked(phantoms, tmp_path)
    with pytest.raises(ConfigError, match=r"lung_crop needs a lung mask on every image or on none.*Normal 13 of 13"
                                          r".*--segmenter SEGMENTER.*--allow-mixed-masks"):
        evaluate_run(path, tmp_path / "refused", data=data, n_boot=10)
    results = evaluate_run(path, tmp_path / "insisted", data=data, n_boot=10, allow_mixed_masks=True)
    assert "needs a lung mask on every image" in results["mask_problem"]
    assert results["warnings"][0].startswith("MASKS FAIL THE PROVENANCE RULE")
    assert "MASKS FAIL THE PROVENANCE RULE" in (tmp_path / "insisted" / "report.md").read_text()
    table = pd.read_csv(phantoms)
    table["image"] = [str(phantoms.parent / v) for v in table["image"]]
    table["mask"] = [str(phantoms.parent / v) for v in table["mask"]]
    # every image masked by one segmenter, but one that trained on these patients: the masks are in-sample
    table.drop(columns=["lesion"]).assign(mask_source="predicted", mask_in_sample=True).to_csv(tmp_path / "in.csv",
                                                                                              index=False)
    with pytest.raises(ConfigError, match="predicted by a segmenter that trained on their patients"):
        evaluate_run(path, tmp_path / "in-sample", data=tmp_path / "in.csv", n_boot=10)
    uniform = pd.read_csv(data).assign(mask="")  # no masks anywhere: uniform (nothing to crop by)
    uniform.to_csv(tmp_path / "none.csv", index=False)
    assert evaluate_run(path, tmp_path / "none", data=tmp_path / "none.csv", n_boot=10)["mask_problem"] is None


def test_the_in_lung_share_needs_uniform_masks_and_a_guided_models_share_is_marked_circular(run_dir, phantoms,
                                                                                              tmp_path):
    from cxrlab.models import load_model

    split = pd.read_csv(run_dir / "splits.csv").fillna("")
    test = split[split["split"] == "test"].drop(columns=["split", "fold", "lesion"])
    for column in ("image", "mask"):
        test[column] = [str((run_dir / p).resolve()) if p else "" for p in test[column]]
    linked = test.assign(mask=test["mask"].where(test["label"] == "COVID-19", ""))
    linked.to_csv(tmp_path / "linked.csv", index=False)
    results = evaluate_and_explain(run_dir, tmp_path / "linked", data=tmp_path / "linked.csv", n_boot=10)
    assert results["lung_evidence"]["n"] == 0 and "needs a lung mask on every image" in results["lung_evidence"]["left_out"]
    assert any(w.startswith("in-lung share not computed") for w in results["warnings"])
    test.to_csv(tmp_path / "all.csv", index=False)  # every test image masked, one origin: computed
    plain = evaluate_and_explain(run_dir, tmp_path / "plain", data=tmp_path / "all.csv", n_boot=10)
    assert plain["lung_evidence"]["n"] > 0 and "circular" not in plain["lung_evidence"]
    model, preprocess, payload = load_model(run_dir / "model.pt")
    steered = tmp_path / "guided"
    steered.mkdir()
    save_model(model, steered / "model.pt", preprocess,
               {**payload["extra"], "guidance": {"attention_loss": 1.0, "attention_form": "outside_share"}})
    guided = evaluate_and_explain(steered / "model.pt", tmp_path / "guided-eval", data=tmp_path / "all.csv", n_boot=10)
    assert guided["lung_evidence"]["circular"]["attention_loss"] == 1.0
    assert any("circular" in w for w in guided["warnings"])
    assert "CIRCULAR" in (tmp_path / "guided-eval" / "report.md").read_text()
