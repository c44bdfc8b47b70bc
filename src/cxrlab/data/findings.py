"""Multi-label finding schemes: the findings of ChestX-ray14, CheXpert and others, one name each.

A multi-label scheme is a list of findings, each present or absent on an image, and possibly
unknown (CheXpert's uncertain ``-1`` and blank cells, a collection that never reads a finding).
In a manifest such an image's ``label`` is its positive findings joined by ``|`` in scheme order
(``No Finding`` when none), and ``unlabelled`` the findings whose value is unknown, which the
training loss and every per-finding metric leave out for that image.

Schemes: ``chestxray14`` (NIH's 14 findings), ``chexpert5`` (CheXpert's competition findings)
and any list written ``findings:A,B,C`` (``findings:COVID-19,Pneumonia,Normal`` makes the three
classes independent findings). Collections name findings differently (``Effusion`` /
``Pleural Effusion`` / ``pleural effusion``); :func:`canonical_finding` gives each one name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from cxrlab.core.errors import ConfigError

NO_FINDING = "No Finding"
SEPARATOR = "|"
CUSTOM_PREFIX = "findings:"

CHESTXRAY14 = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
               "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural Thickening", "Hernia")
CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion")
FINDING_SCHEMES: dict[str, tuple[str, ...]] = {"chestxray14": CHESTXRAY14, "chexpert5": CHEXPERT5}

# other names of one finding across collections (lower case, spaces) -> cxrlab's name
ALIASES: dict[str, str] = {
    "pleural effusion": "Effusion", "pulmonary fibrosis": "Fibrosis", "pulmonary edema": "Edema",
    "infiltrates": "Infiltration", "infiltrate": "Infiltration", "hiatal hernia": "Hernia",
    "no finding": NO_FINDING, "no findings": NO_FINDING,
    "covid": "COVID-19", "covid 19": "COVID-19", "covid-19": "COVID-19",
}

Policy = Literal["ignore", "ones", "zeros"]
POLICIES = ("ignore", "ones", "zeros")


def canonical_finding(name: str) -> str:
    """One name per finding: aliases resolved, underscores as spaces, the words capitalised as
    the known schemes spell them (``pleural_thickening`` -> ``Pleural Thickening``)."""
    text = re.sub(r"[\s_]+", " ", str(name).strip())
    key = text.lower()
    if key in ALIASES:
        return ALIASES[key]
    for known in (*CHESTXRAY14, "Enlarged Cardiomediastinum", "Lung Opacity", "Lung Lesion", "Pleural Other",
                  "Fracture", "Support Devices", "COVID-19", "Normal"):
        if known.lower() == key:
            return known
    return text


def is_multilabel(scheme: str) -> bool:
    """Whether ``scheme`` names a multi-label finding scheme."""
    return scheme in FINDING_SCHEMES or scheme.startswith(CUSTOM_PREFIX)


def scheme_findings(scheme: str) -> tuple[str, ...]:
    """The findings of a multi-label scheme, in order.

    Raises:
        ConfigError: not a multi-label scheme, an empty or repeated finding list.
    """
    if scheme in FINDING_SCHEMES:
        return FINDING_SCHEMES[scheme]
    if not scheme.startswith(CUSTOM_PREFIX):
        raise ConfigError(f"scheme: {scheme!r} is not a multi-label scheme ({', '.join(FINDING_SCHEMES)} or "
                          f"{CUSTOM_PREFIX}A,B,C)")
    names = tuple(canonical_finding(n) for n in scheme[len(CUSTOM_PREFIX):].split(",") if n.strip())
    if not names:
        raise ConfigError(f"scheme: {scheme!r} lists no finding (write {CUSTOM_PREFIX}A,B,C)")
    if len(set(names)) != len(names) or NO_FINDING in names:
        raise ConfigError(f"scheme: {scheme!r} repeats a finding or lists {NO_FINDING!r} (which means none)")
    return names


@dataclass(frozen=True)
class FindingPolicy:
    """What an uncertain (``-1``) or blank cell of a collection's label table becomes.

    Attributes:
        uncertain: ``ignore`` (unknown: left out of loss and metrics), ``ones`` or ``zeros``, for
            every finding, with per-finding exceptions in ``per_finding`` (CheXpert's paper
            trained Atelectasis and Edema as ``ones``).
        blank: The same choice for a blank cell (a finding the report does not mention; the
            CheXpert labeller's convention reads it as absent: ``zeros``).
        per_finding: Finding -> policy for its uncertain cells.
    """

    uncertain: Policy = "ignore"
    blank: Policy = "zeros"
    per_finding: Mapping[str, Policy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for what, value in (("uncertain", self.uncertain), ("blank", self.blank), *self.per_finding.items()):
            if value not in POLICIES:
                raise ConfigError(f"uncertain labels: {what}: {value!r} is not one of {', '.join(POLICIES)}")
        object.__setattr__(self, "per_finding", {canonical_finding(k): v for k, v in self.per_finding.items()})

    @classmethod
    def parse(cls, items: Sequence[str] = (), blank: Policy = "zeros") -> FindingPolicy:
        """From ``["ignore", "Atelectasis=ones"]``: a bare policy for every finding, ``NAME=policy``
        for one."""
        default, per = "ignore", {}
        for item in items:
            name, sep, value = item.partition("=")
            if sep:
                per[name.strip()] = value.strip()
            else:
                default = item.strip()
        return cls(default, blank, per)  # type: ignore[arg-type]

    def resolve(self, finding: str, value: float) -> float:
        """A cell's value as 1, 0 or NaN (unknown)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            choice = self.blank
        elif value < 0:
            choice = self.per_finding.get(finding, self.uncertain)
        else:
            return 1.0 if value > 0 else 0.0
        return {"ones": 1.0, "zeros": 0.0, "ignore": math.nan}[choice]

    def to_dict(self) -> dict:
        return {"uncertain": self.uncertain, "blank": self.blank, "per_finding": dict(self.per_finding)}


def encode_findings(values: np.ndarray, findings: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(label, unlabelled)`` texts of each row of ``values`` ``(N, F)`` in 1 / 0 / NaN."""
    labels, unknown = [], []
    for row in np.asarray(values, dtype=float):
        positive = [f for f, v in zip(findings, row) if v == 1]
        labels.append(SEPARATOR.join(positive) or NO_FINDING)
        unknown.append(SEPARATOR.join(f for f, v in zip(findings, row) if math.isnan(v)))
    return labels, unknown


def split_findings(text: object) -> list[str]:
    """The findings in a ``label`` or ``unlabelled`` text (``No Finding`` and blank: none)."""
    if text is None or (isinstance(text, float) and math.isnan(text)):
        return []
    names = [canonical_finding(p) for p in str(text).split(SEPARATOR) if p.strip()]
    return [n for n in names if n != NO_FINDING]


def finding_targets(labels: Sequence[object], unlabelled: Sequence[object] | None,
                    findings: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, known)``: ``(N, F) float32`` multi-hot of the positive findings and ``(N, F) bool``
    of the findings whose value is known (``unlabelled`` lists the others)."""
    index = {f: i for i, f in enumerate(findings)}
    targets = np.zeros((len(labels), len(findings)), dtype=np.float32)
    known = np.ones((len(labels), len(findings)), dtype=bool)
    for row, text in enumerate(labels):
        for name in split_findings(text):
            if name in index:
                targets[row, index[name]] = 1.0
    for row, text in enumerate(unlabelled if unlabelled is not None else ()):
        for name in split_findings(text):
            if name in index:
                known[row, index[name]] = False
                targets[row, index[name]] = 0.0
    return targets, known
