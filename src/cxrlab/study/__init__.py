"""Studies: compositions above evaluate and explain (sweeps, tuning and shortcut audits follow in issue 5)."""

from __future__ import annotations

from cxrlab.study.evaluation import add_explanations, evaluate_and_explain

__all__ = ["add_explanations", "evaluate_and_explain"]
