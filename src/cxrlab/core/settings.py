"""Settings files and overrides, one way for every command (train, segment, study, tune).

* A config is a YAML mapping of ``field: value``; relative ``data``/``splits``/``init_from`` paths in it resolve
  against the file's folder when something is there, else against the current directory.
* ``--set KEY=VALUE`` (repeatable) overrides any field; dotted keys reach nested ones
  (``augment.enabled=true``, a study's ``base.lr=1e-4``); values are YAML (``1e-4``, ``[0, 2]``, ``true``).
* A bad field is one line naming the file, the field and the reason, with the closest field name
  for a typo.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cxrlab.core.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
PATH_FIELDS = ("data", "splits", "init_from")


def read_yaml_mapping(path: str | Path) -> dict:
    """The ``field: value`` mapping a YAML config file holds (empty file: ``{}``).

    Raises:
        ConfigError: unreadable file, bad YAML, or not a mapping.
    """
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config ({err.strerror or err})") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: cannot read config (not UTF-8 text)") from err
    except yaml.YAMLError as err:  # one line: where, and what the parser expected
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}: not valid YAML ({where}{' '.join(str(problem).split())})") from err
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config must be a mapping of field: value")
    return values


def resolve_paths(values: dict, folder: Path) -> dict:
    """``values`` with relative ``data``/``splits`` resolved against ``folder`` where something is there."""
    for key in PATH_FIELDS:
        if isinstance(values.get(key), str) and values[key] and not Path(values[key]).is_absolute():
            candidate = folder / values[key]
            values[key] = str(candidate) if candidate.exists() else values[key]
    return values


def apply_assignments(values: dict, assignments: Sequence[str]) -> dict:
    """``values`` with each ``KEY=VALUE`` of ``assignments`` set (dotted keys nest; values are YAML).

    Raises:
        ConfigError: an assignment without ``=``, or a dotted key through a field that is not a mapping.
    """
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. lr=1e-4 or augment.enabled=true")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        if isinstance(value, str) and NUMBER.fullmatch(raw.strip()):  # unquoted only: '1e3' stays text
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as text
        *parents, leaf = key.strip().split(".")
        target = values
        for part in parents:
            if target.get(part) is None:  # absent, or an empty `part:` in the YAML
                target[part] = {}
            target = target[part]
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a group of settings")
        target[leaf] = value
    return values


def closest_hint(name: str, names, prefix: str = "") -> str:
    """``"; did you mean 'PREFIX+closest'?"`` for a mistyped ``name`` among ``names``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(names), n=1)
    return f"; did you mean {prefix + close[0]!r}?" if close else ""


def _branch_tag(part) -> bool:
    """Whether a part of an error's location names a union's branch (``str``, ``HeadConfig``,
    ``function-after[...]``), not a field or an index."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list", "dict"} or part[:1].isupper()
                                      or "[" in part)


def format_error(err: ValidationError, origin: str, model: type[BaseModel]) -> str:
    """One line for a validation error: ``origin: field 'x': reason`` (an unknown field first, with the
    closest known name)."""
    # a typo is also a missing field; of a union's branches (head: a preset name or {hidden, dropout}), the
    # one the value's type fits says what is wrong, not "should be a valid string"
    errors = sorted(err.errors(), key=lambda e: (e["type"] != "extra_forbidden", e["type"].endswith("_type")))
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"] if not _branch_tag(p)) or "config"
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        for part in first["loc"][:-1]:
            annotation = model.model_fields[part].annotation if isinstance(part, str) and part in model.model_fields else None
            inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type) and issubclass(a, BaseModel)]
            model = inner[0] if inner else model
        message = "unknown field" + closest_hint(first["loc"][-1], model.model_fields)
    fields = {tuple(p for p in e["loc"] if not _branch_tag(p)) for e in errors}  # a union's branches: one field
    more = f" (+{len(fields) - 1} more)" if len(fields) > 1 else ""
    leaf = field.rsplit(".", 1)[-1]
    if not first["loc"] or message.startswith((f"{field}.", f"{field}:", f"{leaf}.", f"{leaf}:")):  # it names its field
        return f"{origin}: {message}{more}"
    return f"{origin}: field {field!r}: {message}{more}"


SETTINGS_RULES = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
"""What every group of settings obeys: an unknown name is refused, values are frozen, and no float may be
infinite or NaN (``lr=inf`` would train until the weights are NaN; a bound like ``ge=0`` alone lets it by)."""


class Settings(BaseModel):
    """A frozen group of settings (a config section): each field has one default, one type with its
    bounds and one description, from which the command line's options and ``config show`` are derived;
    an unknown name is refused. Built directly, a bad value is a :class:`ConfigError` naming
    ``section.field``."""

    model_config = SETTINGS_RULES
    section: ClassVar[str] = "config"

    def __init__(self, **values) -> None:
        try:
            super().__init__(**values)
        except ValidationError as err:  # "preprocess.size: Input should be ..."
            first = err.errors()[0]
            where = ".".join([self.section, *map(str, first["loc"])])
            message = "unknown setting" + closest_hint(first["loc"][-1], type(self).model_fields) \
                if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{where}: {message}") from None

    def updated(self, **values):
        """A validated copy with ``values`` changed."""
        return type(self)(**{**self.model_dump(), **values})


def field_help(model: type[BaseModel], name: str) -> str:
    """The one-line help of a setting, from its field: its description and its default (what a command's
    option shows, so the two cannot differ)."""
    field = model.model_fields[name]
    text = (field.description or name.replace("_", " ")).rstrip(".")
    if "default" in text:  # the description says what the default means
        return text + "."
    default = field.get_default(call_default_factory=True)
    shown = "none" if default is None else ",".join(map(str, default)) if isinstance(default, tuple) else default
    return f"{text} (default: {shown})."


def validate(model: type[M], values: dict, origin: str) -> M:
    """``model(**values)``, or a :class:`ConfigError` of :func:`format_error`."""
    try:
        return model(**values)
    except ValidationError as err:
        raise ConfigError(format_error(err, origin, model)) from None


def load_settings(model: type[M], path: str | Path | None, overrides: dict | None = None,
                  assignments: Sequence[str] = (), normalize: Callable[[dict], dict] | None = None,
                  key: Callable[[str], str] | None = None) -> M:
    """A config of type ``model`` from a YAML file (or none), then ``overrides`` (as given: a ``None``
    clears a field), then ``--set`` ``assignments``. ``normalize`` rewrites the file's mapping into
    ``model``'s own field names (e.g. settings written in sections) and ``key`` an assignment's key.

    Raises:
        ConfigError: unreadable file, a bad assignment or an invalid field (named).
    """
    origin = str(path) if path is not None else "config"
    try:
        values = (normalize or dict)(read_yaml_mapping(path)) if path is not None else {}
        assignments = [f"{key(k.strip())}={v}" if key and sep else f"{k}{sep}{v}"
                       for k, sep, v in (item.partition("=") for item in assignments)]
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{origin}: {err}") from None
    values = resolve_paths(values, Path(path).parent) if path is not None else values
    values.update(overrides or {})
    apply_assignments(values, assignments)
    return validate(model, values, origin)
