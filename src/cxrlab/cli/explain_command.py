"""``cxrlab explain``: Grad-CAM overlays and per-class probabilities for image files and folders."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from cxrlab.cli._common import DeviceOpt, PrecisionOpt, device_policy, console, err_console, exit_if_failed, handle_errors, progress_bar, shown


def explain_command(
    run: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM, ...) and folders (searched "
                                                      "recursively).")],
    out: Annotated[Path, typer.Option(help="Output folder for overlays, explanations.csv and explanations.json.")],
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam or layercam.")] = "gradcam",
    layer: Annotated[Optional[str], typer.Option(help="last (default: the backbone's last block), fine (the last block "
                                                      "with a finer grid) or a module name.")] = None,
    segmenter: Annotated[Optional[Path], typer.Option(help="Lung segmenter file, for models that use lung masks.")] = None,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "32",
) -> None:
    """Per-class probabilities, the class `predict` reports and a Grad-CAM heatmap on each image, drawn as one
    figure per image (research use only). Exit code 3 when some inputs could not be read (each is a row
    with its reason; every other image is written)."""
    from cxrlab.core.errors import ConfigError
    from cxrlab.data.images import find_images
    from cxrlab.core.run_folder import model_file
    from cxrlab.explain import explain_images

    with handle_errors(), device_policy(device, precision):
        files = find_images(images)
        if not files:
            raise ConfigError(f"no image files in {', '.join(map(str, images))} (looked by suffix and by content)")
        with progress_bar("explaining") as bar:
            task = bar.add_task("explaining", total=len(files))
            records = explain_images(model_file(run), files, out, method, layer,  # type: ignore[arg-type]
                                     progress=lambda n: bar.advance(task, n), segmenter=segmenter)
        failed = [r for r in records if "error" in r]
        for r in failed:
            err_console.print(f"[yellow]skipped[/] {shown(r['image'])}: {shown(r['error'])}", highlight=False)
        for r in records[:20]:
            if "error" not in r:
                probs = ", ".join(f"{k} {v:.2f}" for k, v in r["probabilities"].items())
                note = " [red](out of distribution)[/]" if r.get("ood") else ""
                console.print(f"{escape(r['image'])}: {r['predicted']} ({probs}){note} → {escape(r['overlay'])}",
                              highlight=False)
        console.print(f"{len(records) - len(failed)} image(s) explained, {len(failed)} skipped; wrote "
                      f"{Path(out) / 'explanations.csv'} and {Path(out) / 'explanations.json'}")
    exit_if_failed(len(failed), "input(s)")
