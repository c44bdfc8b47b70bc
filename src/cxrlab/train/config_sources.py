"""Where a run's settings came from: recorded beside its ``config.yaml`` (:data:`cxrlab.core.run_folder.SOURCES`)
and shown by ``cxrlab config show``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from cxrlab.core.errors import ConfigError
from cxrlab.core.io import atomic_write_text
from cxrlab.core.run_folder import CONFIG, SOURCES
from cxrlab.train.config import SECTIONS, TrainConfig, load_config, setting_sources


def write_sources(config: TrainConfig, out: str | Path) -> None:
    """Record where each setting of a run came from (:func:`setting_sources`) beside its config.yaml."""
    atomic_write_text(Path(out) / SOURCES, json.dumps(setting_sources(config), indent=1) + "\n")


def describe_sources(run: str | Path | None, path: str | Path | None = None,
                     assignments: Sequence[str] = ()) -> tuple[list[dict], str]:
    """Every setting of a run folder (its ``config.yaml``, and the sources its training recorded in
    :data:`SOURCES`), or of a config file with ``--set`` assignments (what ``train`` would use), as
    ``({"setting", "value", "source"} rows, recipe)``.

    Raises:
        ConfigError: no config.yaml in the run folder, or an invalid config (named).
    """
    if run is not None:
        recorded = Path(run) / CONFIG
        if not recorded.is_file():
            raise ConfigError(f"{run}: not a run folder (no config.yaml)")
        config = load_config(recorded)
        sources_file = Path(run) / SOURCES
        earlier = json.loads(sources_file.read_text()) if sources_file.is_file() else {}
        sources = {key: earlier.get(key) or _by_default(config, key) for key in setting_sources(config)}
    else:
        config = load_config(path, {}, assignments) if path is not None or assignments else None
        if config is None:
            raise ConfigError("give a run folder, or --config and/or --set")
        sources = setting_sources(config)
    values = config.to_sections()
    rows = [{"setting": key, "value": values[key.partition(".")[0]][key.partition(".")[2]], "source": source}
            for key, source in sources.items()]
    return rows, config.recipe


def _by_default(config: TrainConfig, key: str) -> str:
    """A run that recorded no sources (an earlier version's): its config.yaml, or the default where the
    value is the default's."""
    section, _, name = key.partition(".")
    field = SECTIONS[section].model_fields[name]
    value = getattr(getattr(config, section), name)
    default = field.get_default(call_default_factory=True)
    return "default" if value == default else "run's config.yaml"
