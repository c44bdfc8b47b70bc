"""``evaluate``: a trained run on the test side of its split (or other data) → report and metrics.json."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from cxrlab.core.run_folder import METRICS, SPLITS
from cxrlab.core.defaults import DEFAULT_N_BOOT
from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.data import load_source
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.data.manifest import SkippedItem, read_table, resolve_paths
from cxrlab.data.mask_provenance import IN_SAMPLE, guard_masks, mask_uses
from cxrlab.data.seen import REASONS, merge_records, seen_record, split_seen
from cxrlab.evaluate.bootstrap import bootstrap_cis
from cxrlab.evaluate.calibration import apply_temperature, expected_calibration_error, fit_temperature, reliability_bins
from cxrlab.evaluate.metrics import binary_view, compute_metrics, interval_metrics
from cxrlab.evaluate.multilabel import multilabel_figures, multilabel_results, render_multilabel
from cxrlab.evaluate.plots import plot_confusion, plot_reliability, plot_roc_pr
from cxrlab.evaluate.report import render_html, render_markdown
from cxrlab.models.predictor import Predictions, Predictor
from cxrlab.evaluate.operating_point import OperatingPoint, choose_operating_point
from cxrlab.evaluate.plots import plot_curves

log = logging.getLogger(__name__)
CI_KEYS = ("sensitivity", "specificity", "roc_auc", "pr_auc")


def _frames(run: Path, data: Path | None, splits: Path | None,
            scheme: str) -> tuple[pd.DataFrame, pd.DataFrame | None, str, list[SkippedItem]]:
    """``(test rows, validation rows or None, which side, inputs left out while reading them)``."""
    split_file = splits or (run / SPLITS if run.is_dir() and (run / SPLITS).exists() else None)
    if data is not None:
        source = load_source(data, scheme=scheme)
        val = load_source(split_file, scheme=scheme).table if split_file else None
        return (source.table, (val[val["split"] == "val"] if val is not None else None), f"all of {data}",
                list(source.skipped))
    if split_file is None:
        raise ConfigError(f"{run}: no splits.csv to take the test side from; pass --data or --splits")
    source = load_source(split_file, scheme=scheme)  # runs the leakage guard
    frame = source.table
    test = frame[frame["split"] == "test"]
    if test.empty:
        raise ConfigError(f"{split_file}: the test side is empty (a cross-validated run trains on every image of "
                          "its split: evaluate it on other images with --data)")
    raw = resolve_paths(read_table(split_file), split_file.parent)  # the side of each row left out
    side_of = dict(zip(raw["image"], raw["split"], strict=True)) if "split" in raw.columns else {}
    skipped = [item for item in source.skipped if side_of.get(item.image) == "test"]
    return test, frame[frame["split"] == "val"], f"test side of {split_file}", skipped


def _seen(run: Path, payload: dict) -> dict | None:
    """What the model trained or validated on: its file's record, and for a run directory also the
    train and validation rows of the run's own ``splits.csv`` (runs saved before files kept a record)."""
    record = (payload.get("extra") or {}).get("seen")
    own = run / SPLITS if run.is_dir() else None
    if own is not None and own.exists():
        table = resolve_paths(read_table(own), own.parent)
        if {"split", "patient_id", "image"} <= set(table.columns):
            rows = table[table["split"].isin(["train", "val"])]
            record = merge_records(record, seen_record(rows, content=not (record or {}).get("content")))
    return record


def _unseen(frame: pd.DataFrame, record: dict | None, run: Path,
            side: str) -> tuple[pd.DataFrame, list[tuple[str, str]], int]:
    """``frame`` without the rows the model has seen, ``(image, reason)`` of those rows, and how many
    of them are copies or near-copies (by content) of its training and validation images.

    Raises:
        ConfigError: the model has seen every row (an in-sample "test").
    """
    if frame.empty:
        raise ConfigError(f"{run}: nothing to evaluate in {side.removeprefix('all of ')}: no image in it (an empty "
                          "table, or every row left out: see the reasons above)")
    unseen, seen = split_seen(frame, record)
    copies = int(seen["seen_as"].isin(["copy", "near copy"]).sum()) if len(seen) else 0
    if unseen.empty:
        how = f", {copies} of them as copies under other names" if copies else ""
        raise ConfigError(f"{run}: the model trained or validated on every image of the {side} ({len(frame)} images"
                          f"{how}): evaluate it on patients it has not seen")
    return unseen, [(i, REASONS[why]) for i, why in zip(seen["image"], seen["seen_as"], strict=True)], copies


def _operating_points(val, test, payload: dict, positive: str) -> tuple[list[dict], str]:
    """Operating points chosen on the validation side, else the one in the model file (chosen on its
    own validation or out-of-fold data), applied to the test data; never chosen on the data scored."""
    yb, pb = binary_view(test.y_true, test.probs, test.class_names, positive)
    if val is None:
        stored = ((payload.get("extra") or {}).get("screening") or {}).get("operating_point")
        if not stored or stored.get("positive") != positive:
            return [], "no data (none reported: no validation side, and the model file keeps no operating point)"
        point = OperatingPoint(float(stored["threshold"]), stored.get("method", "youden"))
        return [point.apply(yb, pb)], f"the model's {stored.get('chosen_on', 'validation')} (kept in its file)"
    yv, pv = binary_view(val.y_true, val.probs, val.class_names, positive)
    points = []
    for method, target in (("youden", None), ("sensitivity", 0.95)):
        try:
            point = choose_operating_point(yv, pv, method, target or 0.95)
        except ConfigError as err:
            log.warning("operating point %s: %s", method, err)
            continue
        points.append(point.apply(yb, pb))
    return points, "validation data"


def _confidence_intervals(p: Predictions, n_boot: int, seed: int, positive: str) -> dict:
    """All CIs of the report from one set of patient-level bootstrap replicates."""
    def statistics(rows: np.ndarray) -> dict[str, float | None]:
        m = interval_metrics(p.y_true[rows], p.probs[rows], p.class_names)
        values = {"accuracy": m["accuracy"], "auc_macro": m["auc_macro"]}
        for name in p.class_names:
            values.update({f"{name}|{k}": m["per_class"][name][k] for k in CI_KEYS})
        return values

    cis = bootstrap_cis(statistics, p.frame["patient_id"].to_numpy(), n_boot, seed)
    per_class = {name: {k: cis[f"{name}|{k}"] for k in CI_KEYS} for name in p.class_names}
    return {"accuracy": cis["accuracy"], "auc_macro": cis["auc_macro"], "per_class": per_class,
            "auc_covid": per_class[positive]["roc_auc"]}


def _per_source(p: Predictions) -> dict:
    out = {}
    for source, rows in p.frame.groupby("source").groups.items():
        idx = np.asarray(list(rows))
        m = compute_metrics(p.y_true[idx], p.probs[idx], p.class_names)
        covid = m["per_class"].get(POSITIVE_CLASS, {})
        out[str(source)] = {"n": m["n"], "accuracy": m["accuracy"], "auc_macro": m["macro"]["roc_auc"],
                            "auc_covid": covid.get("roc_auc"), "f1_macro": m["macro"]["f1"],
                            "classes": p.frame.loc[idx, "label"].value_counts().sort_index().to_dict()}
    return out


def _warnings(p: Predictions, per_source: dict, seen: int = 0, copies: int = 0, masks: str | None = None) -> list[str]:
    notes = [f"MASKS FAIL THE PROVENANCE RULE (evaluated anyway, --allow-mixed-masks): {masks}"] if masks else []
    if seen:
        how = (f" ({copies} of them copies or near-copies of its training or validation images under other names "
               "and patient ids)") if copies else ""
        notes.append(f"{seen} image(s) left out: the model trained or validated on their patients (or on the "
                     f"images themselves){how}, so they are not test data; the figures are on the other images only")
    single = [s for s, v in per_source.items() if len(v["classes"]) == 1]
    if len(per_source) > 1 and single:
        notes.append(f"source(s) {', '.join(single)} hold a single class in this test set: a model can score by "
                     "recognising the source instead of the disease; check cross-source results before trusting these figures")
    if len(set(p.frame["patient_id"])) < 30:
        notes.append(f"only {len(set(p.frame['patient_id']))} patients: confidence intervals are wide")
    return notes


def _guard_model_masks(predictor: Predictor, frames: list[pd.DataFrame | None], origin: str, allow: bool) -> str | None:
    """The training rule for masks, applied to the images a mask-using model is evaluated on when their
    masks come from the table (with a segmenter every mask has one origin): refused, or with ``allow``
    returned for the report."""
    pre = predictor.preprocess
    settings = mask_uses(pre.lung_crop, pre.artifacts == "inpaint", predictor.model.lung_attention)
    if not settings or predictor.segmenter is not None:
        return None
    present = [f.assign(split=side) for f, side in zip(frames, ("test", "val")) if f is not None and len(f)]
    if not present:
        return None
    rows = pd.concat(present)  # every evaluated image is held out: a mask predicted in-sample fails the rule
    return guard_masks(rows, f"this model's {settings}", origin, allow,
                       "pass --segmenter SEGMENTER so every image's mask comes from one segmenter (as in predict), "
                       "or give masks of one origin for every image")


def evaluate_run(run: str | Path, out: str | Path, data: str | Path | None = None, splits: str | Path | None = None,
                 n_boot: int = DEFAULT_N_BOOT, seed: int = 0, segmenter: str | Path | None = None,
                 allow_mixed_masks: bool = False) -> dict:
    """Evaluate a trained model and write ``report.html``, ``report.md``, ``metrics.json``,
    ``predictions.csv`` and figures.

    The images go through :class:`cxrlab.models.predictor.Predictor`, as in ``predict``: the
    ``predicted`` column is the class ``predict`` reports (the model file's decision rule).

    Args:
        run: A run directory (``model.pt``, ``splits.csv``, ``metrics.csv``) or a model file.
        out: Output folder.
        data: Evaluate these images instead (any input ``prepare`` takes); all of them are test data.
        splits: A split file to take the test side (and validation side) from.
        n_boot: Bootstrap replicates for the CIs.
        seed: Seed of the bootstrap.
        segmenter: A lung segmenter file: every image's mask (for a model whose preprocessing uses
            one) comes from it, as in ``predict``, instead of the table's ``mask`` column.
        allow_mixed_masks: Go on when the table's masks fail the provenance rule training applies
            (:func:`cxrlab.data.mask_provenance.mask_problem`): a warning, and ``mask_problem`` in the results.

    Returns:
        The results dict also written to ``metrics.json``.

    Raises:
        ConfigError: a mask-using model on masks that fail the rule (without ``allow_mixed_masks``).
    """
    run, out = Path(run), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    predictor = Predictor(run, segmenter=segmenter)
    model, payload = predictor.model, predictor.payload
    scheme = model_scheme(model)
    test_frame, val_frame, side, unread = _frames(run, Path(data) if data else None, Path(splits) if splits else None,
                                                  scheme)
    test_frame, seen, copies = _unseen(test_frame, _seen(run, payload), run, side)
    masks = _guard_model_masks(predictor, [test_frame, val_frame], str(data or splits or run), allow_mixed_masks)
    test = predictor.predict_frame(test_frame, out / "prepared-test")
    val = predictor.predict_frame(val_frame, out / "prepared-val") if val_frame is not None and len(val_frame) else None
    if model.multilabel:
        return _evaluate_multilabel(run, out, payload, test, val, side, unread, seen, copies, n_boot, seed, masks)
    metrics = compute_metrics(test.y_true, test.probs, test.class_names)
    per_source = _per_source(test)
    positive = POSITIVE_CLASS
    ci = _confidence_intervals(test, n_boot, seed, positive)
    points, chosen_on = _operating_points(val, test, payload, positive)
    binary = {"positive": positive, "roc_auc": metrics["per_class"][positive]["roc_auc"],
              "roc_auc_ci": ci["auc_covid"],  # one-vs-rest AUC of COVID-19 = the binary view's AUC
              "chosen_on": chosen_on, "operating_points": points}
    calibration = {"ece": expected_calibration_error(test.y_true, test.probs), "bins": reliability_bins(test.y_true, test.probs)}
    if val is not None:
        temperature = fit_temperature(val.logits, val.y_true)
        calibration.update(temperature=temperature,
                           ece_calibrated=expected_calibration_error(test.y_true, apply_temperature(test.logits, temperature)))
    results = {
        "model": {"file": str(run), "backbone": payload["backbone"], "fine_tune": payload["fine_tune"],
                  "class_names": list(model.class_names)},
        "side": side, "patients": int(test.frame["patient_id"].nunique()), "metrics": metrics,
        "ci": ci, "n_boot": n_boot, "per_source": per_source,
        "binary": binary, "calibration": calibration,
        "skipped": [*((item.image, item.reason) for item in unread), *test.skipped, *seen],
        "seen_left_out": len(seen), "seen_copies": copies,
        "unreadable": sum(item.unreadable for item in unread) + len(test.skipped),
        "warnings": _warnings(test, per_source, len(seen), copies, masks), "mask_problem": masks,
    }
    figures = {"confusion matrices": plot_confusion(metrics["confusion_matrix"], test.class_names, out / "confusion.png"),
               "ROC and PR curves": plot_roc_pr(test.y_true, test.probs, test.class_names, out / "roc_pr.png"),
               "reliability diagram": plot_reliability(calibration["bins"], calibration["ece"], out / "reliability.png")}
    return _finish(run, out, test, results, figures)


def _finish(run: Path, out: Path, test: Predictions, results: dict, figures: dict) -> dict:
    """The training curves, ``predictions.csv`` (probabilities, ``predicted``: the class ``predict``
    reports, masks for the explanation layer) and the report files."""
    if run.is_dir() and (curves := plot_curves(run / METRICS, out / "training_curves.png")):
        figures["training curves"] = curves
    predictions = test.frame[["image", "patient_id", "source", "label"]].copy()
    for i, name in enumerate(test.class_names):
        predictions[name] = test.probs[:, i]
    predictions["predicted"] = test.predicted
    predictions["most_probable"] = [test.class_names[i] for i in test.probs.argmax(1)]
    for column in ("mask", "mask_source", IN_SAMPLE, "lesion"):  # lung and finding masks, for the explanation layer
        predictions[column] = test.frame[column].fillna("") if column in test.frame.columns else ""
    predictions.to_csv(out / "predictions.csv", index=False)
    results["figures"] = {name: str(path) for name, path in figures.items()}
    write_report(results, out)
    return results


def model_scheme(model) -> str:
    """The class scheme a model was trained with, from its classes."""
    if model.multilabel:
        return "findings:" + ",".join(model.class_names)
    return "binary" if len(model.class_names) == 2 else "3class"


def _evaluate_multilabel(run: Path, out: Path, payload: dict, test, val, side: str, unread,
                         seen: list[tuple[str, str]], copies: int,
                         n_boot: int, seed: int, masks: str | None = None) -> dict:
    """:func:`evaluate_run` for a multi-label model (:mod:`cxrlab.evaluate.multilabel`)."""
    results = {
        "model": {"file": str(run), "backbone": payload["backbone"], "fine_tune": payload["fine_tune"],
                  "class_names": list(test.class_names), "multilabel": True},
        "side": side, "patients": int(test.frame["patient_id"].nunique()), "n_boot": n_boot,
        **multilabel_results(test, val, payload, n_boot, seed),
        "skipped": [*((item.image, item.reason) for item in unread), *test.skipped, *seen],
        "seen_left_out": len(seen), "seen_copies": copies,
        "unreadable": sum(item.unreadable for item in unread) + len(test.skipped),
        "warnings": _warnings(test, {}, len(seen), copies, masks), "mask_problem": masks,  # a source's class mix: see its per-finding figures
    }
    return _finish(run, out, test, results, multilabel_figures(test, out))


def write_report(results: dict, out: Path) -> None:
    """(Re)write ``metrics.json``, ``report.md`` and ``report.html`` from a results dict.

    Layers above ``evaluate`` (explanations) add ``extra_tables`` and ``figures`` to the
    results and call this again.
    """
    figures = {name: Path(path) for name, path in results.get("figures", {}).items()}
    atomic_write_text(out / "metrics.json", json.dumps(results, indent=2, default=float) + "\n")
    if results.get("task") == "multilabel":
        lists = [("Images not evaluated", [f"{i}: {r}" for i, r in results["skipped"]])] if results["skipped"] else []
        markdown, html = render_multilabel(results, figures, lists)
    else:
        markdown, html = render_markdown(results, figures), render_html(results, figures)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", html)
