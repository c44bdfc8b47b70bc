"""Cross-validated training: ``cxrlab train --folds K``.

K runs on patient-grouped, class-stratified folds. Run k predicts fold k (its out-of-fold side),
chooses its epoch on fold k+1 and trains on the rest, so every image is predicted once by a model
that never saw its patient, neither in training nor in choosing when to stop. On a small set
those out-of-fold predictions are the honest estimate (issue 17): pooled figures with
patient-bootstrap intervals, beside the same figures per source (on public CXR sets the pooled
AUC is largely "which collection is this").

Resumable like a study: a finished fold (``folds/fold<k>/summary.json`` and its out-of-fold
predictions) is reused when the command runs again with the same settings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.device import Policy, use_policy
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import (
    BASELINE_OOF_PREDICTIONS, MODEL, OOF_PREDICTIONS, SPLITS, SUMMARY, TRACKING_DB,
    PREPARED, RunFolder, finished_summary, fold_folder, test_predictions_file,
)
from cxrlab.data import class_names, load_source, write_splits
from cxrlab.data.seen import seen_record
from cxrlab.data.splits import assign_folds, check_no_leakage
from cxrlab.evaluate.bootstrap import bootstrap_cis
from cxrlab.evaluate.metrics import compute_metrics
from cxrlab.evaluate.registry import HEADLINE, headline
from cxrlab.models import EnsembleClassifier, load_model, save_model
from cxrlab.models.checkpoint import FORMAT, read_payload
from cxrlab.preprocess import ShardReader
from cxrlab.train import TrainConfig, train
from cxrlab.train.config_sources import write_sources
from cxrlab.train.data import grouped_table, guidance_record, with_recorded_scheme
from cxrlab.train.reuse import check_same_config
from cxrlab.train.runner import config_policy, reference_record
from cxrlab.workflows.baseline import frozen_features, probe_oof
from cxrlab.workflows.ensemble_reference import oof_reference
from cxrlab.workflows.predictions import predict_test_side

log = logging.getLogger(__name__)


@dataclass
class CrossvalResult:
    """Outcome of :func:`train_crossval`: the folder, its ``summary.json`` and the out-of-fold table."""

    out: Path
    summary: dict
    predictions: pd.DataFrame


def crossval_split(config: TrainConfig, out: Path) -> pd.DataFrame:
    """Every usable image with its ``fold`` (0..K-1), made once and kept in ``out/splits.csv``.

    From ``config.data.splits``, its test side stays aside (``fold`` -1, never trained on or predicted);
    from ``config.data.path`` every image is in a fold.
    """
    saved = out / SPLITS
    if saved.exists():
        frame = load_source(saved, scheme=config.data.scheme).table
        made = {int(f) for f in pd.to_numeric(frame["fold"]) if f >= 0}
        if made != set(range(config.data.folds)):
            raise ConfigError(f"{saved}: was made for {len(made)} folds, not {config.data.folds}; use a new --out")
        return frame
    if config.data.splits:
        frame = load_source(config.data.splits, scheme=config.data.scheme).table.reset_index(drop=True)
        info: dict = {"from": config.data.splits}
    else:
        table, _, duplicates = grouped_table(load_source(config.data.path, scheme=config.data.scheme).table, config.data.dedupe)
        frame = table.reset_index(drop=True).assign(split="train")
        info = {"from": config.data.path, "duplicates": duplicates}
    frame["fold"] = -1
    pool = frame[frame["split"] != "test"]
    group = "group_id" if "group_id" in frame.columns else "patient_id"
    frame.loc[pool.index, "fold"] = assign_folds(pool.assign(split="train"), config.data.folds, config.runtime.seed, group).to_numpy()
    frame.loc[pool.index, "split"] = "train"  # the ensemble trained on every fold: no validation side is left
    check_no_leakage(frame)
    write_splits(frame, {**info, "scheme": config.data.scheme, "folds": config.data.folds, "seed": config.runtime.seed}, out)
    return frame


def fold_split(frame: pd.DataFrame, fold: int, folds: int, validate: bool = True) -> pd.DataFrame:
    """Run ``fold``'s split: its fold is the out-of-fold side (``test``), the next one validates, the
    others train; rows outside every fold are left out. ``validate=False`` (a fixed schedule,
    ``select_on: last``, chooses no epoch): every other fold trains."""
    rows = frame[pd.to_numeric(frame["fold"]) >= 0].copy()
    k = pd.to_numeric(rows["fold"]).astype(int)
    validating = (k == (fold + 1) % folds) & validate
    rows["split"] = np.where(k == fold, "test", np.where(validating, "val", "train"))
    return rows


def _run_fold(config: TrainConfig, frame: pd.DataFrame, fold: int, out: Path) -> tuple[pd.DataFrame, bool]:
    """Train fold ``fold`` (or reuse it); return its out-of-fold predictions and whether it trained now."""
    run_dir = fold_folder(out, fold)
    split = fold_split(frame, fold, config.data.folds, validate=config.select.metric != "last")
    run_config = config.replace({
        "folds": 0, "tta": "none", "splits": str(run_dir / SPLITS), "out": str(run_dir), "progress_bar": False,
        "prepared": config.runtime.prepared or str(out / PREPARED),
        "mlflow_uri": config.tracking.mlflow_uri or f"sqlite:///{(out / TRACKING_DB).resolve()}"}, f"fold {fold}")
    check_same_config(run_dir, run_config)
    trained = finished_summary(run_dir) is None
    if trained:
        write_splits(split, {"crossval_fold": fold, "folds": config.data.folds}, run_dir)
        for views in ("none", config.model.tta):  # predictions of an older model
            (run_dir / test_predictions_file(views)).unlink(missing_ok=True)
        train(run_config, screening=False)
    held_out = split[split["split"] == "test"]
    # the out-of-fold side with the views the fold ensemble will use: the outputs its operating point judges
    predictions = predict_test_side(run_dir, held_out, out / "prepared-oof" / f"fold{fold}",  # the folds' own
                                    test_predictions_file(config.model.tta), views=config.model.tta,  # shards
                                    prepared=Path(run_config.runtime.prepared))
    return predictions.merge(held_out[["image", "patient_id", "source"]], on="image").assign(fold=fold), trained


def _statistics(y: np.ndarray, probs: np.ndarray, names: list[str]) -> Callable[[np.ndarray], dict]:
    def statistics(rows: np.ndarray) -> dict[str, float | None]:
        return headline(y[rows], probs[rows], names, HEADLINE)

    return statistics


def oof_figures(predictions: pd.DataFrame, names: list[str], n_boot: int = DEFAULT_N_BOOT, seed: int = 0) -> dict:
    """Pooled out-of-fold figures with 95% patient-bootstrap intervals, the full metrics table, and
    the headline figures per source.

    Returns:
        ``{"n", "patients", "pooled": {name: {"value", "low", "high", "n_boot"}}, "metrics": compute_metrics(...),
        "per_source": {source: {"n", name: value}}}`` for the names in :data:`HEADLINE`.
    """
    y = np.array([names.index(v) for v in predictions["label"]])
    probs = predictions[names].to_numpy(dtype=float)
    statistics = _statistics(y, probs, names)
    pooled = bootstrap_cis(statistics, predictions["patient_id"].to_numpy(), n_boot, seed)
    per_source = {}
    for source, part in predictions.groupby("source"):
        rows = part.index.to_numpy()
        per_source[str(source)] = {"n": int(len(rows)), **statistics(rows)}
    return {"n": int(len(predictions)), "patients": int(predictions["patient_id"].nunique()), "pooled": pooled,
            "metrics": compute_metrics(y, probs, names), "per_source": per_source}


def versus(predictions: pd.DataFrame, reference: pd.DataFrame, names: list[str], n_boot: int = DEFAULT_N_BOOT,
           seed: int = 0) -> dict:
    """Paired patient-bootstrap 95% intervals of ``predictions`` minus ``reference`` (the same images)
    for each :data:`HEADLINE` figure; ``beyond_noise`` when the interval excludes 0."""
    reference = reference.set_index("image").loc[predictions["image"]].reset_index()
    y = np.array([names.index(v) for v in predictions["label"]])
    ours = _statistics(y, predictions[names].to_numpy(dtype=float), names)
    theirs = _statistics(y, reference[names].to_numpy(dtype=float), names)

    def difference(rows: np.ndarray) -> dict[str, float | None]:
        a, b = ours(rows), theirs(rows)
        return {k: a[k] - b[k] if a[k] is not None and b[k] is not None else None for k in HEADLINE}

    cis = bootstrap_cis(difference, predictions["patient_id"].to_numpy(), n_boot, seed)
    for value in cis.values():
        value["beyond_noise"] = value["low"] is not None and (value["low"] > 0 or value["high"] < 0)
    return cis


def _baseline(config: TrainConfig, predictions: pd.DataFrame, names: list[str], out: Path, policy: Policy
              ) -> tuple[pd.DataFrame, dict | None]:
    """The linear probe's out-of-fold predictions on the same images and folds (cached), its frozen
    features taken on ``policy``'s device; and what they ran on (None when read from the cache)."""
    cached = out / BASELINE_OOF_PREDICTIONS
    if cached.exists():
        return pd.read_csv(cached), None
    prepared = Path(config.runtime.prepared) if config.runtime.prepared else out / PREPARED
    with use_policy(policy):
        features = frozen_features(config, prepared, predictions["image"].tolist(), names)
    table = probe_oof(features, predictions, names, config.runtime.seed)
    atomic_write_text(cached, table.to_csv(index=False))
    return table, reference_record(policy)


def _ensemble(config: TrainConfig, predictions: pd.DataFrame, names: list[str], out: Path, policy: Policy
              ) -> tuple[dict, dict]:
    """Write ``out/model.pt``: the fold models as one ensemble, with a screening reference set on data
    its parts did not choose on (:func:`cxrlab.workflows.ensemble_reference.oof_reference`), computed
    on ``policy``'s device. Returns the reference and what it ran on."""
    members, preprocess = [], None
    for fold in range(config.data.folds):
        model, preprocess, _ = load_model(fold_folder(out, fold) / MODEL)
        members.append(model)
    ensemble = EnsembleClassifier(members, config.model.tta).eval()
    reader = ShardReader(Path(config.runtime.prepared) if config.runtime.prepared else out / PREPARED)
    with use_policy(policy):
        reference = oof_reference(ensemble, predictions, names, reader, config.optim.batch_size)
    save_model(ensemble, out / MODEL, preprocess, {"folds": config.data.folds, "screening": reference,
                                                        "seen": seen_record(predictions),  # every member's images
                                                        "guidance": guidance_record(config)})
    return reference, reference["ran_on"]


def train_crossval(config: TrainConfig, progress: Callable[[str], None] | None = None,
                   n_boot: int = DEFAULT_N_BOOT) -> CrossvalResult:
    """Train ``config.data.folds`` runs and write ``OUT``: ``splits.csv`` (the folds), ``folds/fold<k>/`` (each
    run, as ``train`` writes it), ``oof_predictions.csv`` (every image's out-of-fold probabilities,
    fold, patient and source), ``model.pt`` (the fold models as one ensemble: the mean of their
    probabilities), ``baseline_oof_predictions.csv`` (the linear probe's, same folds) and
    ``summary.json`` (pooled figures with intervals and per source, for the runs and the probe; the
    paired difference between them; each fold's chosen epoch).

    Raises:
        ConfigError: fewer than 2 folds, or a fold's run cannot start (named).
    """
    if config.data.folds < 3:
        raise ConfigError(f"folds: cross-validated training needs at least 3 folds, got {config.data.folds}")
    config = with_recorded_scheme(config)
    out = Path(config.runtime.out)
    out.mkdir(parents=True, exist_ok=True)
    folder = RunFolder(out, config.to_sections())  # config.yaml first, summary.json last
    write_sources(config, out)
    frame = crossval_split(config, out)
    names = list(class_names(config.data.scheme))
    parts, trained = [], False
    for fold in range(config.data.folds):
        if progress:
            progress(f"fold {fold + 1}/{config.data.folds}")
        part, now = _run_fold(config, frame, fold, out)
        parts.append(part)
        trained |= now
    predictions = pd.concat(parts, ignore_index=True)[["image", "patient_id", "source", "label", "fold", *names]]
    atomic_write_text(out / OOF_PREDICTIONS, predictions.to_csv(index=False))
    runs = []
    for fold in range(config.data.folds):
        summary = json.loads((fold_folder(out, fold) / SUMMARY).read_text())
        runs.append({"fold": fold, "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
                     "selection": summary.get("selection"), "val": {k: summary["val"].get(k) for k in
                                                                   ("accuracy", "auc_macro", "f1_macro")}})
    if progress:
        progress("fold ensemble")
    kept = read_payload(out / MODEL, FORMAT, "model") if not trained and (out / MODEL).exists() else None
    policy, stages = config_policy(config), {}  # what the folds trained on runs the stages after them too
    if kept is None or kept.get("tta") != config.model.tta:
        reference, stages["ensemble_reference"] = _ensemble(config, predictions, names, out, policy)
    else:  # the ensemble of these very folds is there, with what its reference ran on
        reference = kept["extra"].get("screening") or {}
        if reference.get("ran_on"):
            stages["ensemble_reference"] = reference["ran_on"]
    if progress:
        progress("linear-probe baseline")
    baseline, ran_on = _baseline(config, predictions, names, out, policy)
    if ran_on is not None:  # computed now, not read from an earlier run's cache
        stages["baseline"] = ran_on
    summary = {"status": "ok", "folds": config.data.folds, "class_names": names, "backbone": config.model.backbone,
               "fine_tune": config.model.fine_tune, "select_on": config.select.metric,
               "out_of_fold": oof_figures(predictions, names, n_boot, config.runtime.seed),
               "baseline": {"method": "linear probe on frozen pretrained features (study/baseline.py)",
                            "out_of_fold": oof_figures(baseline, names, n_boot, config.runtime.seed)},
               "versus_baseline": versus(predictions, baseline, names, n_boot, config.runtime.seed), "runs": runs,
               "screening_reference": reference.get("fitted_on"), "stages": stages}
    summary = folder.finish(summary)
    return CrossvalResult(out, summary, predictions)
