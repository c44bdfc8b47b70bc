"""``cxrlab segment train|predict``: the lung segmenter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.core.run_folder import METRICS, SEGMENTER, SUMMARY
from cxrlab.cli._common import console, exit_if_failed, handle_errors, progress_bar, quiet_lightning, shown

# the U-Net's training options, shared by train and crossfit: each a SegmentConfig setting with its help and
# default (a test compares them); None: not given, the setting's default
Backbone = Annotated[Optional[str], typer.Option(help="encoder backbone (offline weights for efficientnet_lite0/1/2) "
                                                      "(default: efficientnet_lite0).")]
Size = Annotated[Optional[int], typer.Option(help="output side in pixels; default: the segmenter's 256.")]
Epochs = Annotated[Optional[int], typer.Option(help="maximum epochs (early stopping on validation Dice) (default: 30).")]
BatchSize = Annotated[Optional[int], typer.Option(help="images per step (default: 8).")]
Lr = Annotated[Optional[float], typer.Option(help="Adam learning rate (cosine decay) (default: 0.001).")]
Seed = Annotated[Optional[int], typer.Option(help="seed (of the folds too, for crossfit) (default: 0).")]
SEGMENT_SETTINGS = {"backbone": "backbone", "size": "preprocess.size", "epochs": "epochs", "batch_size": "batch_size",
                    "lr": "lr", "seed": "seed", "out": "out"}


def _given(**options) -> dict:
    """The options given (the others keep their settings' defaults)."""
    return {k: v for k, v in options.items() if v is not None}

app = typer.Typer(no_args_is_help=True, help="Lung segmentation: train a U-Net on lung masks, predict masks.")


@app.command("train")
def segment_train(
    data: Annotated[Optional[list[Path]], typer.Option(help="Source with lung masks (repeatable): manifest, "
                                                            "metadata CSV or folder tree.")] = None,
    splits: Annotated[Optional[Path], typer.Option(help="A splits.csv to use instead of a new patient split.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default: runs/segment).")] = None,
    backbone: Backbone = None,
    weights: Annotated[Optional[Path], typer.Option(help="Encoder weights file or folder.")] = None,
    size: Size = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable), "
                                                                  "e.g. patience=12.")] = None,
) -> None:
    """Train the lung segmenter on a patient split of the images with masks; report Dice and IoU."""
    from cxrlab.core.settings import apply_assignments
    from cxrlab.train.segmentation import build_segment_config, train_segmenter

    with handle_errors():
        config = build_segment_config(apply_assignments(
            {"data": tuple(str(d) for d in data or ()), "splits": str(splits) if splits else None,
             "weights": str(weights) if weights else None,
             **_given(out=str(out) if out else None, backbone=backbone, size=size, epochs=epochs,
                      batch_size=batch_size, lr=lr, seed=seed)}, assignments or ()))
        quiet_lightning()
        summary = train_segmenter(config)
        for side in ("val", "test"):
            s = summary[side]
            if s.get("n"):
                console.print(f"{side:4s} {s['n']:4d} images: Dice {s['dice_clean_mean']:.3f} (median "
                              f"{s['dice_clean_median']:.3f}, 5th percentile {s['dice_clean_p05']:.3f}), IoU "
                              f"{s['iou_clean_mean']:.3f}; before clean-up Dice {s['dice_mean']:.3f}")
        folder = Path(config.out)
        console.print(f"wrote {folder / SEGMENTER}, {folder / SUMMARY}, {folder / METRICS}")


@app.command("predict")
def segment_predict(
    model: Annotated[Path, typer.Argument(help="segmenter.pt or its run folder.")],
    data: Annotated[Path, typer.Option(help="Images to segment: manifest, metadata CSV, splits.csv or folder tree.")],
    out: Annotated[Path, typer.Option(help="Output folder: masks/ and manifest.csv.")] = Path("runs/masks"),
    replace: Annotated[bool, typer.Option("--replace", help="Also replace the masks the data already has.")] = False,
) -> None:
    """Predict lung masks for the images without one; write them and a manifest that uses them."""
    from cxrlab.data import load_source
    from cxrlab.evaluate.lung_masks import predict_lung_masks

    with handle_errors():
        table = load_source(data).table
        with progress_bar("segment") as bar:
            task = bar.add_task("segment", total=len(table))
            _, summary = predict_lung_masks(model, table, out, replace=replace,
                                            progress=lambda n: bar.advance(task, n))
        console.print(f"{summary['predicted']} mask(s) predicted, {summary['kept_given']} given mask(s) kept, "
                      f"{len(summary['skipped'])} image(s) skipped")
        for image, reason in summary["skipped"][:10]:
            console.print(f"  skipped {shown(image)}: {shown(reason)}", highlight=False)
        dice = summary["dice_vs_given"]
        if dice["n"]:
            console.print(f"overlap with the {dice['n']} given masks: mean Dice {dice['mean']:.3f} (median "
                          f"{dice['median']:.3f}; {dice['in_sample']} of them the segmenter's own training patients: "
                          "optimistic there)")
            _print_dice(dice)
        console.print(f"wrote {out / 'manifest.csv'} (use it as --data) and {out / 'masks'}")


def _print_dice(dice: dict) -> None:
    """Dice per source and per class, and where there was no hand-drawn mask to measure it."""
    for key in ("source", "class"):
        console.print(f"  Dice per {key}: " + ", ".join(f"{k} {v['mean']:.3f} ({v['n']} images)"
                                                       for k, v in dice.get(f"per_{key}", {}).items()), highlight=False)
    unmeasured = {k: v for k, v in dice.get("unmeasured", {}).items() if v}
    if unmeasured:
        console.print("  no hand-drawn mask to score against (mask quality unmeasured): " + "; ".join(
            f"{k} {', '.join(v)}" for k, v in unmeasured.items()), highlight=False)


@app.command("crossfit")
def segment_crossfit(
    data: Annotated[Path, typer.Option(help="Images with some hand-drawn lung masks: manifest, metadata CSV or folder tree.")],
    out: Annotated[Path, typer.Option(help="Output folder: manifest.csv, fold<k>/ (segmenter and masks), summary.json.")] = Path("runs/masks-crossfit"),
    folds: Annotated[int, typer.Option(help="Patient folds: each fold's masks come from a segmenter trained on the others.")] = 3,
    backbone: Backbone = None,
    size: Size = None,
    epochs: Epochs = None,
    batch_size: BatchSize = None,
    lr: Lr = None,
    seed: Seed = None,
) -> None:
    """Predict every image's lung mask with a segmenter that never trained on its patient (one origin
    for all masks, none in-sample): what lung crop, lung attention and the attention loss need when
    hand-drawn masks cover some classes more than others. Resumable."""
    from cxrlab.workflows.mask_crossfit import crossfit_lung_masks

    with handle_errors():
        quiet_lightning()
        _, summary = crossfit_lung_masks(data, out, folds, _given(backbone=backbone, size=size, epochs=epochs,
                                                                  batch_size=batch_size, lr=lr, seed=seed),
                                         progress=lambda step: console.print(step))
        dice = summary["held_out_dice"]
        console.print(f"{summary['masks']} of {summary['images']} images masked by {summary['folds']} segmenters, each "
                      f"on patients it never trained on" + (f"; Dice against the hand-drawn masks of those patients "
                                                            f"{dice:.3f}" if dice is not None else ""))
        if summary["dice_vs_given"]["n"]:
            _print_dice(summary["dice_vs_given"])
        for image, reason in summary["skipped"][:20]:
            console.print(f"  skipped {shown(image)}: {shown(reason)}", highlight=False)
        console.print(f"wrote {out / 'manifest.csv'} (use it as --data) and {out / SUMMARY}")
    exit_if_failed(len(summary["skipped"]), "image(s) could not be read and")
