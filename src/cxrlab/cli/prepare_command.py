"""``cxrlab prepare``: source → preprocessed shards (local process pool or Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cxrlab.cli._common import console, err_console, handle_errors, progress_bar, shown
from cxrlab.cli.data_commands import LabelMapOpt, load
from cxrlab.core.defaults import DEFAULT_SHARD_SIZE

if TYPE_CHECKING:
    from cxrlab.preprocess import PrepareSummary


def print_summary(summary: PrepareSummary, limit: int = 30) -> None:
    """Counts per class and source, and every skipped file with its reason."""
    from cxrlab.preprocess.etl import REPORT_FILE, SKIPPED_FILE

    sources = sorted({s for per in summary.source_counts.values() for s in per})
    table = Table(title=f"prepared {summary.images} images in {summary.seconds:.1f} s "
                        f"({summary.shards_written} shards written, {summary.shards_reused} reused)")
    table.add_column("class")
    for source in sources:
        table.add_column(source, justify="right")
    table.add_column("total", justify="right")
    for label, total in summary.class_counts.items():
        per = summary.source_counts.get(label, {})
        table.add_row(label, *[str(per.get(s, 0)) for s in sources], str(total))
    console.print(table)
    if summary.skipped:
        err_console.print(f"[yellow]skipped {len(summary.skipped)} input(s):[/]")
        for image, reason in summary.skipped[:limit]:
            err_console.print(f"  {shown(image)}: {shown(reason)}", highlight=False, soft_wrap=True)
        if len(summary.skipped) > limit:
            err_console.print(f"  ... {len(summary.skipped) - limit} more in {Path(summary.out_dir) / SKIPPED_FILE}")
    console.print(f"report: {Path(summary.out_dir) / REPORT_FILE}, skipped list: {Path(summary.out_dir) / SKIPPED_FILE}")


# each option -> the setting it gives (tests check that its help and default are the setting's own)
PREPARE_SETTINGS = {"size": "preprocess.size", "resize": "preprocess.resize", "contrast": "preprocess.contrast",
                    "clahe_clip": "preprocess.clahe_clip", "clahe_grid": "preprocess.clahe_grid",
                    "contrast_at": "preprocess.contrast_at", "lung_crop": "preprocess.lung_crop",
                    "artifacts": "preprocess.artifacts", "fast_decode": "preprocess.fast_decode",
                    "max_pixels": "preprocess.max_pixels", "min_side": "preprocess.min_side",
                    "backbone": "model.backbone"}


def prepare_command(
    data: Annotated[str, typer.Option("--data", help="Folder tree, manifest, metadata CSV, splits.csv or a public "
                                                     "collection; a manifest may be an fsspec URL (s3://...).")],
    out: Annotated[str, typer.Option(help="Output folder for shards and reports, or an fsspec URL (s3://bucket/"
                                          "prepared, gs://..., hdfs://...).")],
    config: Annotated[Optional[Path], typer.Option("--config", help="A training config (YAML): prepare the images "
                                                                    "exactly as training with it would.")] = None,
    assignments: Annotated[Optional[list[str]], typer.Option("--set", help="KEY=VALUE over any setting (repeatable), "
                                                                  "as for train: preprocess.size=256, contrast=none, "
                                                                  "model.backbone=resnet50.")] = None,
    size: Annotated[Optional[int], typer.Option(help="output side in pixels; default: the backbone's native input "
                                                     "size (the papers used 224-800).")] = None,
    resize: Annotated[Optional[str], typer.Option(help="stretch to a square (the papers' choice) or letterbox (keep "
                                                       "the aspect ratio, pad with black) (default: stretch).")] = None,
    contrast: Annotated[Optional[str], typer.Option(help="none, clahe (contrast-limited adaptive histogram "
                                                         "equalisation) or equalize (global histogram equalisation) "
                                                         "(default: clahe).")] = None,
    clahe_clip: Annotated[Optional[float], typer.Option(help="CLAHE clip limit (default: 2.0).")] = None,
    clahe_grid: Annotated[Optional[int], typer.Option(help="CLAHE tiles per side (default: 8).")] = None,
    contrast_at: Annotated[Optional[str], typer.Option(help="apply the contrast step at the source resolution, then "
                                                            "resize (the papers' order), or at the target size (about "
                                                            "twice as fast; slightly different) (default: source).")] = None,
    lung_crop: Annotated[Optional[bool], typer.Option("--lung-crop/--no-lung-crop", help="crop each image to its lung "
                                                                                         "mask's box (images without a "
                                                                                         "mask stay whole; cxrlab "
                                                                                         "segment predict fills in "
                                                                                         "masks) (default: False).")] = None,
    artifacts: Annotated[Optional[str], typer.Option(help="inpaint: paint out burned-in text, markers and thin frames "
                                                          "before any other step (uses the lung mask when there is "
                                                          "one) (default: keep).")] = None,
    fast_decode: Annotated[Optional[bool], typer.Option("--fast-decode/--no-fast-decode", help="decode JPEGs at a reduced "
                                                                                               "scale (DCT scaling) while "
                                                                                               "the shorter side stays >= 2 "
                                                                                               "x size: faster, slightly "
                                                                                               "different pixels (default: "
                                                                                               "False).")] = None,
    max_pixels: Annotated[Optional[int], typer.Option(help="refuse larger images (decompression-bomb guard) (default: "
                                                           "64000000).")] = None,
    min_side: Annotated[Optional[int], typer.Option(help="refuse images whose shorter side is smaller (default: 32).")] = None,
    backbone: Annotated[Optional[str], typer.Option(help="backbone name (cxrlab backbones) (default: "
                                                         "efficientnet_lite0).")] = None,
    clahe: Annotated[bool, typer.Option("--clahe", hidden=True, help="Same as --contrast clahe.")] = False,
    equalize: Annotated[bool, typer.Option("--equalize", hidden=True, help="Same as --contrast equalize.")] = False,
    inpaint_artifacts: Annotated[bool, typer.Option("--inpaint-artifacts", hidden=True,
                                                    help="Same as --artifacts inpaint.")] = False,
    engine: Annotated[str, typer.Option(help="local (process pool) or spark.")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="Processes / Spark cores (default: all).")] = None,
    spark_master: Annotated[Optional[str], typer.Option("--master", "--spark-master",
                                                        help="Spark master URL (default local[WORKERS]).")] = None,
    spark_conf: Annotated[Optional[list[str]], typer.Option("--conf", help="Spark setting KEY=VALUE (repeatable), "
                                                                           "e.g. spark.executor.memory=4g or "
                                                                           "spark.pyspark.python=/opt/venv/bin/python.")] = None,
    shard_size: Annotated[int, typer.Option(help="Images per shard.")] = DEFAULT_SHARD_SIZE,
    scheme: Annotated[Optional[str], typer.Option("--scheme", help="Class scheme: 3class, binary, or multi-label: "
                                                                   "chestxray14, chexpert5, findings:A,B,C (default: "
                                                                   "the config's, 3class).")] = None,
    label_map: LabelMapOpt = None,
    keep_blank_view: Annotated[bool, typer.Option(help="Keep metadata rows with a blank view.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete existing shards in OUT first.")] = False,
) -> None:
    """Preprocess images into Parquet shards, as training with the same settings would (its config's
    preprocess section; each option is one of its settings); resumable; bad files are skipped and reported."""
    from cxrlab.models import get_backbone_spec
    from cxrlab.preprocess import prepare
    from cxrlab.train import load_config
    from cxrlab.train.config import flat_key
    from cxrlab.train.data import preprocess_for, with_recorded_scheme

    with handle_errors():
        given = {"size": size, "resize": resize, "contrast": contrast, "clahe_clip": clahe_clip,
                 "clahe_grid": clahe_grid, "contrast_at": contrast_at, "lung_crop": lung_crop, "artifacts": artifacts,
                 "fast_decode": fast_decode, "max_pixels": max_pixels, "min_side": min_side, "backbone": backbone}
        if sum((clahe, equalize)) > 1 or (contrast and (clahe or equalize)):
            raise typer.BadParameter("choose one contrast: --contrast none|clahe|equalize")
        given["contrast"] = contrast or ("clahe" if clahe else "equalize" if equalize else None)
        given["artifacts"] = artifacts or ("inpaint" if inpaint_artifacts else None)
        overrides = {flat_key(PREPARE_SETTINGS[k]): v for k, v in given.items() if v is not None}
        settings = load_config(config, {**overrides, "data": data if "://" in data else str(Path(data)),
                                        **({"scheme": scheme} if scheme else {})}, assignments or ())
        settings = with_recorded_scheme(settings)  # a manifest written with --scheme S is read with S
        preprocess = preprocess_for(settings, get_backbone_spec(settings.model.backbone))
        conf = dict(_key_value(item) for item in spark_conf or ())
        manifest = load(data if "://" in data else Path(data), settings.data.scheme, label_map, keep_blank_view,
                        list(settings.data.uncertain), settings.data.blank)
        with progress_bar(f"prepare ({engine})") as bar:
            task = bar.add_task(f"prepare ({engine})", total=len(manifest))
            summary = prepare(manifest, out, preprocess, engine=engine, workers=workers, shard_size=shard_size,  # type: ignore[arg-type]
                              spark_master=spark_master, spark_conf=conf, overwrite=overwrite,
                              progress=lambda n: bar.advance(task, n))
        print_summary(summary)
        if preprocess.artifacts == "inpaint":
            from cxrlab.preprocess.artifacts import plot_artifact_sample

            figure = plot_artifact_sample(manifest.table, summary.artifacts, preprocess, Path(summary.out_dir) / "artifacts.png") \
                if "://" not in summary.out_dir else None
            console.print(f"artifacts painted out in {len(summary.artifacts)} of {summary.images} images "
                          f"({sum(summary.artifacts.values()):,} pixels)" + (f"; sample: {figure}" if figure else ""))


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"--conf takes KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()
