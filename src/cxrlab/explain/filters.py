"""First-layer filters of the pretrained vs the fine-tuned model, side by side."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``Conv2d`` of a model (in registration order, which timm keeps in forward order)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def _tiles(weight: torch.Tensor, limit: int) -> list[np.ndarray]:
    tiles = []
    for w in weight[:limit].detach().float().numpy():
        w = (w - w.min()) / (w.max() - w.min() + 1e-8)
        tiles.append(np.transpose(w, (1, 2, 0)) if w.shape[0] == 3 else w[0])
    return tiles


def plot_first_layer_filters(finetuned: nn.Module, pretrained: nn.Module | None, path: Path, limit: int = 32) -> Path:
    """Grids of the first convolution's filters; also states how far fine-tuning moved them.

    Args:
        finetuned: The trained model.
        pretrained: The same architecture with its starting weights (``None``: show one grid).
        path: PNG to write.
        limit: Filters shown per grid.
    """
    models = [("fine-tuned", finetuned)] + ([("pretrained", pretrained)] if pretrained is not None else [])
    columns = 8
    rows = int(np.ceil(min(limit, first_conv(finetuned).weight.shape[0]) / columns))
    fig, axes = plt.subplots(rows, columns * len(models) + len(models) - 1, figsize=(1.1 * columns * len(models) + 1, 1.2 * rows + 0.8),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for m, (title, model) in enumerate(models):
        offset = m * (columns + 1)
        for i, tile in enumerate(_tiles(first_conv(model).weight, limit)):
            axes[i // columns, offset + i % columns].imshow(tile, cmap="gray" if tile.ndim == 2 else None)
        axes[0, offset].set_title(title, loc="left", fontsize=10)
    subtitle = ""
    if pretrained is not None:
        a, b = first_conv(finetuned).weight.detach(), first_conv(pretrained).weight.detach()
        subtitle = f" (mean |change| {float((a - b).abs().mean()):.2e}; relative {float((a - b).norm() / b.norm()):.2%})"
    fig.suptitle("first-layer filters" + subtitle, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
