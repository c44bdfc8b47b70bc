"""Evaluation: metrics, patient-bootstrap CIs, operating points, DeLong, calibration."""

from __future__ import annotations

from cxrlab.evaluate.bootstrap import bootstrap_ci, bootstrap_cis
from cxrlab.evaluate.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)
from cxrlab.evaluate.delong import delong_covariance, delong_test
from cxrlab.evaluate.metrics import binary_view, compute_metrics
from cxrlab.evaluate.operating_point import OperatingPoint, choose_operating_point

__all__ = [
    "OperatingPoint", "apply_temperature", "binary_view", "bootstrap_ci", "bootstrap_cis", "choose_operating_point",
    "compute_metrics", "delong_covariance", "delong_test", "expected_calibration_error", "fit_temperature",
    "reliability_bins",
]
