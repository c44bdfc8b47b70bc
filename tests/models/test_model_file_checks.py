"""A model file is checked when it is loaded, at every door, and a run never keeps weights that are
not finite: each bad file is refused with one line naming it and what is wrong."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cxrlab.core import ConfigError
from cxrlab.models import create_classifier, load_model, save_model
from cxrlab.models.predictor import Predictor
from cxrlab.preprocess import PreprocessConfig
from tests.hostile import MODEL_CASES, broken_model

CLASSES = ("COVID-19", "Pneumonia", "Normal")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    torch.manual_seed(0)
    model = create_classifier("efficientnet_lite0", 3, class_names=CLASSES, pretrained="none", fine_tune=1)
    return save_model(model, tmp_path_factory.mktemp("model") / "model.pt", PreprocessConfig(size=64))


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_a_damaged_model_file_is_refused_at_load_with_one_line(good, tmp_path, case):
    """Each case of the hostile corpus at the loader itself (every door: tests/integration/test_hostile_corpus.py)."""
    path = str(broken_model(good, tmp_path, case))
    with pytest.raises(ConfigError, match=MODEL_CASES[case][1]) as caught:
        load_model(path) if case != "nan threshold" else Predictor(path)
    assert str(caught.value).startswith(path) and "\n" not in str(caught.value)


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
