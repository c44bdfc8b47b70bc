"""``cxrlab predict``, ``cxrlab serve`` and ``cxrlab export``: a trained model as a screening tool."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cxrlab.cli._common import DeviceOpt, PrecisionOpt, device_policy, console, err_console, exit_if_failed, handle_errors, progress_bar, shown


def predict_command(
    model: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    inputs: Annotated[list[Path], typer.Argument(help="Image files (PNG, JPEG, DICOM, ...) and folders (searched recursively).")],
    out: Annotated[Path, typer.Option(help="Output folder: predictions.csv, predictions.json, overlays/.")],
    segmenter: Annotated[Optional[Path], typer.Option(help="Lung segmenter file, for models that use lung masks.")] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, hirescam or layercam.")] = "gradcam",
    overlays: Annotated[bool, typer.Option(help="Write a Grad-CAM overlay PNG per image.")] = True,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "32",
) -> None:
    """Per-class probabilities, the class at the model's operating point, an out-of-distribution flag and
    a Grad-CAM overlay for each image (research use only, not for clinical diagnosis). Exit code 3 when
    some inputs could not be read (each is a row with its reason; every other image is written)."""
    from cxrlab.core.errors import ConfigError
    from cxrlab.data.images import find_images
    from cxrlab.core.run_folder import model_file
    from cxrlab.explain.predict import predict_images

    with handle_errors(), device_policy(device, precision):
        files = find_images(inputs)
        if not files:
            raise ConfigError(f"no image files in {', '.join(map(str, inputs))} (looked by suffix and by content)")
        with progress_bar("screening") as bar:
            task = bar.add_task("screening", total=len(files))
            rows = predict_images(model_file(model), files, out, segmenter=segmenter, method=method,  # type: ignore[arg-type]
                                  overlays=overlays, progress=lambda n: bar.advance(task, n))
        skipped = [r for r in rows if "error" in r]
        flagged = [r for r in rows if r.get("ood")]
        for r in skipped:
            err_console.print(f"[yellow]skipped[/] {shown(r['image'])}: {shown(r['error'])}", highlight=False)
        for r in rows[:20]:
            if "error" not in r:
                probs = ", ".join(f"{k} {v:.2f}" for k, v in r["probabilities"].items())
                note = " [red](out of distribution)[/]" if r["ood"] else ""
                console.print(f"{shown(r['image'])}: {r['predicted']} ({probs}){note}", highlight=False)
        console.print(f"{len(rows) - len(skipped)} image(s) screened, {len(flagged)} flagged out of distribution, "
                      f"{len(skipped)} skipped; wrote {out / 'predictions.csv'} and {out / 'predictions.json'}")
    exit_if_failed(len(skipped), "input(s)")


def serve_command(
    model: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    segmenter: Annotated[Optional[Path], typer.Option(help="Lung segmenter file, for models that use lung masks.")] = None,
    max_upload_mb: Annotated[Optional[float], typer.Option(help="Larger uploads get 413 (default: 20).")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds per screening (queue included) before a 504 "
                                                          "(default: 30).")] = None,
    store_uploads: Annotated[Optional[Path], typer.Option(help="Keep accepted uploads in this folder (default: none kept).")] = None,
    compile: Annotated[bool, typer.Option(help="Compile the model at start-up (slower start, faster requests).")] = False,
    overlay_side: Annotated[Optional[int], typer.Option(help="Longest side of the returned overlay in pixels "
                                                             "(default: 512).")] = None,
    max_queue: Annotated[Optional[int], typer.Option(help="Requests screened or waiting at once; more get 503 "
                                                          "(default: 16).")] = None,
    body_timeout: Annotated[Optional[float], typer.Option(help="Seconds a request body may take to arrive before a "
                                                               "408 (default: 30).")] = None,
    device: DeviceOpt = "auto", precision: PrecisionOpt = "32",
) -> None:
    """Web service and page: POST /predict, GET /health, GET /model, the page at /, docs at /docs
    (research use only, not for clinical diagnosis)."""
    from cxrlab.core.optional import require
    from cxrlab.core.run_folder import model_file

    with handle_errors(), device_policy(device, precision):  # the allocator tuned there
        for module in ("fastapi", "uvicorn", "multipart"):
            require(module, "cxrlab serve")
        import uvicorn

        from cxrlab.serve import ServeSettings, create_app

        given = {"max_upload_mb": max_upload_mb, "timeout_s": timeout, "overlay_side": overlay_side,
                 "max_queue": max_queue, "body_timeout_s": body_timeout}  # the others: ServeSettings' defaults
        settings = ServeSettings(store_uploads=store_uploads, segmenter=segmenter, compile=compile,
                                 **{k: v for k, v in given.items() if v is not None})
        app = create_app(model_file(model), settings)
        console.print(f"serving {model} on http://{host}:{port}/ (API docs at /docs); Ctrl+C stops")
        from cxrlab.serve.limits import server_options

        # the headers of a request get the body's time limit too
        uvicorn.run(app, host=host, port=port, log_level="info", **server_options(settings.body_timeout_s))


def export_command(
    model: Annotated[Path, typer.Argument(help="Run directory (with model.pt) or a model file.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write (probabilities out, any batch size).")],
    check: Annotated[bool, typer.Option(help="Compare onnxruntime's probabilities with PyTorch's on random inputs "
                                             "(or on --image files).")] = True,
    images: Annotated[Optional[list[Path]], typer.Option("--image", help="Image file to compare on, prepared as "
                                                                         "predict prepares it (repeatable).")] = None,
    segmenter: Annotated[Optional[Path], typer.Option(help="Lung segmenter file, for --image with a model that uses "
                                                           "lung masks.")] = None,
) -> None:
    """Export a model to ONNX, for onnxruntime or any ONNX runtime; checks that the probabilities match."""
    import torch

    from cxrlab.core.optional import require
    from cxrlab.models.onnx_export import export_onnx, onnx_difference
    from cxrlab.models.predictor import Predictor

    with handle_errors():
        for module in ("onnx", "onnxscript", "onnxruntime"):
            require(module, "cxrlab export --onnx")
        predictor = Predictor(model, segmenter=segmenter)  # the path every door takes: its inputs, for the check
        export_onnx(predictor.model, onnx, predictor.preprocess)
        console.print(f"wrote {onnx}")
        if check:
            inputs = None
            if images:
                predictor.require_segmenter()
                inputs = torch.cat([predictor.prepare_image(predictor.decode_file(f), f).x for f in images])
            difference = onnx_difference(predictor.model, onnx, inputs=inputs)
            on = f"{len(images)} image(s)" if images else "random inputs"
            console.print(f"largest probability difference onnxruntime vs PyTorch on {on}: {difference:.2e}")
