"""Workflows: the commands made of training, evaluation and explanation together, below the studies that
use them: ``train --folds`` (:mod:`~cxrlab.workflows.crossval`: folds, out-of-fold figures, the fold
ensemble and its screening reference, the linear-probe baseline), ``evaluate``
(:mod:`~cxrlab.workflows.evaluation`: the evaluation layer's report with the explanation layer's
sections), ``segment crossfit`` (:mod:`~cxrlab.workflows.mask_crossfit`), and a run's cached
predictions on a table of images (:mod:`~cxrlab.workflows.predictions`)."""

from __future__ import annotations

from cxrlab.workflows.crossval import CrossvalResult, train_crossval
from cxrlab.workflows.evaluation import add_explanations, evaluate_and_explain
from cxrlab.workflows.mask_crossfit import crossfit_lung_masks
from cxrlab.workflows.predictions import predict_test_side

__all__ = ["CrossvalResult", "add_explanations", "crossfit_lung_masks", "evaluate_and_explain", "predict_test_side",
           "train_crossval"]
