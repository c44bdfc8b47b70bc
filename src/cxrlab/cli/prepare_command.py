"""``cxrlab prepare``: source → preprocessed shards (local process pool or Spark)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cxrlab.cli._common import console, err_console, handle_errors, progress_bar
from cxrlab.cli.data_commands import LabelMapOpt, SchemeOpt, load
from cxrlab.core.defaults import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIDE, DEFAULT_SHARD_SIZE

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
            err_console.print(f"  {image}: {reason}", highlight=False, soft_wrap=True)
        if len(summary.skipped) > limit:
            err_console.print(f"  ... {len(summary.skipped) - limit} more in {Path(summary.out_dir) / SKIPPED_FILE}")
    console.print(f"report: {Path(summary.out_dir) / REPORT_FILE}, skipped list: {Path(summary.out_dir) / SKIPPED_FILE}")


def prepare_command(
    data: Annotated[str, typer.Option("--data", help="Folder tree, manifest, metadata CSV, splits.csv or a public "
                                                     "collection; a manifest may be an fsspec URL (s3://...).")],
    out: Annotated[str, typer.Option(help="Output folder for shards and reports, or an fsspec URL (s3://bucket/"
                                          "prepared, gs://..., hdfs://...).")],
    size: Annotated[int, typer.Option(help="Output side in pixels.")] = 224,
    clahe: Annotated[bool, typer.Option("--clahe", help="CLAHE contrast correction.")] = False,
    equalize: Annotated[bool, typer.Option("--equalize", help="Global histogram equalisation.")] = False,
    clahe_clip: Annotated[float, typer.Option(help="CLAHE clip limit.")] = 2.0,
    clahe_grid: Annotated[int, typer.Option(help="CLAHE tiles per side.")] = 8,
    contrast_at: Annotated[str, typer.Option(help="source (papers' order) or target (faster).")] = "source",
    resize: Annotated[str, typer.Option(help="stretch or letterbox.")] = "stretch",
    lung_crop: Annotated[bool, typer.Option(help="Crop to the lung mask where one exists.")] = False,
    inpaint_artifacts: Annotated[bool, typer.Option(help="Paint out burned-in text, markers and thin frames "
                                                         "(outside the lung mask where one exists).")] = False,
    fast_decode: Annotated[bool, typer.Option(help="Reduced-scale JPEG decoding (faster).")] = False,
    max_pixels: Annotated[int, typer.Option(help="Refuse larger images.")] = DEFAULT_MAX_PIXELS,
    min_side: Annotated[int, typer.Option(help="Refuse images with a shorter side.")] = DEFAULT_MIN_SIDE,
    engine: Annotated[str, typer.Option(help="local (process pool) or spark.")] = "local",
    workers: Annotated[Optional[int], typer.Option(help="Processes / Spark cores (default: all).")] = None,
    spark_master: Annotated[Optional[str], typer.Option("--master", "--spark-master",
                                                        help="Spark master URL (default local[WORKERS]).")] = None,
    spark_conf: Annotated[Optional[list[str]], typer.Option("--conf", help="Spark setting KEY=VALUE (repeatable), "
                                                                           "e.g. spark.executor.memory=4g or "
                                                                           "spark.pyspark.python=/opt/venv/bin/python.")] = None,
    shard_size: Annotated[int, typer.Option(help="Images per shard.")] = DEFAULT_SHARD_SIZE,
    scheme: SchemeOpt = "3class",
    label_map: LabelMapOpt = None,
    keep_blank_view: Annotated[bool, typer.Option(help="Keep metadata rows with a blank view.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Delete existing shards in OUT first.")] = False,
) -> None:
    """Preprocess images into Parquet shards; resumable; bad files are skipped and reported."""
    from cxrlab.preprocess import PreprocessConfig, prepare

    with handle_errors():
        if clahe and equalize:
            raise typer.BadParameter("choose one of --clahe and --equalize")
        config = PreprocessConfig(size=size, resize=resize, contrast="clahe" if clahe else "equalize" if equalize else "none",  # type: ignore[arg-type]
                                  clahe_clip=clahe_clip, clahe_grid=clahe_grid, contrast_at=contrast_at,  # type: ignore[arg-type]
                                  lung_crop=lung_crop, fast_decode=fast_decode, max_pixels=max_pixels, min_side=min_side,
                                  artifacts="inpaint" if inpaint_artifacts else "keep")
        conf = dict(_key_value(item) for item in spark_conf or ())
        manifest = load(data if "://" in data else Path(data), scheme, label_map, keep_blank_view)
        with progress_bar(f"prepare ({engine})") as bar:
            task = bar.add_task(f"prepare ({engine})", total=len(manifest))
            summary = prepare(manifest, out, config, engine=engine, workers=workers, shard_size=shard_size,  # type: ignore[arg-type]
                              spark_master=spark_master, spark_conf=conf, overwrite=overwrite,
                              progress=lambda n: bar.advance(task, n))
        print_summary(summary)
        if config.artifacts == "inpaint":
            from cxrlab.preprocess.artifacts import plot_artifact_sample

            figure = plot_artifact_sample(manifest.table, summary.artifacts, config, Path(summary.out_dir) / "artifacts.png") \
                if "://" not in summary.out_dir else None
            console.print(f"artifacts painted out in {len(summary.artifacts)} of {summary.images} images "
                          f"({sum(summary.artifacts.values()):,} pixels)" + (f"; sample: {figure}" if figure else ""))


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"--conf takes KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()
