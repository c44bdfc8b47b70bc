"""A fold ensemble answers like one model: mean probabilities, one file, Grad-CAM over its members."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrlab.core import ConfigError
from cxrlab.explain import GradCamExplainer
from cxrlab.models import EnsembleClassifier, create_classifier, load_model, save_model
from cxrlab.models.ood import pooled_features_at
from cxrlab.preprocess import PreprocessConfig

CLASSES = ("COVID-19", "Pneumonia", "Normal")


@pytest.fixture(scope="module")
def ensemble() -> EnsembleClassifier:
    return EnsembleClassifier([create_classifier("efficientnet_lite0", 3, pretrained="none", seed=s,
                                                 class_names=CLASSES) for s in (0, 1)]).eval()


def test_the_ensemble_averages_probabilities_and_round_trips_through_one_file(ensemble, tmp_path):
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mean = torch.stack([m(x).softmax(1) for m in ensemble.members]).mean(0)
        torch.testing.assert_close(ensemble(x).softmax(1), mean, atol=1e-6, rtol=1e-5)
        save_model(ensemble, tmp_path / "m.pt", PreprocessConfig(size=64), {"folds": 2})
        loaded, preprocess, payload = load_model(tmp_path / "m.pt")
        torch.testing.assert_close(loaded(x).softmax(1), mean, atol=1e-6, rtol=1e-5)
    assert isinstance(loaded, EnsembleClassifier) and loaded.class_names == CLASSES and payload["extra"]["folds"] == 2
    with pytest.raises(ConfigError, match=r"at least 2 members \(or 1 with test-time views\)"):
        EnsembleClassifier(list(ensemble.members)[:1])
    other = create_classifier("efficientnet_lite0", 2, pretrained="none", class_names=("COVID-19", "non-COVID"))
    with pytest.raises(ConfigError, match="member 1"):
        EnsembleClassifier([ensemble.members[0], other])


def test_grad_cam_and_pooled_features_span_every_member(ensemble):
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with GradCamExplainer(ensemble) as cam:
        maps, probs = cam.explain(x)
        pooled = cam.pooled_activations()
    assert maps.shape == (2, 64, 64) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert pooled.shape == (2, 2 * 1280)  # the members' pooled features side by side
    for member in ensemble.members:  # hooks released, flags restored
        assert not member.cam_layer()._forward_hooks
    with GradCamExplainer(ensemble.members[0]) as cam:
        single, _ = cam.explain(x, target=int(probs[0].argmax()))
    assert not np.allclose(maps[0], single[0])  # the ensemble's map is not member 0's alone
    dataset = [(x[i], torch.tensor(0)) for i in range(2)]
    features = pooled_features_at(ensemble, dataset, ("last", "fine"))
    np.testing.assert_allclose(features["last"], pooled, rtol=1e-4, atol=1e-5)
    assert features["fine"].shape[1] == 2 * pooled_features_at(ensemble.members[0], dataset, ("fine",))["fine"].shape[1]


def test_pooled_features_run_on_the_current_policy_s_device(ensemble, monkeypatch):
    """The screening reference, the fold ensemble's reference, the probe baseline and the source-probe
    audit take their features here: a GPU run's went through the CPU, wherever the model had been loaded."""
    from cxrlab.core.device import Policy, use_policy

    calls = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: calls.append(("model", a)) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(("batch", a)) or self)
    dataset = [(torch.randn(3, 64, 64), torch.tensor(0)) for _ in range(2)]
    with use_policy(Policy("cuda:1", "gpu", "bf16-mixed")):
        pooled_features_at(ensemble, dataset)
    assert calls[0][0] == "model" and torch.device(calls[0][1][0]) == torch.device("cuda:1")  # the model first
    assert [kind for kind, _ in calls[1:]] == ["batch"]  # one batch of two, nothing sent back to the CPU
    monkeypatch.undo()
    model = create_classifier("efficientnet_lite0", 3, pretrained="none", seed=2)
    pooled_features_at(model, dataset)  # moved to channels-last outside inference mode: it can still learn
    assert all(p.requires_grad and not p.is_inference() for p in model.parameters())


def test_test_time_views_average_each_member_and_grad_cam_explains_the_plain_view(ensemble, tmp_path):
    from cxrlab.models.tta import tta_views

    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    views = tta_views(x, "crops")
    assert views.shape == (6, 2, 3, 64, 64) and torch.equal(views[0], x)
    assert torch.allclose(views[5], torch.nn.functional.interpolate(x[..., 3:61, 3:61], size=(64, 64), mode="bilinear"))
    tta = EnsembleClassifier(list(ensemble.members), tta="crops").eval()
    with torch.no_grad():
        expected = torch.stack([m(v).softmax(1) for m in tta.members for v in views]).mean(0)
        torch.testing.assert_close(tta(x).softmax(1), expected, atol=1e-6, rtol=1e-5)
        assert not torch.allclose(tta(x), ensemble(x), atol=1e-4)  # the views change the answer
        save_model(tta, tmp_path / "t.pt", PreprocessConfig(size=64))
        loaded = load_model(tmp_path / "t.pt")[0]
        assert loaded.tta == "crops"
        torch.testing.assert_close(loaded(x).softmax(1), expected, atol=1e-6, rtol=1e-5)
    with GradCamExplainer(tta) as cam:
        maps, probs = cam.explain(x)
        assert cam.pooled_activations().shape == (2, 2 * 1280)  # the plain view's, not the views'

    with GradCamExplainer(ensemble) as cam:
        plain_maps, _ = cam.explain(x, target=[int(c) for c in expected.argmax(1)])
    np.testing.assert_allclose(probs, expected.numpy(), atol=1e-5)  # the model's own (averaged) answer
    np.testing.assert_allclose(maps, plain_maps, atol=1e-5)  # the map of the plain view, for that class
    assert tta.tta == "crops"  # restored after explaining
    with pytest.raises(ConfigError, match="tta must be one of"):
        EnsembleClassifier(list(ensemble.members), tta="flips")


def test_an_ensemble_file_with_test_time_views_exports_to_onnx_and_evaluates_like_a_single_model(ensemble, phantoms, tmp_path):
    from typer.testing import CliRunner

    from cxrlab.cli import app
    from cxrlab.models.onnx_export import OnnxClassifier

    views = EnsembleClassifier(list(ensemble.members), tta="crops").eval()  # the views go into the graph too
    save_model(views, tmp_path / "model.pt", PreprocessConfig(size=64))
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--onnx", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = views(x).softmax(1).numpy()
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "m.onnx").probabilities(x.numpy()), expected, atol=1e-4)
    import pandas as pd

    few = pd.read_csv(phantoms).groupby("label").head(4)  # Grad-CAM sections over the members: a few images
    few.assign(**{c: [str(phantoms.parent / p) if p else "" for p in few[c].fillna("")] for c in ("image", "mask", "lesion")}
               ).to_csv(tmp_path / "few.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "model.pt"), "--data", str(tmp_path / "few.csv"),
                                      "--out", str(tmp_path / "e"), "--n-boot", "20"])
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and (tmp_path / "e" / "report.html").exists()
