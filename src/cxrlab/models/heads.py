"""Classification heads: global average pooling, then dense layers, then the class logits."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from cxrlab.core.errors import ConfigError

Activation = Literal["elu", "relu", "gelu"]
_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "gelu": nn.GELU}


@dataclass(frozen=True)
class HeadSpec:
    """A head: GAP → [Linear → activation → Dropout] per hidden layer → Linear(num_classes).

    Attributes:
        hidden: Widths of the hidden dense layers (empty: a linear classifier).
        dropout: Dropout after each hidden layer (one value per layer).
        activation: ``elu`` (the papers'), ``relu`` or ``gelu``.
    """

    hidden: tuple[int, ...] = (128, 64)
    dropout: tuple[float, ...] = (0.10, 0.05)
    activation: Activation = "elu"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        object.__setattr__(self, "dropout", tuple(float(d) for d in self.dropout))
        if len(self.dropout) != len(self.hidden):
            raise ConfigError(f"head.dropout: need one value per hidden layer ({len(self.hidden)}), got {len(self.dropout)}")
        if any(h < 1 for h in self.hidden) or any(not 0 <= d < 1 for d in self.dropout):
            raise ConfigError(f"head: widths must be >= 1 and dropout in [0, 1), got {self.hidden} / {self.dropout}")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(f"head.activation: choose one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")

    def to_dict(self) -> dict:
        """Plain-dict form."""
        return {**asdict(self), "hidden": list(self.hidden), "dropout": list(self.dropout)}


# The papers' heads: GAP→128→64→3 with ELU and dropout 0.10/0.05; 128→32; 1024→1024.
HEAD_PRESETS: dict[str, HeadSpec] = {
    "gap-128-64": HeadSpec((128, 64), (0.10, 0.05), "elu"),
    "gap-128-32": HeadSpec((128, 32), (0.10, 0.05), "elu"),
    "gap-1024-1024": HeadSpec((1024, 1024), (0.5, 0.5), "relu"),
    "gap-linear": HeadSpec((), (), "elu"),
}


def get_head_spec(name_or_spec: str | HeadSpec) -> HeadSpec:
    """A preset by name, or the spec itself.

    Raises:
        ConfigError: unknown preset (the message lists the presets).
    """
    if isinstance(name_or_spec, HeadSpec):
        return name_or_spec
    try:
        return HEAD_PRESETS[name_or_spec]
    except KeyError:
        raise ConfigError(f"head: unknown preset {name_or_spec!r}; valid: {', '.join(HEAD_PRESETS)}") from None


class ClassifierHead(nn.Module):
    """GAP plus dense layers on a ``(B, C, H, W)`` feature map → ``(B, num_classes)`` logits."""

    def __init__(self, in_features: int, num_classes: int, spec: HeadSpec) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for hidden, drop in zip(spec.hidden, spec.dropout):
            layers += [nn.Linear(width, hidden), _ACTIVATIONS[spec.activation](), nn.Dropout(drop)]
            width = hidden
        self.mlp = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.mean(dim=(2, 3)) if features.ndim == 4 else features
        return self.fc(self.mlp(pooled))

