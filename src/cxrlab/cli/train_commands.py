"""``cxrlab train`` and ``cxrlab backbones``."""

from __future__ import annotations

import csv
import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from cxrlab.core.run_folder import MODEL, OOF_PREDICTIONS, SUMMARY
from cxrlab.cli._common import console, handle_errors, parse_ratios, progress_bar, quiet_lightning


def _fine_tune(value: str | None) -> int | str | None:
    if value is None or value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise typer.BadParameter(f"--fine-tune takes an integer k or 'all', got {value!r}") from None


# each option -> the setting it gives (tests check that its help and default are the setting's own)
TRAIN_SETTINGS = {"data": "data.path", "splits": "data.splits", "ratios": "data.ratios", "folds": "data.folds",
                  "recipe": "recipe", "backbone": "model.backbone", "fine_tune": "model.fine_tune",
                  "epochs": "schedule.epochs", "lr": "optim.lr", "batch_size": "optim.batch_size",
                  "size": "preprocess.size", "seed": "runtime.seed", "out": "runtime.out", "weights": "model.weights",
                  "device": "runtime.device", "devices": "runtime.devices", "num_nodes": "runtime.num_nodes",
                  "strategy": "runtime.strategy", "init_from": "model.init_from"}


def train_command(
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML config (see configs/).")] = None,
    data: Annotated[Optional[Path], typer.Option(help="folder tree, manifest, metadata CSV or public collection "
                                                      "(default: none).")] = None,
    splits: Annotated[Optional[Path], typer.Option(help="a splits.csv to use (default: make a patient-grouped split).")] = None,
    ratios: Annotated[Optional[str], typer.Option(help="train, validation and test shares of the split made here "
                                                       "(default: 0.8,0.1,0.1).")] = None,
    folds: Annotated[Optional[int], typer.Option(help="K >= 3: cross-validated training (cxrlab train --folds K): K "
                                                      "runs, out-of-fold predictions for every image; ratios are then "
                                                      "not used (default: 0).")] = None,
    recipe: Annotated[Optional[str], typer.Option(help="named bundle of settings the config starts from (its own "
                                                       "values win) (default: small-data).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="backbone name (cxrlab backbones) (default: "
                                                         "efficientnet_lite0).")] = None,
    fine_tune: Annotated[Optional[str], typer.Option("--fine-tune", help="trainable last blocks k, or all (default: "
                                                                         "all).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="epochs (single-phase runs) (default: 10).")] = None,
    lr: Annotated[Optional[float], typer.Option(help="learning rate (single-phase runs) (default: 0.0001).")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="images per step (per process in a data-parallel run) "
                                                           "(default: 32).")] = None,
    size: Annotated[Optional[int], typer.Option(help="output side in pixels; default: the backbone's native input "
                                                     "size (the papers used 224-800).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="seed of the split, the weights' initialisation and the batches "
                                                     "(default: 0).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default: runs/train).")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="backbone weights file or cache folder (default: none).")] = None,
    device: Annotated[Optional[str], typer.Option(help="auto (a GPU when there is one), cpu, cuda, cuda:N or mps "
                                                       "(default: auto).")] = None,
    devices: Annotated[Optional[int], typer.Option(help="processes per machine (GPUs, or CPU processes) for "
                                                        "data-parallel training; batch_size is per process (default: "
                                                        "1).")] = None,
    num_nodes: Annotated[Optional[int], typer.Option(help="machines of a data-parallel run (launched by torchrun or "
                                                          "SLURM) (default: 1).")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="ddp: distributed data-parallel (Lightning's); auto: ddp "
                                                         "when devices or num_nodes > 1 (default: auto).")] = None,
    init_from: Annotated[Optional[Path], typer.Option("--init-from", help="start from the backbone of a trained "
                                                                          "cxrlab model (a run folder or model file; "
                                                                          "its head is not used): transfer from your "
                                                                          "own task, e.g. ChestX-ray14's findings, to "
                                                                          "another (default: none).")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable), "
                                                                  "by field or section: lr=1e-4 or optim.lr=1e-4, "
                                                                  "augment.enabled=true, runtime.precision=bf16.")] = None,
) -> None:
    """Train a classifier; writes model.pt, metrics.csv, summary.json and curves.png to OUT.

    The options are the common few; every other setting (scheme, precision, MLflow, lung attention,
    ...) is a --set KEY=VALUE or a field of the --config file (docs: Configuration).
    """
    from cxrlab.train import load_config, train
    from cxrlab.train.distributed import is_rank_zero

    quiet_lightning()
    with handle_errors():
        overrides = {"data": str(data) if data else None, "splits": str(splits) if splits else None,
                     "ratios": parse_ratios(ratios) if ratios else None, "folds": folds,
                     "recipe": recipe, "backbone": backbone, "fine_tune": _fine_tune(fine_tune), "epochs": epochs, "lr": lr,
                     "batch_size": batch_size, "size": size, "seed": seed, "out": str(out) if out else None,
                     "weights": str(weights) if weights else None, "init_from": str(init_from) if init_from else None,
                     "device": device, "devices": devices, "num_nodes": num_nodes, "strategy": strategy}
        cfg = load_config(config, overrides, assignments or ())
        if cfg.data.folds >= 2:
            _train_crossval(cfg)
            return
        if is_rank_zero(cfg):
            console.print(f"training {cfg.model.backbone} (fine_tune={cfg.model.fine_tune}) → {cfg.runtime.out}")
        with progress_bar("prepare") as bar:
            task = bar.add_task("prepare", total=None)
            result = train(cfg, progress=lambda n: bar.advance(task, n))
        if not is_rank_zero(cfg):  # a data-parallel run's other processes: rank 0 reports
            return
        summary = result.summary
        val = summary["val"]
        if not val and summary["status"] == "ok" and not summary["images"]["val"]:
            console.print(f"no validation side: kept the last of {summary['epochs_run']} epoch(s); wrote "
                          f"{result.out / MODEL} and {result.out / SUMMARY}")
            return
        if not val:
            console.print(f"[yellow]no epoch was kept[/] ({summary['status']}); wrote {result.out / SUMMARY}")
            return
        table = Table(title=f"validation ({summary['images']['val']} images), best epoch {summary['best_epoch']}")
        for column in ("class", "sensitivity", "specificity", "AUC", "support"):
            table.add_column(column, justify="right")
        for name, m in val["per_class"].items():
            table.add_row(name, *(f"{m[k]:.3f}" if m[k] is not None else "—" for k in ("sensitivity", "specificity", "auc")),
                          str(m["support"]))
        console.print(table)
        console.print(f"accuracy {val['accuracy']:.3f}, macro AUC {val['auc_macro']:.3f}; "
                      f"{summary['timing']['seconds_total']:.1f} s; wrote {result.out / MODEL} and "
                      f"{result.out / SUMMARY}")
        console.print("[dim]validation figures only: see per-source and cross-source results before trusting them[/]")
        if summary.get("validation_side", {}).get("note"):
            console.print(f"[yellow]note:[/] {summary['validation_side']['note']}; cross-validated training "
                          "(--folds K) estimates on every image")


@functools.cache
def _backbone_rows() -> list[dict]:
    """One dict per registered backbone (building each on the meta device takes seconds: once per process)."""
    import torch

    from cxrlab.models import create_backbone, get_backbone_spec, list_backbones

    rows = []
    for name in list_backbones():
        spec = get_backbone_spec(name)
        with torch.device("meta"):  # exact counts without allocating weights
            model = create_backbone(spec)
        rows.append({"name": name, "timm": spec.timm_name, "params": sum(p.numel() for p in model.parameters()),
                     "blocks": len(spec.partition(model)), "input_size": spec.input_size,
                     "offline_weights": bool(spec.offline_weights)})
    return rows


def _train_crossval(cfg) -> None:
    """``train --folds K``: the runs, then the out-of-fold figures with intervals, pooled and per source."""
    from cxrlab.evaluate.registry import HEADLINE, get_metric
    from cxrlab.workflows.crossval import train_crossval

    console.print(f"training {cfg.model.backbone} (fine_tune={cfg.model.fine_tune}) on {cfg.data.folds} patient-grouped folds → {cfg.runtime.out}")
    with progress_bar("folds") as bar:
        task = bar.add_task("folds", total=cfg.data.folds + 2)  # the folds, the ensemble, the baseline
        started: list[str] = []

        def advance(text: str) -> None:  # called as each fold starts: the one before it is done
            bar.update(task, description=text, advance=1 if started else 0)
            started.append(text)

        result = train_crossval(cfg, progress=advance)
        bar.update(task, completed=cfg.data.folds + 2)
    figures = result.summary["out_of_fold"]
    labels = {key: get_metric(key).display for key in HEADLINE}
    table = Table(title=f"out of fold: {figures['n']} images of {figures['patients']} patients (95% patient-bootstrap "
                        "intervals)")
    table.add_column("source")
    table.add_column("images", justify="right")
    for key in HEADLINE:
        table.add_column(labels[key], justify="right")

    def cell(value: dict | float | None) -> str:
        if isinstance(value, dict):
            if value["value"] is None:
                return "—"
            interval = f" [{value['low']:.3f}, {value['high']:.3f}]" if value["low"] is not None else ""
            return f"{value['value']:.3f}{interval}"
        return "—" if value is None else f"{value:.3f}"

    table.add_row("pooled", str(figures["n"]), *(cell(figures["pooled"][k]) for k in HEADLINE))
    for source, row in figures["per_source"].items():
        table.add_row(source, str(row["n"]), *(cell(row[k]) for k in HEADLINE))
    probe = result.summary["baseline"]["out_of_fold"]
    table.add_row("[dim]linear probe, pooled[/]", str(probe["n"]), *(cell(probe["pooled"][k]) for k in HEADLINE))
    console.print(table)
    versus = result.summary["versus_baseline"]
    console.print("versus the linear probe on frozen features (paired, 95% interval of the difference): " + "; ".join(
        f"{labels[k]} {v['value']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]"
        f"{'' if v['beyond_noise'] else ' (within noise)'}" for k, v in versus.items() if v["low"] is not None),
        highlight=False)
    epochs = ", ".join(str(r["best_epoch"]) for r in result.summary["runs"])
    console.print(f"epochs kept per fold ({cfg.select.metric}): {epochs}; wrote {result.out / MODEL} (the "
                  f"{cfg.data.folds} fold models as one ensemble), {result.out / OOF_PREDICTIONS} and {result.out / SUMMARY}")
    console.print("[dim]pooled figures on public CXR sets mix sources: read the per-source rows beside them[/]")


def backbones(output: Annotated[Optional[str], typer.Option(
        "--format", help="table, csv or json (default: table on a terminal, csv otherwise).")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Same as --format json.", hidden=True)] = False) -> None:
    """List registered backbones: timm name, parameters, blocks, input size, offline weights."""
    output = "json" if json_out else output or ("table" if console.is_terminal else "csv")
    if output not in ("table", "csv", "json"):
        raise typer.BadParameter(f"--format must be table, csv or json, got {output!r}")
    rows = _backbone_rows()
    if output == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    if output == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    table = Table(title="backbones (parameters without the head)")
    for column in ("name", "timm", "params", "blocks", "input", "offline weights"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["name"], r["timm"], f"{r['params'] / 1e6:.1f} M", str(r["blocks"]), str(r["input_size"]),
                      "yes" if r["offline_weights"] else "no")
    console.print(table)
