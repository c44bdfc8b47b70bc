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
    no_gradcam: Annotated[bool, typer.Option("--no-gradcam", help="Skip the Grad-CAM sections (in-lung evidence, galleries, filters).")] = False,
) -> None:
    """Metrics with patient-bootstrap CIs, per-source results, operating points, calibration and figures."""
    from cxrlab.study.evaluation import evaluate_and_explain

    with handle_errors():
        results = evaluate_and_explain(run, out, data=data, splits=splits, n_boot=n_boot, seed=seed,
                                       explanations=not no_gradcam)
        m, ci = results["metrics"], results["ci"]
        console.print(f"{m['n']} images of {results['patients']} patients ({results['side']}): accuracy "
                      f"{m['accuracy']:.3f} ({ci['accuracy']['low']:.3f}–{ci['accuracy']['high']:.3f}), macro ROC AUC "
                      f"{m['macro']['roc_auc'] or float('nan'):.3f}")
        for source, v in results["per_source"].items():
            console.print(f"  {source:10s} {v['n']:4d} images, accuracy {v['accuracy']:.3f}")
        if "lung_evidence" in results and results["lung_evidence"].get("n"):
            lung = results["lung_evidence"]
            console.print(f"Grad-CAM in-lung share: median {lung['median']:.2f} over {lung['n']} images with masks "
                          f"(lungs cover {lung['median_lung_area']:.2f}); {len(lung['mostly_outside'])} mostly outside")
        for warning in results["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"wrote {Path(out) / 'report.html'}, {Path(out) / 'report.md'} and {Path(out) / 'metrics.json'}")


