"""Where each lung mask came from, and a guard against masks whose presence or origin tracks the class.

In public COVID-19 collections most hand-drawn lung masks are on COVID-19 images (cxr-real: 290
of the 317 masked images). A setting that uses masks (lung crop, artifact inpainting inside the
lungs, lung attention, the attention loss) then sees a COVID-19 cue in whether, or how, an image
was masked. Such settings need every image masked the same way: all masks from one origin (for
instance all predicted by one segmenter, ``cxrlab segment predict --replace``), none predicted by a
segmenter that trained on the patient when the image is on a validation or test side.
"""

from __future__ import annotations

import pandas as pd

from cxrlab.core.errors import ConfigError

PREDICTED = "predicted"  # mask_source of masks written by ``cxrlab segment predict``
IN_SAMPLE = "mask_in_sample"  # column: the segmenter that predicted this mask trained on the patient


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    return frame.get(name, pd.Series("", index=frame.index)).fillna("").astype(str)


def provenance(frame: pd.DataFrame) -> pd.Series:
    """Per row: ``none`` (no mask), the row's ``mask_source`` (``predicted``, a collection's name),
    or ``given`` for a mask of unstated origin."""
    masks, source = _column(frame, "mask"), _column(frame, "mask_source")
    return pd.Series(["none" if not m else (s or "given") for m, s in zip(masks, source, strict=True)],
                     index=frame.index)


def in_sample(frame: pd.DataFrame) -> pd.Series:
    """Per row: whether its predicted mask came from a segmenter trained on the row's patient."""
    return _column(frame, IN_SAMPLE).str.lower().isin({"true", "1", "yes"})


def mask_coverage(frame: pd.DataFrame) -> dict:
    """``{side: {class: {provenance: images}}}`` (side ``all`` when the table has no split)."""
    table = frame.assign(_side=_column(frame, "split").replace("", "all"), _origin=provenance(frame))
    out: dict = {}
    for (side, label, origin), n in table.groupby(["_side", "label", "_origin"]).size().items():
        out.setdefault(str(side), {}).setdefault(str(label), {})[str(origin)] = int(n)
    return out


def _by_class(frame: pd.DataFrame, rows: pd.Series) -> str:
    counts = frame.loc[rows, "label"].value_counts().sort_index()
    totals = frame["label"].value_counts()
    return ", ".join(f"{label} {n} of {totals[label]}" for label, n in counts.items())


def check_uniform_masks(frame: pd.DataFrame, settings: str, origin: str) -> None:
    """Refuse masks that could tell the classes apart by their presence or origin.

    Args:
        frame: The run's rows (``label``, ``mask``; ``mask_source``, ``split``, ``mask_in_sample`` when known).
        settings: The mask-using settings, for the message.
        origin: The data file, for the message.

    Raises:
        ConfigError: some images lack a mask, the masks come from more than one origin, or a
            validation/test image's mask was predicted by a segmenter trained on its patient.
    """
    fix = (f"predict every image's mask with one segmenter (cxrlab segment predict SEGMENTER --data {origin} "
           "--replace) and train on its manifest")
    origins = provenance(frame)
    missing = origins == "none"
    if missing.any() and not missing.all():  # no mask anywhere is uniform too (nothing to crop or attend to)
        raise ConfigError(f"{origin}: {settings} needs a lung mask on every image or on none, but {int(missing.sum())} "
                          f"of {len(frame)} have none ({_by_class(frame, missing)}): whether an image has a mask would "
                          f"be a class cue; {fix}")
    kinds = origins.value_counts()
    if len(kinds) > 1:
        detail = "; ".join(f"{kind}: {_by_class(frame, origins == kind)}" for kind in kinds.index)
        raise ConfigError(f"{origin}: {settings} needs masks of one origin, but they come from {len(kinds)} ({detail}): "
                          f"how an image was masked would be a class cue; {fix}")
    held_out = _column(frame, "split").isin(["val", "test"]) & in_sample(frame)
    if held_out.any():
        raise ConfigError(f"{origin}: {int(held_out.sum())} validation/test image(s) have masks predicted by a segmenter "
                          "that trained on their patients (column mask_in_sample); train the segmenter on other "
                          "patients (e.g. cxrlab segment train --splits with the classifier's split) and predict again")
