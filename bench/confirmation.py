"""The confirmation part of cxr-real: patients that no recipe choice, tuning or selection touches.

Drawn once (2026-12-07, before any further recipe work) and kept in
``bench/cxr_real_confirmation.csv``: about a fifth of the patients, grouped by patient and by
near-duplicate image (so no copy of a confirmation radiograph is in the development part),
stratified by source and class. Recipe benchmarks work on the development part
(:func:`development_manifest`); ``bench/bench_confirm.py`` scores a chosen recipe on the
confirmation part once.

Run: ``.venv/bin/python bench/confirmation.py [--draw]`` prints the two parts' class and source
counts; ``--draw`` draws the list again (refused when it exists: the point is that it never moves).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "cxr-real" / "manifest.csv"
LIST = ROOT / "bench" / "cxr_real_confirmation.csv"
SEED = 20261207


def _real() -> pd.DataFrame:
    from cxrlab.data import read_manifest

    return read_manifest(REAL).table


def draw() -> pd.DataFrame:
    """Confirmation patients: one of five patient-and-duplicate-grouped parts stratified by source x class."""
    from cxrlab.data.duplicates import regroup_duplicates
    from cxrlab.data.splits import _grouped_folds

    table, _ = regroup_duplicates(_real())
    strata = table["source"] + "/" + table["label"]
    part = _grouped_folds(strata, table["group_id"], 5, SEED, "confirmation part")
    chosen = table[part == 0]
    return pd.DataFrame({"patient_id": sorted(set(chosen["patient_id"]))})


def confirmation_patients() -> set[str]:
    """The confirmation patients' ids (refused when the list is missing: never drawn silently)."""
    if not LIST.is_file():
        sys.exit(f"{LIST}: missing; it is part of the repository (bench/confirmation.py --draw made it once)")
    return set(pd.read_csv(LIST, dtype=str)["patient_id"])


def parts() -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(development rows, confirmation rows)`` of cxr-real's manifest."""
    table = _real()
    held = table["patient_id"].isin(confirmation_patients())
    return table[~held].reset_index(drop=True), table[held].reset_index(drop=True)


def write_parts(folder: Path) -> tuple[Path, Path]:
    """Write ``development.csv`` and ``confirmation.csv`` manifests (absolute image paths) into ``folder``."""
    from cxrlab.data.manifest import write_table

    folder.mkdir(parents=True, exist_ok=True)
    development, confirmation = parts()
    return write_table(development, folder / "development.csv"), write_table(confirmation, folder / "confirmation.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draw", action="store_true", help="draw the list (only when it does not exist)")
    args = parser.parse_args()
    if not REAL.is_file():
        sys.exit(f"{REAL}: cxr-real is not here")
    if args.draw:
        if LIST.exists():
            sys.exit(f"{LIST}: exists; the confirmation part is drawn once and never moves")
        draw().to_csv(LIST, index=False)
    development, confirmation = parts()
    for name, frame in (("development", development), ("confirmation", confirmation)):
        print(f"{name}: {len(frame)} images, {frame['patient_id'].nunique()} patients")
        print(pd.crosstab(frame["source"], frame["label"]).to_string(), "\n")


if __name__ == "__main__":
    main()
