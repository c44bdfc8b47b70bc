"""cxrlab from Python: each command's job as one function, for notebooks and scripts.

    import cxrlab

    run = cxrlab.train_model(data="data/phantoms/manifest.csv", out="runs/notebook", epochs=2)
    report = cxrlab.evaluate_model(run.out, out="runs/notebook/evaluation")
    screened = cxrlab.predict(run.out, ["data/phantoms/images"], out="runs/notebook/predictions")
    study = cxrlab.run_study("configs/studies/degree_sweep.yaml", out="runs/notebook-study")

(``train``, ``evaluate`` and ``study`` are the names of cxrlab's subpackages, hence the longer names.)

Settings are the config files' fields (``cxrlab train --help`` and ``configs/``), as keywords or in
a YAML file (``config=``; keywords win). Errors are the commands' own: a
:class:`cxrlab.core.ConfigError` names the bad field or file.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from cxrlab.core.defaults import DEFAULT_N_BOOT

if TYPE_CHECKING:  # the heavy modules load when a function runs
    from cxrlab.study import StudyResult
    from cxrlab.workflows.crossval import CrossvalResult
    from cxrlab.train import TrainResult


def train_model(config: str | Path | None = None, **settings) -> TrainResult | CrossvalResult:
    """Train a classifier (``folds`` ≥ 3: cross-validated, the fold models as one ensemble) and write
    the run folder, as ``cxrlab train`` does.

    Returns:
        The run's result: ``.out`` (its folder), ``.summary`` (``summary.json``'s contents).
    """
    from cxrlab.train import load_config
    from cxrlab.train import train as train_run

    resolved = load_config(config, settings)
    if resolved.data.folds:
        from cxrlab.workflows.crossval import train_crossval

        return train_crossval(resolved)
    return train_run(resolved)


def evaluate_model(run: str | Path, out: str | Path, data: str | Path | None = None, splits: str | Path | None = None,
                   n_boot: int = DEFAULT_N_BOOT, seed: int = 0, segmenter: str | Path | None = None,
                   explanations: bool = False, allow_mixed_masks: bool = False) -> dict:
    """Evaluate a run's (or model file's) model on its test side, or on ``data`` (images it never
    saw), and write the report, as ``cxrlab evaluate`` does (``explanations``: with its Grad-CAM
    sections, as the command by default; ``allow_mixed_masks``: as ``--allow-mixed-masks``).
    Returns the figures (``metrics.json``)."""
    from cxrlab.workflows.evaluation import evaluate_and_explain

    return evaluate_and_explain(run, out, data=data, splits=splits, n_boot=n_boot, seed=seed, segmenter=segmenter,
                                explanations=explanations, allow_mixed_masks=allow_mixed_masks)


def predict(model: str | Path, images: Iterable[str | Path], out: str | Path, overlays: bool = True,
            segmenter: str | Path | None = None) -> pd.DataFrame:
    """Screen image files and folders with a run's model, as ``cxrlab predict`` does: one row per
    input with a probability per class, the call, the out-of-distribution flag and the overlay's
    path (``error`` says why an input was skipped)."""
    from cxrlab.core.run_folder import model_file
    from cxrlab.explain import predict_images

    records = predict_images(model_file(model), images, out, overlays=overlays, segmenter=segmenter)
    return pd.DataFrame(records)


def run_study(config: str | Path, out: str | Path | None = None, **overrides) -> StudyResult:
    """Run (or resume) a study from its YAML file, as ``cxrlab study`` does; ``overrides`` replace
    the file's top-level fields. Returns the result: ``.summary`` (one row per configuration),
    ``.best``, ``.out``."""
    from cxrlab.study import load_study_config
    from cxrlab.study import run_study as run

    loaded = load_study_config(config, overrides)
    return run(loaded, out or Path("runs") / "studies" / loaded.name)
