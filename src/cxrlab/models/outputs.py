"""What a classifier's outputs mean: one class of several (softmax) or independent findings (sigmoid).

One place for the step from logits to probabilities and back, so a single model, a fold ensemble,
test-time views, the ONNX graph and every command agree on it.
"""

from __future__ import annotations

import torch


def to_probabilities(logits: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """``(B, C)`` probabilities: a softmax over classes, or a sigmoid per finding (multi-label)."""
    return torch.sigmoid(logits) if multilabel else logits.softmax(dim=1)


def to_logits(probs: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """The logits whose :func:`to_probabilities` are ``probs`` (log for classes, logit per finding)."""
    probs = probs.clamp(1e-7, 1 - 1e-7) if multilabel else probs.clamp_min(1e-12)
    return torch.logit(probs) if multilabel else probs.log()
