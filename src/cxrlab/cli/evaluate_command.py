"""``cxrlab evaluate``: the report of a trained run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.cli._common import DeviceOpt, PrecisionOpt, device_policy, console, exit_if_failed, handle_errors, shown


def evaluate_command(
    run: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    out: Annotated[Path, typer.Option(help="Output folder for report.html, report.md, metrics.json, figures.")],
    data: Annotated[Optional[Path], typer.Option(help="Evaluate these images instead of the split's test side.")] = None,
    splits: Annotated[Optional[Path], typer.Option(help="splits.csv whose test side to evaluate (default: the run's).")] = None,
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates for the 95% CIs.")] = DEFAULT_N_BOOT,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    no_gradcam: Annotated[bool, typer.Option("--no-gradcam", help="Skip the Grad-CAM sections (in-lung evidence, galleries, filters).")] = False,
    cam_method: Annotated[str, typer.Option(help="Map of the explanation sections: gradcam, gradcam++, hirescam or layercam.")] = "gradcam",
    cam_layer: Annotated[Optional[str], typer.Option(help="last (default), fine (a finer grid) or a module name.")] = None,
    segmenter: Annotated[Optional[Path], typer.Option(help="Lung segmenter file: for a model that uses lung masks, every "
                                                          "image's mask comes from it (as in predict) instead of the "
                                                          "table's mask column.")] = None,
    allow_mixed_masks: Annotated[bool, typer.Option("--allow-mixed-masks", help="Go on when the lung masks fail the "
                                                    "provenance rule training applies (some images unmasked, masks of "
                                                    "several origins): warned and recorded in the report.")] = False,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "32",
) -> None:
    """Metrics with patient-bootstrap CIs, per-source results, operating points, calibration and figures.
    Exit code 3 when some images could not be read (each is named on screen and in the report; rows
    left out by choice, such as labels outside the scheme, are listed but do not count)."""
    from cxrlab.workflows.evaluation import evaluate_and_explain

    with handle_errors(), device_policy(device, precision):
        results = evaluate_and_explain(run, out, data=data, splits=splits, n_boot=n_boot, seed=seed,
                                       explanations=not no_gradcam, method=cam_method, layer=cam_layer,  # type: ignore[arg-type]
                                       segmenter=segmenter, allow_mixed_masks=allow_mixed_masks)
        m, ci = results["metrics"], results["ci"]
        if results.get("task") == "multilabel":
            _print_multilabel(results)
        else:
            console.print(f"{m['n']} images of {results['patients']} patients ({results['side']}): accuracy "
                          f"{m['accuracy']:.3f} ({ci['accuracy']['low']:.3f}–{ci['accuracy']['high']:.3f}), macro ROC "
                          f"AUC {m['macro']['roc_auc'] or float('nan'):.3f}")
        for source, v in results["per_source"].items() if results.get("task") != "multilabel" else ():
            covid, f1 = ("—" if v[k] is None else f"{v[k]:.3f}" for k in ("auc_covid", "f1_macro"))
            console.print(f"  {source:10s} {v['n']:4d} images, accuracy {v['accuracy']:.3f}, COVID-19 AUC {covid}, "
                          f"macro-F1 {f1}")
        if "lung_evidence" in results and results["lung_evidence"].get("n"):
            lung = results["lung_evidence"]
            console.print(f"Grad-CAM in-lung share: median {lung['median']:.2f} over {lung['n']} images with masks "
                          f"(evenly spread evidence would score {lung['median_even_share']:.2f}); {len(lung['mostly_outside'])} mostly outside")
        for game in results.get("lesion_evidence", []):
            if game.get("n"):
                console.print(f"pointing game ({game['method']} @ {game['layer']}): the map's peak on the lesion in "
                              f"{game['hit_rate']:.0%} of {game['n']} images with lesion masks")
        if results["skipped"]:
            console.print(f"[yellow]{len(results['skipped'])} input(s) not evaluated[/] ({results['unreadable']} could "
                          "not be read; all are listed in the report):")
            for image, reason in results["skipped"][:20]:
                console.print(f"  {shown(image)}: {shown(reason)}", highlight=False)
            if len(results["skipped"]) > 20:
                console.print(f"  ... and {len(results['skipped']) - 20} more")
        for warning in results["warnings"]:
            console.print(f"[yellow]warning:[/] {warning}")
        console.print(f"wrote {Path(out) / 'report.html'}, {Path(out) / 'report.md'} and {Path(out) / 'metrics.json'}")
    exit_if_failed(results["unreadable"], "input(s) could not be read and")




def compare_command(
    eval_a: Annotated[Path, typer.Argument(help="Folder written by `cxrlab evaluate` for model A.")],
    eval_b: Annotated[Path, typer.Argument(help="Folder written by `cxrlab evaluate` for model B, on the same images.")],
    out: Annotated[Path, typer.Option(help="Output folder for comparison.md and comparison.json.")],
    n_boot: Annotated[int, typer.Option(help="Bootstrap replicates over patients.")] = DEFAULT_N_BOOT,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
) -> None:
    """Are two models really different? Paired differences of accuracy and of each class's AUC, with
    intervals and p-values from a bootstrap over patients, Holm-corrected across the comparisons."""
    from cxrlab.evaluate.compare import compare_evaluations

    with handle_errors():
        result = compare_evaluations(eval_a, eval_b, out, n_boot=n_boot, seed=seed)
        acc = result["accuracy"]

        def verdict(t: dict) -> str:
            p = "—" if t["p_holm"] is None else f"{t['p_holm']:.3g}"
            return f"Holm p = {p}{'' if t['significant'] else ' (within noise)'}"

        console.print(f"{result['n']} paired images of {result['patients']} patients. Accuracy A {acc['a']:.3f} vs B "
                      f"{acc['b']:.3f}: {verdict(acc)}")
        for name, t in result["per_class"].items():
            low, high = ("—" if v is None else f"{v:+.3f}" for v in (t["low"], t["high"]))
            console.print(f"  {name:10s} AUC {t['auc_a']:.3f} vs {t['auc_b']:.3f}, A − B {t['difference']:+.3f} "
                          f"({low} to {high}), {verdict(t)}")
        console.print(f"wrote {Path(out) / 'comparison.md'} and {Path(out) / 'comparison.json'}")


def _interval(value: float | None, ci: dict) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" + (f" ({ci['low']:.3f}–{ci['high']:.3f})" if ci.get("low") is not None else "")


def _print_multilabel(results: dict) -> None:
    """Per-finding AUCs with intervals, the mean, and the mean per source."""
    m, ci = results["metrics"], results["ci"]
    console.print(f"{m['n']} images of {results['patients']} patients ({results['side']}): mean ROC AUC "
                  f"{_interval(m['macro']['roc_auc'], ci['mean_roc_auc'])} over {len(m['per_class'])} findings")
    for name, v in m["per_class"].items():
        console.print(f"  {name:22s} AUC {_interval(v['roc_auc'], ci['per_class'][name]['roc_auc'])}, "
                      f"{v['support']} positive of {v['known']}", highlight=False)
    for source, v in results["per_source"].items():
        mean = "—" if v["mean_roc_auc"] is None else f"{v['mean_roc_auc']:.3f}"
        console.print(f"  {source:10s} {v['n']:4d} images, mean AUC {mean}", highlight=False)
