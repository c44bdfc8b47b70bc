"""Studies: grids of training configurations over patient-grouped folds, their test side, reports,
searches and shared workers."""

from __future__ import annotations

from cxrlab.study.config import StudyConfig, load_study_config
from cxrlab.study.results import corrected_resampled_ttest
from cxrlab.study.runner import StudyResult, run_study

__all__ = ["StudyConfig", "StudyResult", "corrected_resampled_ttest", "load_study_config", "run_study"]
