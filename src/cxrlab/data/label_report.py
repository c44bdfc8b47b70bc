"""What a manifest's labels say, per source and finding, beside the collections' own figures.

A label read wrongly is silent: nothing fails, the model trains against the truth. The one check a
manifest allows is arithmetic: per source and finding, the images where the finding is present,
absent and unknown, and the present share beside the share counted on the collection's released
table (``collections/label_references.csv``, written by ``bench/label_references.py`` with code of
its own). A finding is *flagged* when its share differs from the reference by more than half the
reference share and by more than three binomial standard errors of the manifest's images (so a
small sample is not flagged by chance): a lost sub-type, a wrong column or a policy that turns
blanks into positives all move a share that much.
"""

from __future__ import annotations

import functools
import math
from importlib import resources

import numpy as np
import pandas as pd

from cxrlab.data.findings import finding_targets
from cxrlab.data.manifest import Manifest

MARGIN = 0.5  # share of the reference share a finding may differ by before it is flagged
SIGMAS = 3.0  # ... and in binomial standard errors of the manifest's images
COLUMNS = ["source", "finding", "images", "present", "absent", "unknown", "share", "reference", "flagged"]


@functools.cache
def references() -> pd.DataFrame:
    """The reference figures: ``source, finding, images, positive, share, counted_on``."""
    with resources.files("cxrlab.data.collections").joinpath("label_references.csv").open() as f:
        return pd.read_csv(f)


def flagged(share: float, reference: float, images: int) -> bool:
    """Whether a present share differs from its reference by more than :data:`MARGIN` × the reference
    and :data:`SIGMAS` standard errors."""
    spread = SIGMAS * math.sqrt(max(reference * (1 - reference), 1e-12) / max(images, 1))
    return abs(share - reference) > max(MARGIN * reference, spread)


def label_report(manifest: Manifest, multilabel: bool) -> pd.DataFrame:
    """:data:`COLUMNS` per source and finding (single-label schemes: per source and class, without
    references): ``share`` is present / images; ``reference`` the collection's share, where known."""
    frame, names = manifest.table, list(manifest.class_names)
    if multilabel:
        targets, known = finding_targets(frame["label"], frame.get("unlabelled"), names)
    else:
        targets = np.stack([(frame["label"] == n).to_numpy() for n in names], axis=1).astype(np.float32)
        known = np.ones_like(targets, dtype=bool)
    refs = references().set_index(["source", "finding"])["share"]
    out = []
    for source, rows in frame.groupby("source", sort=True).indices.items():
        for i, name in enumerate(names):
            present = int((targets[rows, i] == 1).sum())
            unknown = int((~known[rows, i]).sum())
            images = len(rows)
            reference = float(refs.get((source, name), np.nan)) if multilabel else np.nan
            share = present / images
            out.append({"source": source, "finding": name, "images": images, "present": present,
                        "absent": images - present - unknown, "unknown": unknown, "share": share,
                        "reference": reference,
                        "flagged": bool(not np.isnan(reference) and flagged(share, reference, images))})
    return pd.DataFrame(out, columns=COLUMNS)
