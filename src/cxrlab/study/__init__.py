"""Studies: grids of training configurations over patient-grouped folds, and compositions above
evaluate and explain."""

from __future__ import annotations

from cxrlab.study.config import StudyConfig, load_study_config
from cxrlab.study.evaluation import add_explanations, evaluate_and_explain
from cxrlab.study.results import corrected_resampled_ttest
from cxrlab.study.runner import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "add_explanations", "corrected_resampled_ttest", "evaluate_and_explain",
           "load_study_config", "run_study"]
