"""cxrlab: transfer-learning studies and explainable screening on chest X-rays.

Research use only; not a diagnostic device.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "evaluate_model", "predict", "run_study", "train_model"]

_API = {"train_model", "evaluate_model", "predict", "run_study"}


def __getattr__(name: str):
    """``cxrlab.train_model``, ``evaluate_model``, ``predict``, ``run_study`` (:mod:`cxrlab.api`), imported on
    first use so that ``import cxrlab`` stays light."""
    if name in _API:
        from cxrlab import api

        return getattr(api, name)
    raise AttributeError(f"module 'cxrlab' has no attribute {name!r}")
