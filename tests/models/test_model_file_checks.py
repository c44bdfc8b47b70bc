"""A model file is checked when it is loaded, at every door, and a run never keeps weights that are
not finite: each bad file is refused with one line naming it and what is wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core import ConfigError
from cxrlab.models import create_classifier, load_model, save_model
from cxrlab.models.checkpoint import FORMAT, read_payload, write_payload
from cxrlab.preprocess import PreprocessConfig

CLASSES = ("COVID-19", "Pneumonia", "Normal")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", 3, class_names=CLASSES, pretrained="none", fine_tune=1)
    return save_model(model, tmp_path_factory.mktemp("model") / "model.pt", PreprocessConfig(size=64))


def _broken(good, tmp_path, name: str, change) -> str:
    payload = read_payload(good, FORMAT, "model")
    change(payload)
    return str(write_payload(payload, tmp_path / f"{name}.pt"))


def _nan_weights(payload: dict) -> None:
    payload["state_dict"]["head.fc.weight"] = torch.full_like(payload["state_dict"]["head.fc.weight"], float("nan"))


CASES = {
    "nan weights": (_nan_weights, r"1 weight tensor\(s\) hold NaN or infinite values \(e.g. head.fc.weight"),
    "missing keys": (lambda p: p.pop("state_dict") and p.pop("backbone"), "damaged model file: missing backbone, state_dict"),
    "more names than outputs": (lambda p: p.update(class_names=[*CLASSES, "Other"]),
                                r"4 class name\(s\) for a head of 3 output\(s\)"),
    "wrong head size": (lambda p: p.update(num_classes=2, class_names=["COVID-19", "other"]),
                        "its weights do not fit a efficientnet_lite0 with 2 output"),
    "unknown backbone": (lambda p: p.update(backbone="vgg17"), "cannot build its model .*unknown name 'vgg17'"),
    "bad preprocessing": (lambda p: p["preprocess"].update(size=-3), "its preprocessing is invalid"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_damaged_model_file_is_refused_at_load_with_one_line(good, tmp_path, case):
    change, message = CASES[case]
    path = _broken(good, tmp_path, case.replace(" ", "-"), change)
    with pytest.raises(ConfigError, match=message) as caught:
        load_model(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


def test_every_door_refuses_a_model_with_nan_weights(good, tmp_path, phantoms):
    from cxrlab.serve import ServeSettings, create_app

    path = _broken(good, tmp_path, "nan", _nan_weights)
    image = str(phantoms.parent / "images" / sorted((phantoms.parent / "images").iterdir())[0].name)
    runner = CliRunner()
    for args in (["predict", path, image, "--out", str(tmp_path / "p")],
                 ["explain", path, image, "--out", str(tmp_path / "x")],
                 ["evaluate", path, "--data", str(phantoms), "--out", str(tmp_path / "e"), "--no-gradcam"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and "NaN or infinite" in result.output, (args[0], result.output)
        assert not (tmp_path / "p" / "predictions.csv").exists()
    with pytest.raises(ConfigError, match="NaN or infinite"):  # the service does not start on it
        create_app(path, ServeSettings())


def test_a_run_never_keeps_an_epoch_whose_weights_are_not_finite(good, tmp_path):
    """The optimizer step after the last finite loss can leave NaN weights: that epoch is not kept,
    training stops, and the model file on disk stays the last good one."""
    from cxrlab.train.callbacks import BestModelKeeper
    from cxrlab.train.selection import EpochSelector

    model, preprocess, _ = load_model(good)
    keeper = BestModelKeeper(tmp_path / "model.pt", preprocess, EpochSelector("last", 1, 0, 3))
    trainer = SimpleNamespace(should_stop=False, is_global_zero=True, callback_metrics={}, current_epoch=0)
    module = SimpleNamespace(model=model, trainer=trainer)
    keeper.selector.start_phase(0)
    keeper.on_train_epoch_end(trainer, module)
    assert keeper.best_epoch == 0 and load_model(tmp_path / "model.pt")[0] is not None
    with torch.no_grad():
        model.head.fc.weight.fill_(float("inf"))
    trainer.current_epoch = 1
    keeper.on_train_epoch_end(trainer, module)
    assert trainer.should_stop and keeper.diverged == 1 and keeper.best_epoch == 0
    load_model(tmp_path / "model.pt")  # still the finite epoch 0
