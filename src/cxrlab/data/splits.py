"""Patient-grouped, class-stratified splits, CV folds, leave-one-source-out, and the leakage guard.

Grouping by patient is what keeps test figures honest: images of one patient are far more
alike than images of two patients, so a patient on both sides inflates every metric.
Stratified grouped assignment uses scikit-learn's ``StratifiedGroupKFold``; arbitrary
ratios (8:1:1, 80:20, 70:15:15) are built from its folds.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.utils.class_weight import compute_class_weight

from cxrlab.core.errors import ConfigError, LeakageError

log = logging.getLogger(__name__)

SIDES = ("train", "val", "test")
Balance = Literal["none", "undersample", "weights"]
BalanceScope = Literal["train", "all"]
_MAX_DENOMINATOR = 20


@dataclass(frozen=True)
class SplitConfig:
    """How to split a manifest.

    Attributes:
        ratios: Shares of train, validation and test (sum 1; multiples of 1/20).
        folds: Patient-grouped CV folds over the training part (0 or 1: none).
        seed: Seed of every random choice.
        balance: ``none``; ``undersample`` each class to the smallest (as the papers did);
            ``weights``: keep all images and record balanced class weights.
        balance_scope: Undersample the training side only (test keeps its prevalence) or
            the whole set before splitting (the papers' practice).
        group_column: Column whose values must never straddle two sides.
        official: Keep a collection's published split (the manifest's ``official_split``): its test
            side is the test side (its validation side when it publishes no test one), its
            validation side validates, or one made from its training patients at the share
            ``ratios`` give validation beside training.
    """

    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    folds: int = 5
    seed: int = 0
    balance: Balance = "none"
    balance_scope: BalanceScope = "train"
    group_column: str = "patient_id"
    official: bool = False

    def __post_init__(self) -> None:
        ratios = tuple(float(r) for r in self.ratios)
        object.__setattr__(self, "ratios", ratios)
        if len(ratios) != 3 or any(r < 0 for r in ratios) or ratios[0] <= 0:
            raise ConfigError(f"ratios: need three non-negative shares with train > 0, got {self.ratios}")
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise ConfigError(f"ratios: shares must sum to 1, got {sum(ratios):g}")
        _denominator(ratios)  # multiples of 1/20, refused here rather than when the split is made
        if self.folds < 0:
            raise ConfigError(f"folds: must be >= 0, got {self.folds}")
        if self.balance not in ("none", "undersample", "weights"):
            raise ConfigError(f"balance: choose none, undersample or weights, got {self.balance!r}")
        if self.balance_scope not in ("train", "all"):
            raise ConfigError(f"balance_scope: choose train or all, got {self.balance_scope!r}")

    def to_dict(self) -> dict:
        """Plain-dict form (round-trips through ``SplitConfig(**d)``)."""
        return {**asdict(self), "ratios": list(self.ratios)}


def _denominator(ratios: tuple[float, ...]) -> int:
    for n in range(2, _MAX_DENOMINATOR + 1):
        if all(abs(r * n - round(r * n)) < 1e-6 for r in ratios):
            return n
    raise ConfigError(f"ratios: shares must be multiples of 1/{_MAX_DENOMINATOR}, got {ratios}")


def _grouped_folds(labels: pd.Series, groups: pd.Series, n_splits: int, seed: int, what: str = "",
                   hint: str = "") -> np.ndarray:
    """Fold index per row from StratifiedGroupKFold (each group in exactly one fold).

    Raises:
        ConfigError: fewer patients than parts, or no class with as many images as parts (scikit-learn
            cannot stratify then), naming ``what`` needed them and the ``hint`` of what to set.
    """
    n_groups, largest = groups.nunique(), int(labels.value_counts().max()) if len(labels) else 0
    prefix, suffix = f"{what}: " if what else "", f"; {hint}" if hint else ""
    if n_groups < n_splits:
        raise ConfigError(f"{prefix}too few patients ({n_groups}) for {n_splits} patient-grouped parts{suffix}")
    if largest < n_splits:
        raise ConfigError(f"{prefix}{n_splits} patient-grouped parts stratified by class need a class with at least "
                          f"{n_splits} images, and the largest has {largest}{suffix}")
    fold = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
            fold[test_idx] = k
    for warning in caught:
        log.warning("stratification: %s", warning.message)
    return fold


def split_by_patient(table: pd.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1),
                     seed: int = 0, group_column: str = "patient_id") -> pd.Series:
    """Assign each row to train/val/test, grouped by patient and stratified by label.

    Args:
        table: Rows with ``label`` and ``group_column``.
        ratios: Shares of train, val and test; multiples of 1/20.
        seed: Seed for the shuffled assignment.
        group_column: Grouping column.

    Returns:
        A Series of ``"train" | "val" | "test"`` aligned with ``table``.

    Raises:
        ConfigError: bad ratios or fewer patients than the ratios need.
    """
    config = SplitConfig(ratios=ratios, seed=seed, folds=0)
    n = _denominator(config.ratios)
    parts = [round(r * n) for r in config.ratios]
    fits = min(int(table["label"].value_counts().max()) if len(table) else 0, table[group_column].nunique())
    held = max(1, round(0.1 * fits))
    hint = (f"set coarser ratios, e.g. --ratios {fits - 2 * held}:{held}:{held} ({fits} parts), or add images"
            if fits >= 3 else "add images")
    part = _grouped_folds(table["label"], table[group_column], n, seed,
                          f"split {':'.join(map(str, parts))}", hint)
    sides = np.array(["train"] * parts[0] + ["val"] * parts[1] + ["test"] * parts[2])
    # Fold order from StratifiedGroupKFold follows group size; a seeded permutation decides
    # which parts become val and test so that no side always gets the biggest patients.
    order = np.random.default_rng(seed).permutation(n)
    return pd.Series(sides[order][part], index=table.index, name="split")


def assign_folds(table: pd.DataFrame, folds: int, seed: int = 0,
                 group_column: str = "patient_id") -> pd.Series:
    """CV fold (0..folds-1) of each training row, -1 elsewhere; grouped and stratified.

    Args:
        table: Rows with ``split``, ``label`` and ``group_column``.
        folds: Number of folds; 0 or 1 gives -1 everywhere.
        seed: Seed.
    """
    fold = pd.Series(-1, index=table.index, name="fold", dtype=np.int64)
    if folds < 2:
        return fold
    train = table[table["split"] == "train"]
    fits = min(int(train["label"].value_counts().max()) if len(train) else 0, train[group_column].nunique())
    hint = f"set --folds {fits} or fewer (0: none), or add images" if fits >= 2 else "set --folds 0, or add images"
    fold.loc[train.index] = _grouped_folds(train["label"], train[group_column], folds, seed, f"{folds} CV folds",
                                           hint)
    return fold


def undersample(table: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Keep a random ``min(class count)`` images of every class (the papers' balancing)."""
    rng = np.random.default_rng(seed)
    smallest = int(table["label"].value_counts().min())
    keep = []
    for _, rows in table.groupby("label", sort=True):
        keep.extend(rng.choice(rows.index.to_numpy(), size=smallest, replace=False).tolist())
    return table.loc[sorted(keep)]


def balanced_class_weights(labels: pd.Series, class_names: tuple[str, ...]) -> dict[str, float]:
    """``n_samples / (n_classes * count)`` per class (scikit-learn's ``balanced``).

    Raises:
        ConfigError: a class has no images.
    """
    missing = [c for c in class_names if c not in set(labels)]
    if missing:
        raise ConfigError(f"class weights: no training images of class(es) {', '.join(missing)}")
    weights = compute_class_weight("balanced", classes=np.array(class_names), y=labels.to_numpy())
    return {c: float(w) for c, w in zip(class_names, weights)}


def check_no_leakage(table: pd.DataFrame, group_column: str = "patient_id", source: str = "split") -> None:
    """Refuse a split that puts one patient on two sides or in two CV folds.

    Args:
        table: Rows with ``split`` (and optionally ``fold``) and ``group_column``.
        group_column: Column that must not straddle sides.
        source: Name of the split (a file path) for the message.

    Raises:
        LeakageError: naming the first offending patient, its sides and how many more there are.
    """
    sides = table.groupby(group_column)["split"].unique()
    bad = sides[sides.map(len) > 1]
    if len(bad):
        patient, where = bad.index[0], sorted(bad.iloc[0])
        more = f" ({len(bad) - 1} more patient(s) affected)" if len(bad) > 1 else ""
        raise LeakageError(f"{source}: patient {patient!r} is on sides {' and '.join(where)}{more}; "
                           "every patient must be on exactly one side")
    if "fold" in table.columns:
        train = table[table["split"] == "train"]
        folds = train.groupby(group_column)["fold"].unique()
        bad = folds[folds.map(len) > 1]
        if len(bad):
            patient = bad.index[0]
            more = f" ({len(bad) - 1} more patient(s) affected)" if len(bad) > 1 else ""
            raise LeakageError(f"{source}: patient {patient!r} is in CV folds "
                               f"{' and '.join(map(str, sorted(bad.iloc[0])))}{more}")


def make_splits(table: pd.DataFrame, class_names: tuple[str, ...], config: SplitConfig) -> tuple[pd.DataFrame, dict]:
    """Split a manifest table: ``split`` and ``fold`` columns, balancing, and a summary.

    Args:
        table: Manifest rows (``image, label, patient_id, source, ...``).
        class_names: Classes of the scheme, in order.
        config: How to split.

    Returns:
        ``(frame, info)``: the rows kept with ``split`` and ``fold`` added; ``info`` holds the
        config, per-side counts and, for ``balance="weights"``, the class weights.

    Raises:
        ConfigError: bad settings or too few patients.
        LeakageError: never expected here; raised if a bug ever put a patient on two sides.
    """
    frame = table.reset_index(drop=True).copy()
    if config.balance == "undersample" and config.balance_scope == "all":
        frame = undersample(frame, config.seed).reset_index(drop=True)
    if config.official:
        frame["split"] = official_sides(frame, config.ratios, config.seed, config.group_column)
    else:
        frame["split"] = split_by_patient(frame, config.ratios, config.seed, config.group_column)
    if config.balance == "undersample" and config.balance_scope == "train":
        train = undersample(frame[frame["split"] == "train"], config.seed)
        frame = pd.concat([train, frame[frame["split"] != "train"]]).sort_index()
    frame["fold"] = assign_folds(frame, config.folds, config.seed, config.group_column)
    frame = frame.reset_index(drop=True)
    check_no_leakage(frame, config.group_column)
    info = {"config": config.to_dict(), "class_names": list(class_names), "counts": split_counts(frame)}
    if config.balance == "weights":
        info["class_weights"] = balanced_class_weights(frame.loc[frame["split"] == "train", "label"], class_names)
    return frame, info


OFFICIAL_NAMES = {"train": "train", "train_val": "train", "trainval": "train", "val": "val", "valid": "val",
                  "validate": "val", "validation": "val", "test": "test"}


def official_sides(table: pd.DataFrame, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0,
                   group_column: str = "patient_id") -> pd.Series:
    """``train`` / ``val`` / ``test`` of each row from the collection's published split (see
    :class:`SplitConfig` ``official``).

    Raises:
        ConfigError: rows without an official side (named by count), or no training side.
    """
    given = table.get("official_split", pd.Series("", index=table.index)).astype(str).str.strip().str.lower()
    sides = given.map(OFFICIAL_NAMES)
    if sides.isna().any():
        odd = sorted(set(given[sides.isna()]))[:5]
        raise ConfigError(f"official split: {int(sides.isna().sum())} image(s) have no published side "
                          f"(official_split {', '.join(map(repr, odd))}); this collection has none to keep, split "
                          "by ratios instead")
    if not (sides == "test").any():  # CheXpert: its test labels are not public; its validation side tests
        sides[sides == "val"] = "test"
    train = sides == "train"
    if not train.any():
        raise ConfigError("official split: no image is on the published training side")
    share = ratios[1] / (ratios[0] + ratios[1])
    if not (sides == "val").any() and share > 0:
        parts = max(2, round(1 / share))
        rows = table[train]
        fold = _grouped_folds(rows["label"], rows[group_column], parts, seed, "validation side of the official split")
        sides[rows.index[fold == 0]] = "val"
    return sides.rename("split")


def split_counts(frame: pd.DataFrame) -> dict[str, dict]:
    """Images and patients per side, and images per class and source on each side."""
    out = {}
    for side in SIDES:
        rows = frame[frame["split"] == side]
        out[side] = {
            "images": int(len(rows)),
            "patients": int(rows["patient_id"].nunique()),
            "classes": {str(k): int(v) for k, v in rows["label"].value_counts().sort_index().items()},
            "sources": {str(k): int(v) for k, v in rows["source"].value_counts().sort_index().items()},
        }
    return out


def leave_one_source_out(table: pd.DataFrame, class_names: tuple[str, ...], val_ratio: float = 0.1,
                         seed: int = 0, group_column: str = "patient_id") -> dict[str, pd.DataFrame]:
    """One split per source: that source is the test side, the others train and validation.

    Args:
        table: Manifest rows with a ``source`` column (at least two sources).
        class_names: Classes of the scheme.
        val_ratio: Validation share of the remaining sources (multiple of 1/20; 0 for none).
        seed: Seed.

    Returns:
        ``{held_out_source: frame with split/fold}``. With ``group_column`` ``group_id`` (patients
        joined by near-duplicate images), images of the other sources in a group that reaches the
        held-out source (the same radiograph re-published there) are left out of its training side.

    Raises:
        ConfigError: fewer than two sources. LeakageError: a patient appears in two sources.
    """
    sources = sorted(table["source"].unique())
    if len(sources) < 2:
        raise ConfigError(f"leave-one-source-out needs at least two sources, found {sources}")
    out = {}
    for held_out in sources:
        rest = table[table["source"] != held_out].copy()
        copies = rest[group_column].isin(set(table.loc[table["source"] == held_out, group_column]))
        if copies.any():
            log.info("leave out %s: %d image(s) of other sources are copies of its images (or their patients'); "
                     "left out of its training side", held_out, int(copies.sum()))
            rest = rest[~copies]
        rest["split"] = split_by_patient(rest, (1 - val_ratio, val_ratio, 0.0), seed, group_column) \
            if val_ratio > 0 else "train"
        test = table[table["source"] == held_out].copy()
        test["split"] = "test"
        frame = pd.concat([rest, test]).sort_index()
        frame["fold"] = -1
        check_no_leakage(frame, group_column, source=f"leave-out {held_out}")
        out[held_out] = frame.reset_index(drop=True)
    return out
