"""Which epoch's model a run keeps, and when it stops: a validation metric that reflects the task.

On cxr-real with 52 validation images the lowest validation loss came after the first epoch while
the validation AUC was still rising (issue 17): choosing on loss threw the better model away. The
metric is configurable (``select_on``); the mean over the last ``select_smoothing`` epochs of the
phase (all of them defined) keeps one lucky epoch on a small validation side from winning; epochs
before ``min_epochs`` are never kept and never stop the run; equal scores go to the epoch with the
lower validation loss. When the metric is never defined (an AUC on a validation side holding one
class), the run keeps the epoch with the lowest validation loss instead and says so. ``last`` keeps
the final epoch and never stops early (a refit for a number of epochs chosen beforehand).

Lightning's EarlyStopping and ModelCheckpoint compare one logged value per epoch; neither smooths,
breaks ties on a second metric, or keeps one choice across a run's phases, so this rule is here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cxrlab.evaluate.registry import list_metrics, log_key

# select.metric -> the per-epoch value the Lightning module logs (the registry's val_<name>); last: none
SELECT_METRICS = {**{name: log_key(name) for name in list_metrics()}, "last": ""}
_TIE = 1e-12


@dataclass
class EpochSelector:
    """Scores epochs (higher is better: ``-loss`` or the metric), keeps the best, says when to stop.

    The settings (and their one default each) are the config's ``select`` section: see :meth:`from_config`.

    Args:
        metric: A key of :data:`SELECT_METRICS`.
        smoothing: Epochs in the trailing mean compared (1: the epoch's own value).
        min_epochs: Epochs (counted over the whole run) before one can be kept or the run stop.
        patience: Epochs without a better score, within a phase, before the run stops.
    """

    metric: str
    smoothing: int
    min_epochs: int
    patience: int
    best_epoch: int = -1
    best_score: float = -math.inf
    best_loss: float = math.inf
    fallback: bool = False  # the kept epoch was chosen on loss: the metric was never defined
    _raw: list[float] = field(default_factory=list)
    _phase_start: int = 0

    @classmethod
    def from_config(cls, select) -> EpochSelector:
        """The selector of a config's ``select`` section (:class:`cxrlab.train.config.SelectSection`)."""
        return cls(select.metric, select.smoothing, select.min_epochs, select.patience)

    def start_phase(self, epoch: int) -> None:
        """A new phase starts at ``epoch``: patience counts from here (as each phase's own early stopping)
        and the smoothing window starts again."""
        self._phase_start = epoch
        self._raw = []

    def update(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record ``epoch``'s validation ``metrics`` (``val_loss`` and the selected one); True when it is
        the new best. An epoch whose window holds a missing or undefined value (an AUC with one class
        present) scores nothing; while no epoch has scored, the lowest validation loss is kept."""
        loss = float(metrics.get("val_loss", math.nan))
        if self.metric == "last":  # every epoch replaces the one before
            self.best_epoch, self.best_loss = epoch, loss if math.isfinite(loss) else math.inf
            return True
        value = float(metrics.get(SELECT_METRICS[self.metric], math.nan))
        self._raw.append(-loss if self.metric == "loss" else value)
        window = self._raw[-self.smoothing:]
        full = len(window) == self.smoothing and all(math.isfinite(v) for v in window)
        score = sum(window) / len(window) if full else math.nan
        if epoch + 1 < self.min_epochs or not math.isfinite(loss):
            return False
        if not math.isfinite(score):  # nothing to compare on: loss, until the metric is defined
            if self.best_score == -math.inf and loss < self.best_loss:
                self.best_epoch, self.best_loss, self.fallback = epoch, loss, True
                return True
            return False
        better = score > self.best_score + _TIE or (abs(score - self.best_score) <= _TIE and loss < self.best_loss)
        if better:
            self.best_epoch, self.best_score, self.best_loss, self.fallback = epoch, score, loss, False
        return better

    def should_stop(self, epoch: int) -> bool:
        """True when ``epoch`` is at least ``min_epochs`` in and ``patience`` epochs of this phase brought
        no better score."""
        if epoch + 1 < self.min_epochs or self.metric == "last":
            return False
        since = max(self.best_epoch, self._phase_start - 1, self.min_epochs - 2)
        return epoch - since >= self.patience

    def state(self) -> dict:
        """Everything the selector holds (a resumed run continues from it)."""
        return {k: list(v) if isinstance(v, list) else v for k, v in vars(self).items()}

    def restore(self, state: dict) -> None:
        """Continue from :meth:`state`."""
        for key, value in state.items():
            setattr(self, key, list(value) if isinstance(value, list) else value)

    def to_dict(self) -> dict:
        """What ``summary.json`` records of the choice."""
        out = {"metric": self.metric, "smoothing": self.smoothing, "min_epochs": self.min_epochs,
               "epoch": self.best_epoch, "score": self.best_score if math.isfinite(self.best_score) else None}
        if self.fallback:
            out["fallback"] = f"{self.metric} was never defined on the validation side: kept on validation loss"
        return out
