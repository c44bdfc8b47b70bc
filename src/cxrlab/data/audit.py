"""Split-integrity audit: who is on which side, and which images repeat across sides or sources."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from cxrlab.core.defaults import DEFAULT_MAX_DISTANCE, DEFAULT_MIN_CORRELATION
from cxrlab.data.duplicates import (Signatures, compute_signatures, duplicate_groups, largest_group,
                                    near_duplicate_pairs, thumb_correlation, warn_if_chained)
from cxrlab.core.errors import LeakageError
from cxrlab.data.splits import SIDES, check_no_leakage, split_counts

DedupeMode = Literal["drop", "regroup"]


@dataclass(frozen=True)
class AuditReport:
    """What :func:`audit_splits` found.

    Attributes:
        counts: Per side: images, patients, images per class and per source.
        pairs: Near-duplicate pairs as rows ``image_a, image_b, distance, correlation, side_a,
            side_b, source_a, source_b, cross_side, cross_source``.
        groups: Duplicate-group label per row of the audited table.
        leakage: ``None`` when no patient straddles sides, else the guard's message.
    """

    counts: dict
    pairs: pd.DataFrame
    groups: np.ndarray
    leakage: str | None = None
    max_distance: int = DEFAULT_MAX_DISTANCE
    notes: list[str] = field(default_factory=list)
    min_correlation: float = DEFAULT_MIN_CORRELATION

    @property
    def largest_group(self) -> int:
        """Images in the largest duplicate group."""
        return largest_group(self.groups)

    @property
    def cross_side(self) -> pd.DataFrame:
        """Pairs whose two images are on different sides (leakage by copy)."""
        return self.pairs[self.pairs["cross_side"]]

    @property
    def cross_source(self) -> pd.DataFrame:
        """Pairs whose two images come from different sources (re-published copies)."""
        return self.pairs[self.pairs["cross_source"]]

    def to_dict(self) -> dict:
        """JSON-ready summary (pairs as records)."""
        return {"counts": self.counts, "leakage": self.leakage, "max_distance": self.max_distance,
                "min_correlation": self.min_correlation, "near_duplicate_pairs": int(len(self.pairs)),
                "largest_group": self.largest_group,
                "cross_side_pairs": int(len(self.cross_side)),
                "cross_source_pairs": int(len(self.cross_source)),
                "pairs": self.pairs.to_dict(orient="records"), "notes": self.notes}

    def to_markdown(self) -> str:
        """Human-readable report."""
        lines = ["# Split-integrity audit", ""]
        lines += ["## Leakage guard", "", f"- {self.leakage or 'OK: every patient is on exactly one side.'}", ""]
        lines += ["## Sides", "", "| side | images | patients |", "|---|---:|---:|"]
        lines += [f"| {s} | {c['images']} | {c['patients']} |" for s, c in self.counts.items()]
        for key, title in (("classes", "Class mix"), ("sources", "Source mix")):
            names = sorted({n for c in self.counts.values() for n in c[key]})
            lines += ["", f"## {title} per side", "", "| side | " + " | ".join(names) + " |",
                      "|---|" + "---:|" * len(names)]
            for side, c in self.counts.items():
                total = max(c["images"], 1)
                cells = [f"{c[key].get(n, 0)} ({100 * c[key].get(n, 0) / total:.0f}%)" for n in names]
                lines.append(f"| {side} | " + " | ".join(cells) + " |")
        lines += ["", f"## Near-duplicates (pHash distance <= {self.max_distance}, thumbnail correlation >= "
                  f"{self.min_correlation})", "",
                  f"- pairs: {len(self.pairs)}; across sides: {len(self.cross_side)}; "
                  f"across sources: {len(self.cross_source)}; largest group: {self.largest_group} image(s)"]
        shown = self.pairs[self.pairs["cross_side"] | self.pairs["cross_source"]].head(50)
        if len(shown):
            lines += ["", "| image A | side | source | image B | side | source | distance | correlation |",
                      "|---|---|---|---|---|---|---:|---:|"]
            lines += [f"| {r.image_a} | {r.side_a} | {r.source_a} | {r.image_b} | {r.side_b} | "
                      f"{r.source_b} | {r.distance} | {r.correlation:.3f} |" for r in shown.itertuples()]
        lines += [""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


def audit_splits(frame: pd.DataFrame, max_distance: int = DEFAULT_MAX_DISTANCE, workers: int = 1,
                 progress: Callable[[int], None] | None = None, signatures: Signatures | None = None,
                 min_correlation: float = DEFAULT_MIN_CORRELATION) -> AuditReport:
    """Audit a split table: counts per side, the leakage guard, near-duplicates.

    Args:
        frame: Rows with ``image``, ``label``, ``patient_id``, ``source``, ``split``.
        max_distance: pHash Hamming distance up to which two images are candidate copies.
        workers: Processes used for hashing.
        progress: Called with 1 per hashed image.
        signatures: Precomputed signatures aligned with ``frame`` (skips hashing).
        min_correlation: Thumbnail correlation that confirms a candidate.
    """
    frame = frame.reset_index(drop=True)
    leakage = None
    try:
        check_no_leakage(frame)
    except ValueError as err:
        leakage = str(err)
    if signatures is None:
        signatures = compute_signatures(frame["image"].tolist(), workers=workers, progress=progress)
    pairs = near_duplicate_pairs(signatures, max_distance, min_correlation)
    rows = []
    for i, j, dist in pairs:
        a, b = frame.iloc[i], frame.iloc[j]
        correlation = float(thumb_correlation(signatures.thumbs[[i]], signatures.thumbs[[j]])[0])
        rows.append({"image_a": a["image"], "image_b": b["image"], "distance": dist, "correlation": correlation,
                     "side_a": a["split"], "side_b": b["split"], "source_a": a["source"],
                     "source_b": b["source"], "patient_a": a["patient_id"], "patient_b": b["patient_id"],
                     "cross_side": a["split"] != b["split"], "cross_source": a["source"] != b["source"]})
    columns = ["image_a", "image_b", "distance", "correlation", "side_a", "side_b", "source_a", "source_b",
               "patient_a", "patient_b", "cross_side", "cross_source"]
    table = pd.DataFrame(rows, columns=columns).astype({"cross_side": bool, "cross_source": bool})
    notes = []
    undecoded = int((signatures.phashes == 0).sum())
    if undecoded:
        notes.append(f"{undecoded} image(s) could not be decoded and were not compared")
    groups = duplicate_groups(len(frame), pairs)
    if chained := warn_if_chained(largest_group(groups)):
        notes.append(chained)
    return AuditReport(split_counts(frame), table, groups, leakage, max_distance, notes, min_correlation)


def check_no_copies(frame: pd.DataFrame, origin: str, workers: int = 1) -> None:
    """Refuse a split whose sides share copies of one radiograph (the leakage guard by content).

    Raises:
        LeakageError: a near-duplicate pair spans two sides (the first few named, and the fix).
    """
    report = audit_splits(frame, workers=workers)
    across = report.cross_side
    if len(across):
        shown = "; ".join(f"{r.image_a} ({r.side_a}) and {r.image_b} ({r.side_b})" for r in across.head(3).itertuples())
        raise LeakageError(f"{origin}: {len(across)} pair(s) of copies of one radiograph sit on two sides, e.g. {shown}: "
                           f"the model would be tested on images it trained on; fix the split with `cxrlab audit "
                           f"{origin} --fix regroup` (or set dedupe: false to use it as it is)")


def dedupe_splits(frame: pd.DataFrame, report: AuditReport, mode: DedupeMode) -> pd.DataFrame:
    """Remove the leakage the audit found.

    ``drop``: in each duplicate group that spans sides or sources, keep the copies on its
    first side (train, then val, then test) from one source, and drop the rest.
    ``regroup``: move every patient linked by a duplicate group to the side holding most
    of the group's images (ties: the earlier side), so copies end up together.

    Returns:
        A new split table (the leakage guard passes on it).
    """
    frame = frame.reset_index(drop=True).copy()
    rank = {s: k for k, s in enumerate(SIDES)}
    frame["_group"] = report.groups
    for _, rows in frame.groupby("_group"):
        if len(rows) < 2 or (rows["split"].nunique() < 2 and rows["source"].nunique() < 2):
            continue
        if mode == "drop":
            first_side = min(rows["split"], key=rank.get)
            on_side = rows[rows["split"] == first_side]
            keep_source = sorted(on_side["source"])[0]
            drop = rows.index[(rows["split"] != first_side) | (rows["source"] != keep_source)]
            frame = frame.drop(index=drop)
        else:
            side = max(Counter(rows["split"]).items(), key=lambda kv: (kv[1], -rank[kv[0]]))[0]
            patients = frame["patient_id"].isin(set(rows["patient_id"]))
            frame.loc[patients, "split"] = side
            folds = frame.loc[patients & (frame["fold"] >= 0), "fold"]
            frame.loc[patients, "fold"] = int(folds.mode().iloc[0]) if side == "train" and len(folds) else (
                0 if side == "train" else -1)
    frame = frame.drop(columns="_group").reset_index(drop=True)
    check_no_leakage(frame)
    return frame
