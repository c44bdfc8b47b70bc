"""``cxrlab synth | manifest | split | audit``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from cxrlab.cli._common import console, handle_errors, parse_label_map, parse_ratios, progress_bar, shown
from cxrlab.core.defaults import DEFAULT_MAX_DISTANCE
from cxrlab.core.io import atomic_write_text

if TYPE_CHECKING:
    from cxrlab.data.manifest import Manifest

DataOpt = Annotated[Path, typer.Option("--data", help="Folder tree, manifest, metadata CSV or splits.csv.")]
SchemeOpt = Annotated[str, typer.Option("--scheme", help="Class scheme: 3class, binary, or multi-label: chestxray14, "
                                                           "chexpert5, findings:A,B,C.")]
UncertainOpt = Annotated[Optional[list[str]], typer.Option(
    "--uncertain", help="Multi-label: what an uncertain (-1) label becomes: ignore (default; left out of loss and "
                        "metrics), ones or zeros; NAME=POLICY for one finding (repeatable).")]
BlankOpt = Annotated[str, typer.Option(help="Multi-label: what a blank label cell becomes: zeros (default), ones "
                                            "or ignore.")]
LabelMapOpt = Annotated[Optional[list[str]], typer.Option(
    "--label-map", help="Override a raw label: RAW=CLASS or RAW=drop (repeatable).")]


def show_skipped(manifest_skipped, limit: int = 20) -> None:
    """Print inputs left out while reading: a count per reason, then the first few."""
    if not manifest_skipped:
        return
    from collections import Counter

    console.print(f"[yellow]{len(manifest_skipped)} input(s) left out:[/]")
    reasons = Counter(item.reason for item in manifest_skipped)
    if len(reasons) > 1 or len(manifest_skipped) > limit:
        for reason, count in reasons.most_common(8):
            console.print(f"  {count} × {shown(reason)}", highlight=False, soft_wrap=True)
    for item in list(manifest_skipped)[:limit]:
        console.print(f"  {shown(item.image)}: {shown(item.reason)}", highlight=False, soft_wrap=True)
    if len(manifest_skipped) > limit:
        console.print(f"  ... and {len(manifest_skipped) - limit} more")


def load(data: Path | str, scheme: str, label_map: list[str] | None, keep_blank_view: bool = False,
         uncertain: list[str] | None = None, blank: str = "zeros") -> Manifest:
    """Load any input with the CLI's options."""
    from cxrlab.data import load_source
    from cxrlab.data.findings import FindingPolicy

    return load_source(data, scheme=scheme, label_map=parse_label_map(label_map),  # type: ignore[arg-type]
                       keep_blank_view=keep_blank_view, policy=FindingPolicy.parse(uncertain or (), blank))


def synth(out: Annotated[Path, typer.Option(help="Output folder.")] = Path("data/phantoms"),
          patients: Annotated[int, typer.Option(help="Number of fake patients.")] = 60,
          size: Annotated[int, typer.Option(help="Image side in pixels.")] = 256,
          seed: Annotated[int, typer.Option(help="Seed.")] = 0) -> None:
    """Generate the synthetic phantom data set (images, lung masks, lesion masks, manifest.csv)."""
    from cxrlab.data import generate_phantoms

    with handle_errors():
        path = generate_phantoms(out, n_patients=patients, size=size, seed=seed)
        console.print(f"wrote {path}")


def manifest(data: Annotated[list[Path], typer.Option("--data", help="Folder tree, manifest, metadata CSV or public "
                                                                     "collection; repeat to merge several.")],
             out: Annotated[Path, typer.Option(help="Output .csv or .parquet.")],
             scheme: SchemeOpt = "3class", label_map: LabelMapOpt = None,
             keep_blank_view: Annotated[bool, typer.Option(help="Keep metadata rows with a blank view.")] = False,
             uncertain: UncertainOpt = None, blank: BlankOpt = "zeros",
             identity: Annotated[Optional[Path], typer.Option(help="Identity table (patient_id, same_as) joining "
                                                                   "one person's ids across merged collections, e.g. "
                                                                   "RSNA's to ChestX-ray14's.")] = None) -> None:
    """Read any inputs and write them as one manifest table (CSV or Parquet): folder trees, metadata CSVs,
    or public collections' folders (ChestX-ray14, CheXpert, MIMIC-CXR-JPG, PadChest, RSNA, VinDr-CXR,
    COVIDx), with their official split in official_split; then the labels per source and finding, flagged
    where they differ from the collection's own figures."""
    from cxrlab.data import write_table
    from cxrlab.data.findings import is_multilabel
    from cxrlab.data.label_report import label_report
    from cxrlab.data.manifest import write_table_info
    from cxrlab.data.merge import merge_manifests, read_identity

    with handle_errors():
        parts = [load(d, scheme, label_map, keep_blank_view, uncertain, blank) for d in data]
        m, merged = merge_manifests(parts, read_identity(identity) if identity else None)
        report = label_report(m, is_multilabel(scheme))
        write_table(m.table, out)
        labels = write_table(report, out.with_name(out.stem + "_labels.csv"))
        write_table_info(out, {"scheme": scheme, "from": [str(d) for d in data] if len(data) > 1 else str(data[0]),
                               "identity": str(identity) if identity else None,
                               "flagged": [f"{r.source}/{r.finding}" for r in report.itertuples() if r.flagged]})
        show_skipped(m.skipped)
        if len(data) > 1 or identity:
            console.print(f"merged {', '.join(f'{k} {v}' for k, v in merged['images'].items())}; "
                          f"{merged['identity_mapped']} image(s) given another patient id by the identity table; "
                          f"{len(merged['shared_patients'])} patient(s) with images from two or more sources",
                          highlight=False)
        console.print(_labels_table(report))
        for row in report[report["flagged"]].itertuples():
            console.print(f"[yellow]check {shown(row.source)} / {shown(row.finding)}:[/] present on {row.share:.1%} of "
                          f"{row.images} images, {row.reference:.1%} in the collection as released (more than half "
                          "the reference and 3 standard errors apart: a lost sub-type, a wrong column or a policy?)",
                          highlight=False, soft_wrap=True)
        console.print(f"wrote {out}: {len(m)} images, {m.table['patient_id'].nunique()} patients, "
                      f"classes {m.class_counts()}; labels per source in {labels}")


def _labels_table(report) -> Table:
    table = Table(title="labels per source")
    for col in ("source", "finding", "present", "absent", "unknown", "share", "as released"):
        table.add_column(col, justify="left" if col in ("source", "finding") else "right")
    for r in report.itertuples():
        released = "" if r.reference != r.reference else f"{r.reference:.1%}"  # NaN: no reference
        table.add_row(shown(r.source), shown(r.finding), str(r.present), str(r.absent), str(r.unknown),
                      f"{r.share:.1%}", ("[yellow]" + released + " ⚑[/]") if r.flagged else released)
    return table


def _counts_table(info: dict) -> Table:
    table = Table(title="split")
    for col in ("side", "images", "patients", "classes", "sources"):
        table.add_column(col)
    for side, c in info["counts"].items():
        table.add_row(side, str(c["images"]), str(c["patients"]),
                      ", ".join(f"{k} {v}" for k, v in c["classes"].items()),
                      ", ".join(f"{k} {v}" for k, v in c["sources"].items()))
    return table


def split(data: DataOpt, out: Annotated[Path, typer.Option(help="Output folder for splits.csv.")],
          ratios: Annotated[Optional[str], typer.Option(help="train,val,test shares: 0.8,0.1,0.1 | 8:1:1 | 80:20 "
                                                             "(default: 0.8,0.1,0.1).")] = None,
          folds: Annotated[Optional[int], typer.Option(help="Patient-grouped CV folds over train (0: none) "
                                                            "(default: 5).")] = None,
          seed: Annotated[Optional[int], typer.Option(help="Seed (default: 0).")] = None,
          scheme: SchemeOpt = "3class", label_map: LabelMapOpt = None,
          balance: Annotated[Optional[str], typer.Option(help="none | undersample | weights (default: none).")] = None,
          balance_scope: Annotated[Optional[str], typer.Option(help="Undersample the train side only, or all "
                                                                    "(default: train).")] = None,
          dedupe: Annotated[str, typer.Option(help="regroup: patients with near-duplicate images form one group, "
                                                   "kept on one side | none.")] = "regroup",
          loso: Annotated[bool, typer.Option(help="Also write leave-one-source-out splits.")] = False,
          official: Annotated[bool, typer.Option(help="Keep the collection's published split (ChestX-ray14, CheXpert, "
                                                      "MIMIC-CXR, VinDr-CXR, COVIDx); validation from its training "
                                                      "patients at the ratios' share when it has none.")] = False,
          keep_blank_view: Annotated[bool, typer.Option(help="Keep metadata rows with a blank view.")] = False,
          uncertain: UncertainOpt = None, blank: BlankOpt = "zeros") -> None:
    """Split by patient (stratified by class) into train/val/test with CV folds; write splits.csv."""
    from cxrlab.data import SplitConfig, leave_one_source_out, make_splits, write_splits

    with handle_errors():
        m = load(data, scheme, label_map, keep_blank_view, uncertain, blank)
        show_skipped(m.skipped)
        table, group_column = m.table, "patient_id"
        if dedupe == "regroup":
            table, group_column = _regroup(table), "group_id"
        elif dedupe != "none":
            raise typer.BadParameter("--dedupe must be none or regroup")
        given = {"ratios": parse_ratios(ratios) if ratios else None, "folds": folds, "seed": seed, "balance": balance,
                 "balance_scope": balance_scope}  # the others: SplitConfig's defaults, defined once there
        config = SplitConfig(**{k: v for k, v in given.items() if v is not None}, group_column=group_column,
                             official=official)
        frame, info = make_splits(table, m.class_names, config)
        info["scheme"] = scheme
        path = write_splits(frame, info, out)
        console.print(_counts_table(info))
        if "class_weights" in info:
            console.print(f"class weights (train): {info['class_weights']}")
        console.print(f"wrote {path}")
        if loso:
            for source, loso_frame in leave_one_source_out(table, m.class_names, config.ratios[1], config.seed,
                                                           group_column).items():
                console.print(f"wrote {write_splits(loso_frame, {'held_out_source': source}, out / 'loso' / source)}")


def _regroup(table):
    """Add ``group_id``: patients linked by near-duplicate images share one group; say what was merged."""
    from cxrlab.data.duplicates import regroup_duplicates

    with progress_bar("hashing") as bar:
        task = bar.add_task("hashing", total=len(table))
        table, merged = regroup_duplicates(table, progress=lambda n: bar.advance(task, n))
    console.print(f"near-duplicates (pHash distance <= {merged['max_distance']}, thumbnail correlation >= "
                  f"{merged['min_correlation']}): {merged['pairs']} pair(s), "
                  f"{merged['patients_joined']} patient(s) joined into {len(merged['groups'])} group(s), the largest "
                  f"{merged['largest_group']} image(s)"
                  + (f", e.g. {' + '.join(merged['groups'][0])}" if merged["groups"] else ""), highlight=False)
    return table


def audit(splits: Annotated[Path, typer.Argument(help="splits.csv (or its folder).")],
          out: Annotated[Optional[Path], typer.Option(help="Folder for audit.md/audit.json (default: next to splits).")] = None,
          max_distance: Annotated[int, typer.Option(help="pHash Hamming distance up to which two images are candidate copies (a thumbnail correlation >= 0.98 confirms them).")] = DEFAULT_MAX_DISTANCE,
          fix: Annotated[Optional[str], typer.Option(help="drop | regroup: also write a corrected splits.csv in OUT/fixed.")] = None,
          workers: Annotated[int, typer.Option(help="Processes for hashing.")] = 1) -> None:
    """Split-integrity report: patients, class and source mix per side, near-duplicates across sides and sources."""
    from cxrlab.data import audit_splits, dedupe_splits, read_splits, write_splits
    from cxrlab.data.audit import DedupeMode

    with handle_errors():
        frame = read_splits(splits)
        out = out or (splits if splits.is_dir() else splits.parent)
        with progress_bar("hashing") as bar:
            task = bar.add_task("hashing", total=len(frame))
            report = audit_splits(frame, max_distance, workers, progress=lambda n: bar.advance(task, n))
        atomic_write_text(out / "audit.md", report.to_markdown())
        atomic_write_text(out / "audit.json", json.dumps(report.to_dict(), indent=2, default=str) + "\n")
        console.print(report.to_markdown(), highlight=False)
        console.print(f"wrote {out / 'audit.md'} and {out / 'audit.json'}")
        if fix:
            if fix not in ("drop", "regroup"):
                raise typer.BadParameter("--fix must be drop or regroup")
            mode: DedupeMode = fix  # type: ignore[assignment]
            fixed = dedupe_splits(frame, report, mode)
            path = write_splits(fixed, {"fixed_by": fix, "from": str(splits), "max_distance": max_distance},
                                out / "fixed")
            console.print(f"wrote {path} ({len(frame) - len(fixed)} image(s) dropped)")
