"""``cxrlab evaluate``: the report of a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.cli._common import console, handle_errors


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    out: Annotated[Path, typer.Option(help="Output folder for report.html, report.md, metrics.json, figures.")],
    data: Annotated[Optional[Path], typer.Option(help="Evaluate these images instead of the split's test side.")] = None,
    splits: Annotated[Optional[Path], typer.Option(help="splits.csv whose test side to evaluate (default: the run's).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% CIs.")] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    no_gradcam: Annotated[bool, typer.Option("--no-gradcam", help="Skip the Grad-CAM in-lung evidence section.")] = False,
) -> None:
    """Metrics with patient-bootstrap CIs, per-source results, operating points, calibration and figures."""
    from cxrlab.evaluate.runner import evaluate_run

    with handle_errors():
        results = evaluate_run(run, out, data=data, splits=splits, n_boot=n_boot, seed=seed)
        if not no_gradcam:
            _add_lung_evidence(results, run, out)
            _add_galleries(results, run, out)
            _add_filters(results, run, out)
        m, ci = results["metrics"], results["ci"]
        console.print(f"{m['n']} images of {results['patients']} patients ({results['side']}): accuracy "
                      f"{m['accuracy']:.3f} ({ci['accuracy']['low']:.3f}–{ci['accuracy']['high']:.3f}), macro ROC AUC "
                      f"{m['macro']['roc_auc'] or float('nan'):.3f}")
        for source, v in results["per_source"].items():
            console.print(f"  {source:10s} {v['n']:4d} images, accuracy {v['accuracy']:.3f}")
        for warning in results["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"wrote {Path(out) / 'report.html'}, {Path(out) / 'report.md'} and {Path(out) / 'metrics.json'}")


def _add_lung_evidence(results: dict, run: Path, out: Path) -> None:
    """Grad-CAM in-lung share for the test images with lung masks, added to the report."""
    import pandas as pd

    from cxrlab.evaluate.predictions import load_for_evaluation
    from cxrlab.evaluate.runner import write_report
    from cxrlab.explain import lung_evidence, plot_lung_evidence, summarise_lung_evidence

    predictions = pd.read_csv(Path(out) / "predictions.csv", keep_default_na=False)
    if not (predictions["mask"] != "").any():
        return
    model, preprocess, _ = load_for_evaluation(run)
    table = lung_evidence(model, preprocess, predictions)
    if table.empty:
        return
    table.to_csv(Path(out) / "lung_evidence.csv", index=False)
    summary = summarise_lung_evidence(table)
    if not summary["n"]:
        console.print("[yellow]Grad-CAM gave no evidence (all-zero maps) for the images with masks[/]")
        return
    rows = [[group, str(v["n"]), f"{v['median']:.2f}", str(v["below_half"])] for group, v in summary["groups"].items()]
    results["lung_evidence"] = summary
    results["extra_tables"] = [
        {"title": f"Grad-CAM evidence inside the lungs ({summary['n']} test images with lung masks; median share "
                  f"{summary['median']:.2f}; the lungs cover a median {summary['median_lung_area']:.2f} of the image, "
                  "which is what evenly spread evidence would score)", "header": ["true class / prediction", "images", "median in-lung share",
                                                          "mostly outside (< 0.5)"], "rows": rows},
        {"title": "Images whose evidence lies mostly outside the lungs (text, markers, devices, borders?)",
         "header": ["image", "true", "predicted", "in-lung share"],
         "rows": [[Path(r["image"]).name, r["label"], r["predicted"], f"{r['in_lung_share']:.2f}"]
                  for r in summary["mostly_outside"][:30]]},
    ]
    results.setdefault("figures", {})["Grad-CAM evidence inside the lungs"] = str(
        plot_lung_evidence(table, Path(out) / "lung_evidence.png"))
    write_report(results, Path(out))
    console.print(f"Grad-CAM in-lung share: median {summary['median']:.2f} over {summary['n']} images with masks; "
                  f"{len(summary['mostly_outside'])} mostly outside the lungs")


def _add_galleries(results: dict, run: Path, out: Path) -> None:
    """Per-class galleries of true/false positives and false negatives, added to the report."""
    import pandas as pd

    from cxrlab.evaluate.predictions import load_for_evaluation
    from cxrlab.evaluate.runner import write_report
    from cxrlab.explain import plot_gallery

    predictions = pd.read_csv(Path(out) / "predictions.csv", keep_default_na=False)
    model, preprocess, _ = load_for_evaluation(run)
    for name in model.class_names:
        path = plot_gallery(model, preprocess, predictions, name, Path(out) / f"gallery_{name.replace('/', '-')}.png")
        if path is not None:
            results.setdefault("figures", {})[f"{name}: true/false positives and false negatives"] = str(path)
    write_report(results, Path(out))


def _add_filters(results: dict, run: Path, out: Path) -> None:
    """First-layer filters of the fine-tuned model beside its pretrained starting point."""
    from cxrlab.evaluate.predictions import load_for_evaluation
    from cxrlab.evaluate.runner import write_report
    from cxrlab.explain import plot_first_layer_filters
    from cxrlab.models import WeightsUnavailableError, create_classifier

    model, _, payload = load_for_evaluation(run)
    try:  # the starting weights, when they can be had offline
        reference = create_classifier(payload["backbone"], len(model.class_names))
    except WeightsUnavailableError:
        reference = None
    path = plot_first_layer_filters(model, reference, Path(out) / "first_layer_filters.png")
    results.setdefault("figures", {})["first-layer filters: fine-tuned vs pretrained"] = str(path)
    write_report(results, Path(out))
