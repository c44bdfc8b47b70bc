"""``cxrlab explain``: Grad-CAM overlays and per-class probabilities for image files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.cli._common import console, handle_errors


def explain_command(
    run: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    images: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM, ...).")],
    out: Annotated[Path, typer.Option(help="Output folder for overlays and explanations.json.")],
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam or layercam.")] = "gradcam",
    layer: Annotated[Optional[str], typer.Option(help="last (default: the backbone's last block), fine (the last block "
                                                      "with a finer grid) or a module name.")] = None,
) -> None:
    """Per-class probabilities and a Grad-CAM heatmap on each image (research use only)."""
    from cxrlab.evaluate.predictions import resolve_model_path
    from cxrlab.explain import explain_images

    with handle_errors():
        records = explain_images(resolve_model_path(run), [str(p) for p in images], out, method, layer)  # type: ignore[arg-type]
        for r in records:
            if "error" in r:
                console.print(f"[yellow]skipped[/] {r['image']}: {r['error']}", highlight=False)
            else:
                probs = ", ".join(f"{k} {v:.2f}" for k, v in r["probabilities"].items())
                console.print(f"{r['image']}: {r['predicted']} ({probs}) → {r['overlay']}", highlight=False)
        console.print(f"wrote {Path(out) / 'explanations.json'}")
