"""The decision rule a model file carries: probabilities → the class (or findings) a door reports.

One rule for every door (``predict``, ``explain``, ``serve``, ``evaluate``'s ``predicted`` column, the
study's test side), so the same image and model never get two answers:

* a single-label model with an operating point (chosen on validation or out-of-fold data and kept
  in its file): the positive class (COVID-19) when its probability reaches the threshold, else the
  most probable of the other classes;
* a single-label model without one: the most probable class;
* a multi-label model: each finding at or above its own threshold (0.5 where the file has none),
  joined by ``|``, likeliest first; ``No Finding`` when none is called.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cxrlab.core.errors import ConfigError
from cxrlab.data.findings import NO_FINDING

DEFAULT_FINDING_THRESHOLD = 0.5
MAX_FINDING_MAPS = 3  # a multi-label image gets an explanation for each of its (at most) three likeliest called findings


def _threshold(value, where: str) -> float:
    try:
        threshold = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: threshold {value!r} is not a number") from None
    if not math.isfinite(threshold) or not 0 <= threshold <= 1:
        raise ConfigError(f"{where}: threshold {value!r} is not a probability in [0, 1]")
    return threshold


@dataclass(frozen=True)
class DecisionRule:
    """How probabilities become the reported class.

    Attributes:
        class_names: Column order of the probabilities.
        multilabel: Independent findings (a sigmoid each) rather than one class per image.
        positive: The class an operating point is set on (single-label), else ``None``.
        threshold: Its threshold on ``P(positive)``.
        per_finding: A multi-label model's threshold per finding (missing: 0.5).
        chosen_on: What the thresholds were chosen on (``validation``, ``out-of-fold predictions``, ...).
    """

    class_names: tuple[str, ...]
    multilabel: bool = False
    positive: str | None = None
    threshold: float | None = None
    per_finding: dict[str, float] = field(default_factory=dict)
    chosen_on: str | None = None

    @classmethod
    def from_operating_point(cls, point: dict | None, class_names: Sequence[str], multilabel: bool = False,
                             where: str = "operating point") -> DecisionRule:
        """The rule of a model file's ``operating_point`` (``None``: the most probable class, or 0.5 per finding).

        Raises:
            ConfigError: a threshold that is not a finite probability (``where`` names the file).
        """
        names = tuple(class_names)
        point = point or {}
        chosen_on = point.get("chosen_on")
        if multilabel:
            per = {str(n): _threshold(t, f"{where} ({n})") for n, t in (point.get("per_finding") or {}).items()
                   if t is not None and n in names}
            return cls(names, True, per_finding=per, chosen_on=chosen_on)
        if point.get("positive") not in names or point.get("threshold") is None:
            return cls(names, False)
        return cls(names, False, str(point["positive"]), _threshold(point["threshold"], where), chosen_on=chosen_on)

    def finding_threshold(self, name: str) -> float:
        """A multi-label finding's threshold (0.5 when the file has none)."""
        return self.per_finding.get(name, DEFAULT_FINDING_THRESHOLD)

    def called_findings(self, probabilities: np.ndarray) -> list[str]:
        """The findings at or above their thresholds, likeliest first (multi-label models)."""
        called = [(float(p), n) for n, p in zip(self.class_names, probabilities) if p >= self.finding_threshold(n)]
        return [n for _, n in sorted(called, key=lambda item: (-item[0], self.class_names.index(item[1])))]

    def decide(self, probabilities: np.ndarray) -> str:
        """The reported class of one image's ``(C,)`` probabilities (a multi-label model: the called
        findings joined by ``|``, or ``No Finding``)."""
        probabilities = np.asarray(probabilities, dtype=float)
        if self.multilabel:
            return "|".join(self.called_findings(probabilities)) or NO_FINDING
        if self.positive is None:
            return self.class_names[int(np.argmax(probabilities))]
        column = self.class_names.index(self.positive)
        if probabilities[column] >= self.threshold:
            return self.positive
        others = probabilities.copy()
        others[column] = -np.inf
        return self.class_names[int(np.argmax(others))]

    def decide_all(self, probabilities: np.ndarray) -> list[str]:
        """:meth:`decide` for each row of ``(N, C)`` probabilities."""
        return [self.decide(row) for row in np.asarray(probabilities)]

    def targets_to_explain(self, probabilities: np.ndarray) -> list[int]:
        """Column indices whose evidence an explanation shows: the reported class; for a multi-label
        model the called findings (at most :data:`MAX_FINDING_MAPS`), or the likeliest when none is."""
        if not self.multilabel:
            return [self.class_names.index(self.decide(probabilities))]
        called = self.called_findings(probabilities)[:MAX_FINDING_MAPS]
        return [self.class_names.index(n) for n in called] or [int(np.argmax(probabilities))]

    def to_dict(self) -> dict:
        """What a summary or model card says of the rule."""
        if self.multilabel:
            return {"rule": "each finding at its threshold", "per_finding": dict(self.per_finding),
                    "default_threshold": DEFAULT_FINDING_THRESHOLD, "chosen_on": self.chosen_on}
        if self.positive is None:
            return {"rule": "most probable class"}
        return {"rule": "operating point", "positive": self.positive, "threshold": self.threshold,
                "chosen_on": self.chosen_on}
