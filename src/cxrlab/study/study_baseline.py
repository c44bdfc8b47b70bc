"""The linear probe as a row of a study: every configuration beside what frozen features already give.

On the study's own folds (train on the other folds of the pool, score the validation fold), with
the backbone and preprocessing of the study's first configuration: per fold the probe's accuracy
and macro AUC, then each configuration's fold scores against the probe's (Nadeau & Bengio's
corrected resampled t-test, Holm across the configurations). A fine-tuning degree that does not
beat the probe beyond noise is reported as such (issue 17).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.device import use_policy
from cxrlab.core.io import atomic_write_text
from cxrlab.data import class_names
from cxrlab.data.manifest import Manifest
from cxrlab.evaluate.bootstrap import holm
from cxrlab.evaluate.metrics import accuracy_and_macro_auc
from cxrlab.models import get_backbone_spec
from cxrlab.preprocess import prepare
from cxrlab.workflows.baseline import frozen_features, probe_oof
from cxrlab.study.config import StudyConfig
from cxrlab.study.plan import cells, run_config
from cxrlab.study.results import ALPHA, corrected_resampled_ttest
from cxrlab.train.data import preprocess_for
from cxrlab.train.runner import config_policy

log = logging.getLogger(__name__)
PROBE_FILE = "baseline_folds.csv"


def study_probe(config: StudyConfig, out: Path, frame: pd.DataFrame) -> pd.DataFrame | None:
    """``fold, accuracy, auc_macro`` of the probe on each validation fold (cached in ``out``); None for a
    study without folds."""
    cached = out / PROBE_FILE
    if cached.exists():
        return pd.read_csv(cached)
    if config.num_folds < 2:
        return None
    first = cells(config)[0]
    train_config = run_config(config, first, out / "runs" / "_probe", out / "shared", {})
    names = list(class_names(config.scheme))
    everything = frame.reset_index(drop=True).assign(view=frame.get("view", ""))
    prepared = Path(train_config.runtime.prepared)  # the runs' own shards (they prepare every image of the study)
    prepare(Manifest(everything, tuple(names)), prepared,
            preprocess_for(train_config, get_backbone_spec(train_config.model.backbone)))
    pool = everything[everything["split"] != "test"].reset_index(drop=True)
    pool = pool.assign(fold=pd.to_numeric(pool["fold"]).astype(int))
    with use_policy(config_policy(train_config)):  # on the device the study's runs train on
        features = frozen_features(train_config, prepared, pool["image"].tolist(), names)
    oof = probe_oof(features, pool, names, config.seed)
    y = oof["label"].map(names.index).to_numpy()
    rows = []
    for fold, part in oof.groupby("fold"):
        rows.append({"fold": int(fold), **accuracy_and_macro_auc(y[part.index], part[names].to_numpy())})
    table = pd.DataFrame(rows)
    table["backbone"], table["size"] = train_config.model.backbone, train_config.preprocess.size or get_backbone_spec(
        train_config.model.backbone).input_size
    atomic_write_text(cached, table.to_csv(index=False))
    return table


def compare_to_probe(table: pd.DataFrame, summary: pd.DataFrame, probe: pd.DataFrame | None, metric: str) -> pd.DataFrame:
    """``summary`` with ``p_vs_probe`` (Holm-adjusted) and ``beats_probe`` (a higher mean over folds and
    p < 0.05) per configuration; unchanged without a probe."""
    if probe is None or metric not in probe:
        return summary
    ok = table[table["status"] == "ok"]
    scores = ok.pivot_table(index="fold", columns="cell", values=metric, aggfunc="mean")
    reference = probe.set_index("fold")[metric]
    ratio = float((ok["val_images"] / ok["train_images"]).mean()) if len(ok) else float("nan")
    p_values, beats = [], []
    for cell in summary["cell"]:
        pair = pd.concat([scores.get(cell), reference], axis=1, keys=["cell", "probe"]).dropna() \
            if cell in scores else pd.DataFrame()
        if len(pair) < 2:
            p_values.append(None)
            beats.append(None)
            continue
        p_values.append(corrected_resampled_ttest(pair["cell"].to_numpy(), pair["probe"].to_numpy(), ratio)["p_value"])
        beats.append(bool(pair["cell"].mean() > pair["probe"].mean()))
    adjusted = holm(p_values)
    return summary.assign(p_vs_probe=[np.nan if p is None else p for p in adjusted],
                          beats_probe=[None if b is None or p is None else bool(b and p < ALPHA)
                                       for b, p in zip(beats, adjusted)])
