"""A study's plan: its cells (grid combinations), the fold split, and each run's training config."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrlab.core.run_folder import SPLITS
from cxrlab.data import SplitConfig, class_names, load_source, make_splits, write_splits
from cxrlab.data.splits import assign_folds, check_no_leakage
from cxrlab.models.registry import get_backbone_spec
from cxrlab.study.config import StudyConfig, merge_settings
from cxrlab.preprocess import PreprocessConfig
from cxrlab.train.config import TrainConfig, build_config
from cxrlab.train.data import grouped_table, preprocess_for


@dataclass(frozen=True)
class Cell:
    """One combination of the grid's values (and a variant): ``factors`` as the tables show them,
    ``settings`` the training settings they stand for."""

    id: str
    factors: dict
    settings: dict

    def label(self) -> str:
        """``backbone=vgg16, fine_tune=2``."""
        return ", ".join(f"{k}={v}" for k, v in self.factors.items())


def _slug(factors: dict) -> str:
    text = "__".join(f"{k}-{json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v}" for k, v in factors.items())
    slug = re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")
    if len(slug) > 80:  # keep folder names short and unique
        slug = slug[:64] + "-" + hashlib.sha1(text.encode()).hexdigest()[:10]
    return slug or "base"


def cells(config: StudyConfig) -> list[Cell]:
    """Every combination of the grid's values, times each variant, in the config's order (ids readable
    and stable); with a second stage each is marked ``stage=1``."""
    keys = list(config.grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*(config.grid[k] for k in keys))]
    if config.variants:
        plan = [(({"variant": name, **factors}), {**bundle, **factors})
                for name, bundle in config.variants.items() for factors in combos]
    else:
        plan = [(factors, factors) for factors in combos]
    stage = {"stage": 1} if config.second_stage else {}  # in the tables only: adding a second stage keeps the ids
    return [Cell(_slug(factors), {**stage, **factors}, settings) for factors, settings in plan]


def second_stage_cells(config: StudyConfig, ranked: list[Cell]) -> list[Cell]:
    """The second stage: the first ``second_stage.top`` of ``ranked`` (first-stage cells, best first),
    each with the second stage's settings over its own."""
    if config.second_stage is None:
        return []
    out: dict[str, Cell] = {}
    changed = config.second_stage.settings
    for cell in ranked[:config.second_stage.top]:
        # a factor the second stage sets shows its new value; cells that become the same run once
        factors = {k: changed.get(k, v) for k, v in cell.factors.items() if k != "stage"}
        settings = merge_settings({k: v for k, v in cell.settings.items() if k not in changed}, changed)
        stage2 = Cell(_slug({"stage": 2, **factors}), {"stage": 2, **factors}, settings)
        out.setdefault(stage2.id, stage2)
    return list(out.values())


def run_name(fold: int, repeat: int = 0) -> str:
    """A run's folder in its cell's: ``fold2``, or ``fold2-repeat1`` for the second seed."""
    return f"fold{fold}" if repeat == 0 else f"fold{fold}-repeat{repeat}"


def study_split(config: StudyConfig, out: Path) -> pd.DataFrame:
    """The study's split, made once and kept in ``out/splits.csv``: a held-out test side (from
    ``config.splits`` when given, else made with ``config.ratios``) and patient-grouped,
    class-stratified folds over the rest (``fold`` -1 on the test side).

    A rerun reads the saved split, so a resumed study trains on exactly the same folds.
    """
    saved = out / SPLITS
    if saved.exists():
        return load_source(saved, scheme=config.scheme).table
    names = class_names(config.scheme)
    if config.splits:
        frame = load_source(config.splits, scheme=config.scheme).table  # runs the leakage guard
        info = {"from": str(config.splits)}
    else:
        source = load_source(config.data, scheme=config.scheme)
        table, group, duplicates = grouped_table(source.table, config.dedupe)
        frame, info = make_splits(table, names, SplitConfig(ratios=config.ratios, folds=0, seed=config.seed,
                                                            group_column=group))
        info["duplicates"] = duplicates
    frame = frame.reset_index(drop=True)
    frame["fold"] = -1  # a given split file's own folds (over its train side only) are not used
    if config.num_folds > 1:
        pool = frame[frame["split"] != "test"]
        group = "group_id" if "group_id" in frame.columns else "patient_id"
        frame.loc[pool.index, "fold"] = assign_folds(pool.assign(split="train"), config.num_folds, config.seed,
                                                     group).to_numpy()
    check_no_leakage(frame)
    write_splits(frame, {**info, "scheme": config.scheme, "folds": config.num_folds}, out)
    return frame


def fold_frame(frame: pd.DataFrame, fold: int, num_folds: int) -> pd.DataFrame:
    """The split of one run: fold ``fold`` validates, the other folds train, the test side stays."""
    if num_folds <= 1:
        return frame
    out = frame.copy()
    pool = out["split"] != "test"
    folds = pd.to_numeric(out.loc[pool, "fold"]).astype(int)  # a split read back from CSV may hold text
    out.loc[pool, "split"] = ["val" if f == fold else "train" for f in folds]
    return out


def run_config(config: StudyConfig, cell: Cell, run_dir: Path, shared: Path, tags: dict[str, str],
               repeat: int = 0, overrides: dict | None = None) -> TrainConfig:
    """The training config of one run of a cell (its split is written to ``run_dir/splits.csv``): seed
    ``config.seed + repeat``; ``overrides`` (a refit's) over the cell's settings.

    Raises:
        ConfigError: the cell's settings are invalid (names the field).
    """
    settings = merge_settings(merge_settings(config.base, cell.settings), overrides or {})
    values = {**settings, "splits": str(run_dir / SPLITS), "out": str(run_dir),
              "scheme": config.scheme, "seed": config.seed + repeat, "mlflow_uri": config.mlflow_uri,
              "experiment": config.experiment, "mlflow_tags": tags, "progress_bar": False}
    if config.share_prefix:
        values["prefix_store"] = str(shared / "prefix-store")
    probe = build_config(values, origin=f"cell {cell.id}")
    return probe.replace({"prepared": str(shared / "prepared" / prepared_key(probe))}, origin=f"cell {cell.id}")


def prepared_key(config: TrainConfig) -> str:
    """The name of the prepared folder a run's images go to: every run with the same preprocessing
    shares one (older studies' folders keep their names: the settings they varied are hashed as then,
    and a setting at its default adds nothing)."""
    preprocess = preprocess_for(config, get_backbone_spec(config.model.backbone))
    extra = {k: v for k, v in (("artifacts", preprocess.artifacts), ("lung_crop", preprocess.lung_crop),
                               ("keep_mask", preprocess.keep_mask)) if v not in ("keep", False)}
    defaults = PreprocessConfig()
    extra.update({k: v for k, v in preprocess.to_dict().items()  # settings a study could not vary before
                  if k not in ("size", "contrast", "resize", "artifacts", "lung_crop", "keep_mask")
                  and v != getattr(defaults, k)})
    settings = [preprocess.size, preprocess.contrast, preprocess.resize] + ([extra] if extra else [])
    return hashlib.sha1(json.dumps(settings).encode()).hexdigest()[:12]
