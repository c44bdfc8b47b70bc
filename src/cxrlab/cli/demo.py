"""``cxrlab demo``: the main job on the embedded synthetic data, end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cxrlab.cli._common import console, handle_errors, progress_bar, quiet_lightning
from cxrlab.cli.prepare_command import print_summary
from cxrlab.core.io import atomic_write_text
from cxrlab.data import SplitConfig, audit_splits, generate_phantoms, load_source, make_splits, write_splits
from cxrlab.preprocess import PreprocessConfig, prepare


def demo(out: Annotated[Path, typer.Option(help="Run folder.")] = Path("runs/demo"),
         patients: Annotated[int, typer.Option(help="Synthetic patients.")] = 90,
         size: Annotated[int, typer.Option(help="Prepared image side.")] = 224,
         seed: Annotated[int, typer.Option(help="Seed.")] = 0) -> None:
    """Generate phantoms, split by patient, audit the split, prepare CLAHE shards, train efficientnet_lite0."""
    with handle_errors():
        console.rule("1/5 synthetic phantoms")
        manifest_path = generate_phantoms(out / "data", n_patients=patients, size=256, seed=seed)
        manifest = load_source(manifest_path)
        console.print(f"{manifest_path}: {len(manifest)} images of {manifest.table['patient_id'].nunique()} "
                      f"patients, {manifest.class_counts()}")
        console.rule("2/5 patient-grouped split (8:1:1, 5 folds)")
        frame, info = make_splits(manifest.table, manifest.class_names, SplitConfig(seed=seed))
        splits_path = write_splits(frame, info, out)
        for side, counts in info["counts"].items():
            console.print(f"  {side:5s} {counts['images']:4d} images, {counts['patients']:3d} patients, {counts['classes']}")
        console.print(f"wrote {splits_path}")
        console.rule("3/5 split-integrity audit")
        with progress_bar("hashing") as bar:
            task = bar.add_task("hashing", total=len(frame))
            report = audit_splits(frame, progress=lambda n: bar.advance(task, n))
        atomic_write_text(out / "audit.md", report.to_markdown())
        console.print(f"leakage guard: {report.leakage or 'OK'}; near-duplicate pairs across sides: "
                      f"{len(report.cross_side)}; wrote {out / 'audit.md'}")
        console.rule("4/5 prepare shards (CLAHE, local engine)")
        config = PreprocessConfig(size=size, contrast="clahe")
        with progress_bar("prepare") as bar:
            task = bar.add_task("prepare", total=len(manifest))
            summary = prepare(manifest, out / "prepared", config, progress=lambda n: bar.advance(task, n))
        print_summary(summary)
        console.rule("5/5 train efficientnet_lite0 (ImageNet weights offline, last 2 blocks, 3 epochs)")
        from cxrlab.train import build_config, train

        quiet_lightning()

        config = build_config({"splits": str(splits_path), "out": str(out / "train"), "backbone": "efficientnet_lite0",
                               "fine_tune": 2, "epochs": 3, "size": size, "seed": seed})
        result = train(config)
        val = result.summary["val"]
        for name, m in val["per_class"].items():
            console.print(f"  {name:10s} sensitivity {m['sensitivity']:.3f}  specificity {m['specificity']:.3f}  "
                          f"AUC {m['auc']:.3f}  (n={m['support']})")
        console.print(f"validation accuracy {val['accuracy']:.3f}, macro AUC {val['auc_macro']:.3f}; model: "
                      f"{result.out / 'model.pt'}; curves: {result.out / 'curves.png'}")
