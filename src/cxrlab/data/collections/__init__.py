"""Readers for the public chest X-ray collections, each onto the manifest, detected from their files.

=============  ========================================================  ==================
name           recognised by (in the folder)                              official split
=============  ========================================================  ==================
chestxray14    ``Data_Entry_2017*.csv``                                   train_val / test lists
chexpert       ``train.csv`` and/or ``valid.csv`` with ``Frontal/Lateral``  train / valid
mimic          ``mimic-cxr-2.0.0-metadata.csv.gz`` + ``-chexpert.csv.gz``   train / validate / test
padchest       ``PADCHEST_chest_x_ray_images_labels_160K*.csv``           none
rsna           ``stage_2_train_labels.csv``                               none (train part)
vindr          ``annotations/annotations_{train,test}.csv`` or ``train.csv``  train / test
covidx         ``train.txt``, ``val.txt``, ``test.txt`` (any of them)       train (/ val) / test
=============  ========================================================  ==================

A folder with part of a collection's layout but not its label table (:func:`incomplete_collection`)
is refused with the reason, never read silently as a class-folder tree.

Every reader writes ``official_split`` (empty where the collection publishes none), the
collection's finding text in ``finding``, and labels for the chosen scheme: a single-label one
(3class, binary) through the class rules, a multi-label one through each finding's value and the
:class:`~cxrlab.data.findings.FindingPolicy` for uncertain and blank cells.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cxrlab.core.errors import ConfigError
from cxrlab.data.classes import LabelMapper
from cxrlab.data.collections import chexpert, covidx, nih, padchest, rsna, vindr
from cxrlab.data.findings import FindingPolicy
from cxrlab.data.manifest import Manifest

Reader = Callable[[Path, LabelMapper, FindingPolicy, bool], Manifest]

COLLECTIONS: dict[str, tuple[Callable[[Path], bool], Reader]] = {
    "chestxray14": (nih.detect, nih.read),
    "chexpert": (chexpert.detect, chexpert.read),
    "mimic": (chexpert.detect_mimic, chexpert.read_mimic),
    "padchest": (padchest.detect, padchest.read),
    "rsna": (rsna.detect, rsna.read),
    "vindr": (vindr.detect, vindr.read),
    "covidx": (covidx.detect, covidx.read),
}


def detect_collection(root: str | Path) -> str | None:
    """The collection whose files ``root`` holds, or ``None`` (then it is a folder tree, unless
    :func:`incomplete_collection` finds part of a collection's layout)."""
    root = Path(root)
    return next((name for name, (detect, _) in COLLECTIONS.items() if detect(root)), None)


# a file only one collection ships, without the label table its reader needs
_COMPANIONS = (("chestxray14", ("BBox_List_2017.csv*", "train_val_list.txt", "test_list.txt"),
                "Data_Entry_2017*.csv (the labels)"),
               ("rsna", ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv"),
                "stage_2_train_labels.csv (the labels)"),
               ("vindr", ("annotations/image_labels_*.csv",), "annotations/annotations_{train,test}.csv"))


def incomplete_collection(root: str | Path) -> str | None:
    """Why a folder that no reader recognises still holds part of a collection's layout (its files
    without the label table), or ``None``: such a folder must not be read silently as a class-folder
    tree (every image "No Finding" or named after its folder)."""
    root = Path(root)
    if detect_collection(root):
        return None
    reason = chexpert.incomplete_mimic(root)
    if reason:
        return reason
    for name, companions, lacking in _COMPANIONS:
        found = next((f for pattern in companions for f in sorted(root.glob(pattern))), None)
        if found is not None:
            return f"{name}'s {found.relative_to(root)} without {lacking}"
    return None


def read_collection(root: str | Path, mapper: LabelMapper | None = None, policy: FindingPolicy | None = None,
                    name: str | None = None, check_files: bool = True) -> Manifest:
    """Read a public collection's folder into a manifest.

    Args:
        root: The collection's folder, as released.
        mapper: The scheme (default: 3-class).
        policy: Uncertain and blank labels under a multi-label scheme (default: uncertain ignored,
            blank absent).
        name: One of :data:`COLLECTIONS` (default: detected).
        check_files: Leave out (and list) rows whose image file is missing.

    Raises:
        ConfigError: an unknown ``name``, or a folder no reader recognises.
        ManifestError: a label table that cannot be read (named).
    """
    root = Path(root).resolve()
    name = name or detect_collection(root)
    if name not in COLLECTIONS:
        partial = None if name else incomplete_collection(root)
        raise ConfigError(f"{root}: {'unknown collection ' + repr(name) if name else partial or 'no collection recognised'}; "
                          f"readers: {', '.join(COLLECTIONS)}")
    return COLLECTIONS[name][1](root, mapper or LabelMapper(), policy or FindingPolicy(), check_files)


__all__ = ["COLLECTIONS", "detect_collection", "incomplete_collection", "read_collection"]
