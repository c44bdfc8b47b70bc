"""Reusing a finished run: a rerun of the same settings takes it, other settings are refused by name."""

from __future__ import annotations

from pathlib import Path

from cxrlab.core.errors import ConfigError
from cxrlab.core.run_folder import CONFIG
from cxrlab.train.config import RECIPES, TrainConfig, flatten_settings


def check_same_config(run_dir: Path, config: TrainConfig) -> None:
    """Refuse to reuse a finished run whose recorded config differs from the one planned now.

    Raises:
        ConfigError: the study folder holds this run with other settings.
    """
    recorded = run_dir / CONFIG
    if not recorded.exists():
        return
    import yaml

    # flat, or in this or an earlier version's sections; a setting since removed is left out
    old = flatten_settings(yaml.safe_load(recorded.read_text()) or {}, unknown="drop")
    new = config.flat()
    # tta: the ensemble's, not a run's; recipe: only a source of the other (compared) values; out,
    # splits: the run's own folder (another worker's, for a run taken from a share)
    ignore = {"mlflow_tags", "mlflow_uri", "prefix_store", "prepared", "progress_bar", "tta", "recipe", "out", "splits"}
    # settings added since a run was recorded count at their defaults (the preprocessing settings an earlier
    # version fixed, clahe_clip and the like, had the values that are now their defaults)
    defaults = flatten_settings(TrainConfig.model_construct().to_sections())
    diff = sorted(k for k in new if k not in ignore and old.get(k, defaults.get(k)) != new[k])
    if diff:
        hint = ""
        if config.recipe != "papers" and all(old.get(k) == v for k, v in RECIPES["papers"].items() if k in diff):
            hint = " (it matches the papers' recipe, cxrlab's earlier default: add recipe: papers to keep it)"
        raise ConfigError(f"{run_dir}: was trained with other settings ({', '.join(diff)}){hint}; "
                          "use a new study folder (--out) or delete that run")
