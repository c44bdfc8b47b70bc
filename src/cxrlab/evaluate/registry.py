"""The metric vocabulary: each headline figure has one name, one direction, one display name and one
definition, used alike by the training logs (``val_<name>`` in ``metrics.csv`` and MLflow), epoch
selection (``select.metric``), ``summary.json``, ``evaluate``'s ``metrics.json``, the out-of-fold and
study tables, tuning objectives and the reports.

=============  =====================  =========  ===============================================
name           display                direction  definition
=============  =====================  =========  ===============================================
``loss``       validation loss        minimize   cross-entropy of the validation side (training)
``accuracy``   accuracy               maximize   share of images whose most probable class is true
``auc_macro``  macro AUC              maximize   mean one-vs-rest ROC AUC over the classes it is defined for
``auc_covid``  COVID-19 AUC           maximize   ROC AUC of COVID-19 against the rest
``f1_macro``   macro-F1               maximize   mean F1 over the classes present or predicted
=============  =====================  =========  ===============================================

Per-class figures (sensitivity, specificity, precision, NPV, F1, ROC and PR AUC) keep their own names in
the per-class tables (:func:`cxrlab.evaluate.metrics.compute_metrics`).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from cxrlab.core.errors import ConfigError
from cxrlab.data.classes import POSITIVE_CLASS
from cxrlab.evaluate.metrics import binary_auc, macro_auc, macro_f1

Statistic = Callable[[np.ndarray, np.ndarray, Sequence[str]], "float | None"]
LOG_PREFIX = "val_"
# the names the training logs of earlier versions used for the same figures (their metrics.csv still reads)
EARLIER_LOG_KEYS = {"val_acc": "val_accuracy", "val_auc": "val_auc_macro", "val_f1": "val_f1_macro"}


@dataclass(frozen=True)
class Metric:
    """A headline figure.

    Attributes:
        name: Its one spelling, in logs (``val_<name>``), JSON, tables and settings.
        display: What tables and figures call it.
        direction: ``maximize`` or ``minimize``.
        needs: What it is computed from, in a few words.
        compute: ``(class indices (N,), probabilities (N, C), class names) -> value or None`` (undefined);
            ``None`` for the loss, which only training computes.
    """

    name: str
    display: str
    direction: Literal["maximize", "minimize"]
    needs: str
    compute: Statistic | None = None

    @property
    def log_key(self) -> str:
        """Its key in a run's per-epoch log (``metrics.csv``, MLflow): ``val_<name>``."""
        return LOG_PREFIX + self.name

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "maximize"


_REGISTRY: dict[str, Metric] = {}


def register_metric(name: str, display: str, direction: Literal["maximize", "minimize"] = "maximize",
                    needs: str = "class probabilities and true classes"):
    """Register the decorated function as the metric ``name`` (see :class:`Metric`)."""
    def decorate(compute: Statistic | None) -> Statistic | None:
        if name in _REGISTRY:
            raise ValueError(f"metric {name!r} is registered twice")
        _REGISTRY[name] = Metric(name, display, direction, needs, compute)
        return compute
    return decorate


def get_metric(name: str) -> Metric:
    """The metric called ``name``.

    Raises:
        ConfigError: no such metric (the message lists them).
    """
    if name not in _REGISTRY:
        raise ConfigError(f"metric {name!r}: choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def list_metrics(pattern: str = "*", computable: bool = False) -> list[str]:
    """The registered metric names matching ``pattern`` (``computable``: those with a ``compute``)."""
    return [n for n, m in _REGISTRY.items() if fnmatch.fnmatch(n, pattern) and (m.compute or not computable)]


register_metric("loss", "validation loss", "minimize", "the training loss on the validation side")(None)


@register_metric("accuracy", "accuracy")
def _accuracy(y: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> float | None:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(y)).mean()) if len(y) else None


@register_metric("auc_macro", "macro AUC")
def _auc_macro(y: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> float | None:
    return macro_auc(y, probs)


@register_metric("auc_covid", "COVID-19 AUC", needs="class probabilities with a COVID-19 class")
def _auc_covid(y: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> float | None:
    if POSITIVE_CLASS not in names:
        return None
    column = list(names).index(POSITIVE_CLASS)
    return binary_auc(np.asarray(y) == column, np.asarray(probs)[:, column])


@register_metric("f1_macro", "macro-F1")
def _f1_macro(y: np.ndarray, probs: np.ndarray, names: Sequence[str]) -> float | None:
    return macro_f1(y, probs)


HEADLINE = ("accuracy", "auc_macro", "auc_covid", "f1_macro")
"""The figures ``train --folds``, ``evaluate`` per source and the studies report, with intervals."""


def headline(y: np.ndarray, probs: np.ndarray, names: Sequence[str], which: Sequence[str] = HEADLINE) -> dict:
    """``{name: value or None}`` of the metrics ``which`` on one set of predictions."""
    return {name: get_metric(name).compute(y, probs, names) for name in which}


def log_key(name: str) -> str:
    """The per-epoch log key of metric ``name`` (``val_<name>``)."""
    return get_metric(name).log_key


def current_log_keys(frame):
    """A ``metrics.csv`` table with the log keys of today (an earlier version's ``val_acc`` and the like
    renamed)."""
    return frame.rename(columns={old: new for old, new in EARLIER_LOG_KEYS.items() if old in frame.columns})
