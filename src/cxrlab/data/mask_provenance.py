"""Where each lung mask came from, and a guard against masks whose presence or origin tracks the class.

In public COVID-19 collections most hand-drawn lung masks are on COVID-19 images (cxr-real: 290
of the 317 masked images). A setting that uses masks (lung crop, artifact inpainting inside the
lungs, lung attention, the attention loss) then sees a COVID-19 cue in whether, or how, an image
was masked. Such settings need every image masked the same way: all masks from one origin (for
instance all predicted by one segmenter, ``cxrlab segment predict --replace``), none predicted by a
segmenter that trained on the patient when the image is on a validation or test side.
"""

from __future__ import annotations

import logging

import pandas as pd

from cxrlab.core.errors import ConfigError

log = logging.getLogger(__name__)

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


def mask_uses(lung_crop: bool = False, inpaint: bool = False, lung_attention: bool = False,
              attention_loss: bool = False) -> str:
    """The settings that use lung masks, as the messages name them ("" when none does)."""
    used = [name for name, on in (("lung_crop", lung_crop), ("artifacts: inpaint", inpaint),
                                  ("lung_attention", lung_attention), ("attention_loss", attention_loss)) if on]
    return " and ".join(used)


def mask_problem(frame: pd.DataFrame, settings: str, origin: str, fix: str | None = None) -> str | None:
    """Why ``frame``'s masks could tell the classes apart by their presence or origin, or ``None``.

    The rule every door applies (training, evaluation, the lung audit, the masked-input tests): every
    image has a mask or none has; all masks have one origin; no validation or test image's mask was
    predicted by a segmenter trained on its patient.

    Args:
        frame: The rows (``label``, ``mask``; ``mask_source``, ``split``, ``mask_in_sample`` when known).
        settings: What uses the masks, for the message.
        origin: The data file, for the message.
        fix: What to do instead, for the message (default: predict every mask with one segmenter).
    """
    fix = fix or (f"predict every image's mask with one segmenter (cxrlab segment predict SEGMENTER --data {origin} "
                  "--replace) and use its manifest")
    origins = provenance(frame)
    missing = origins == "none"
    if missing.any() and not missing.all():  # no mask anywhere is uniform too (nothing to crop or attend to)
        return (f"{origin}: {settings} needs a lung mask on every image or on none, but {int(missing.sum())} of "
                f"{len(frame)} have none ({_by_class(frame, missing)}): whether an image has a mask would be a class "
                f"cue; {fix}")
    kinds = origins.value_counts()
    if len(kinds) > 1:
        detail = "; ".join(f"{kind}: {_by_class(frame, origins == kind)}" for kind in kinds.index)
        return (f"{origin}: {settings} needs masks of one origin, but they come from {len(kinds)} ({detail}): how an "
                f"image was masked would be a class cue; {fix}")
    held_out = _column(frame, "split").isin(["val", "test"]) & in_sample(frame)
    if held_out.any():
        return (f"{origin}: {int(held_out.sum())} validation/test image(s) have masks predicted by a segmenter that "
                "trained on their patients (column mask_in_sample); train the segmenter on other patients (e.g. "
                "cxrlab segment train --splits with the classifier's split) and predict again")
    return None


def check_uniform_masks(frame: pd.DataFrame, settings: str, origin: str) -> None:
    """Refuse masks that could tell the classes apart by their presence or origin (:func:`mask_problem`).

    Raises:
        ConfigError: some images lack a mask, the masks come from more than one origin, or a
            validation/test image's mask was predicted by a segmenter trained on its patient.
    """
    if problem := mask_problem(frame, settings, origin, "predict every image's mask with one segmenter (cxrlab "
                                                          f"segment predict SEGMENTER --data {origin} --replace) and "
                                                          "train on its manifest"):
        raise ConfigError(problem)


def guard_masks(frame: pd.DataFrame, settings: str, origin: str, allow: bool, fix: str | None = None) -> str | None:
    """:func:`mask_problem` at a door other than training: refused, or with ``allow`` (the user insists)
    logged as a warning and returned, for the report to carry.

    Raises:
        ConfigError: the masks fail the rule and ``allow`` is off (the message says how to go on).
    """
    problem = mask_problem(frame, settings, origin, fix)
    if problem is None:
        return None
    if not allow:
        raise ConfigError(f"{problem} (or --allow-mixed-masks to go on anyway; the report then says so)")
    log.warning("MASKS DO NOT PASS THE PROVENANCE RULE (--allow-mixed-masks): %s", problem)
    return problem
