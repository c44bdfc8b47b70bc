"""Class schemes and the mapping of source labels / finding texts to classes.

The papers used three classes (COVID-19 / other pneumonia / normal) or two (COVID-19 /
non-COVID). Sources name them in many ways (``COVID``, ``covid-19``, ``NORMAL``,
``Viral Pneumonia``, ``Pneumonia/Bacterial/Streptococcus``, ``No Finding``); this module maps
all of them onto one scheme, and refuses what it cannot map.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cxrlab.core.errors import ConfigError
from cxrlab.data.findings import FINDING_SCHEMES, NO_FINDING, SEPARATOR, is_multilabel, scheme_findings, split_findings

COVID = "COVID-19"
PNEUMONIA = "Pneumonia"
NORMAL = "Normal"
NON_COVID = "non-COVID"
POSITIVE_CLASS = COVID  # the papers' headline class: COVID-19 vs the rest (operating points, binary views)

# single-label schemes by name; multi-label ones are cxrlab.data.findings' (chestxray14, chexpert5,
# findings:A,B,C), so a scheme is a name string wherever it is set
SchemeName = str

CLASS_SCHEMES: dict[str, tuple[str, ...]] = {
    "3class": (COVID, PNEUMONIA, NORMAL),
    "binary": (COVID, NON_COVID),
}

# Finding words of the public collections that mean "other pneumonia" (cf. the cxr-real README).
PNEUMONIA_TERMS: tuple[str, ...] = (
    "pneumonia", "bacterial", "bacteria", "viral", "virus", "streptococcus", "klebsiella",
    "legionella", "e.coli", "mycoplasma", "chlamydophila", "sars", "mers", "influenza",
    "varicella", "pneumocystis", "lipoid", "ards", "aspergillosis", "nocardia", "fungal",
)
NORMAL_TERMS: tuple[str, ...] = ("normal", "no finding", "no findings", "healthy", "negative")
COVID_PATTERN = re.compile(r"covid|sars-cov-2|ncov", re.IGNORECASE)
NON_COVID_PATTERN = re.compile(r"^non[- ]?covid", re.IGNORECASE)


def class_names(scheme: SchemeName) -> tuple[str, ...]:
    """Return the class names of ``scheme`` in their canonical order (a multi-label scheme's findings).

    Raises:
        ConfigError: ``scheme`` is none of :data:`CLASS_SCHEMES`, the finding schemes or ``findings:A,B``.
    """
    if scheme in CLASS_SCHEMES:
        return CLASS_SCHEMES[scheme]
    if is_multilabel(scheme):
        return scheme_findings(scheme)
    raise ConfigError(f"scheme: unknown class scheme {scheme!r}; choose one of "
                      f"{sorted(CLASS_SCHEMES) + sorted(FINDING_SCHEMES)} or findings:A,B,C (multi-label)")


def _normalise(text: str) -> str:
    return re.sub(r"[\s_]+", " ", str(text).strip().lower())


@dataclass(frozen=True)
class LabelMapper:
    """Maps raw labels (folder names, finding texts) to the classes of a scheme.

    Args:
        scheme: ``"3class"`` (COVID-19 / Pneumonia / Normal) or ``"binary"`` (COVID-19 / non-COVID).
        overrides: Exact raw label (case-insensitive) → 3-class name or ``None`` to drop,
            checked before the built-in rules, e.g. ``{"Lung_Opacity": None}``.

    Example:
        >>> LabelMapper("binary").map("Viral Pneumonia")
        'non-COVID'
    """

    scheme: SchemeName = "3class"
    overrides: Mapping[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        valid = set(CLASS_SCHEMES["3class"]) | set(class_names(self.scheme))
        for raw, target in self.overrides.items():
            if target is not None and target not in valid:
                raise ConfigError(
                    f"label_map: {raw!r} maps to unknown class {target!r}; valid: {sorted(valid)}"
                )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names of the scheme, in order."""
        return class_names(self.scheme)

    def map3(self, raw: object) -> str | None:
        """Map a raw label to a 3-class name (or ``non-COVID``), or ``None`` when unknown."""
        if raw is None or (isinstance(raw, float) and raw != raw):
            return None
        text = _normalise(raw)
        if not text:
            return None
        for key, target in self.overrides.items():
            if _normalise(key) == text:
                return target
        if text in {_normalise(c) for c in self.class_names}:
            return next(c for c in self.class_names if _normalise(c) == text)
        if NON_COVID_PATTERN.match(text):
            return NON_COVID
        if COVID_PATTERN.search(text):
            return COVID
        if text in NORMAL_TERMS:
            return NORMAL
        words = set(re.split(r"[/|,;\s]+", text))
        if any(term in words for term in PNEUMONIA_TERMS):
            return PNEUMONIA
        return None

    @property
    def multilabel(self) -> bool:
        """Whether the scheme is a multi-label finding scheme."""
        return is_multilabel(self.scheme)

    def map(self, raw: object) -> str | None:
        """Map a raw label to a class of this scheme, or ``None`` when unmappable. Under a multi-label
        scheme: the scheme's findings among ``raw``'s ``|``-joined ones, in scheme order (``No Finding``
        when none; findings outside the scheme are not modelled)."""
        if self.multilabel:
            if raw is None or (isinstance(raw, float) and raw != raw):
                return None
            present = set(split_findings(raw))
            return SEPARATOR.join(f for f in self.class_names if f in present) or NO_FINDING
        three = self.map3(raw)
        if three is None:
            return None
        if self.scheme == "3class":
            return None if three == NON_COVID else three  # "non-COVID" has no 3-class meaning
        return COVID if three == COVID else NON_COVID

    def map_many(self, raws: Sequence[object]) -> list[str | None]:
        """Vectorised :meth:`map`."""
        cache: dict[object, str | None] = {}
        out = []
        for raw in raws:
            key = raw if isinstance(raw, str) else repr(raw)
            if key not in cache:
                cache[key] = self.map(raw)
            out.append(cache[key])
        return out
