"""Packages that only some commands need, installed as extras: ``cxrlab[spark]`` (the Spark
engine), ``cxrlab[track]`` (MLflow tracking), ``cxrlab[serve]`` (the web service and ONNX), or
``cxrlab[all]``. A command that needs a missing one says which extra to install."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from cxrlab.core.errors import MissingDependencyError

EXTRAS = {"pyspark": "spark", "mlflow": "track", "fastapi": "serve", "uvicorn": "serve", "multipart": "serve",
          "onnx": "serve", "onnxscript": "serve", "onnxruntime": "serve"}


def available(module: str) -> bool:
    """Whether ``module`` can be imported (a module blocked as ``sys.modules[name] = None`` cannot)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked or half-initialised in sys.modules
        return False


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` for ``what`` (e.g. ``"cxrlab serve"``).

    Raises:
        MissingDependencyError: it is not installed; names the extra that installs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        extra = EXTRAS.get(module.split(".")[0], "all")
        raise MissingDependencyError(f"{what} needs the {module.split('.')[0]} package, which is not installed: "
                                     f"pip install 'cxrlab[{extra}]'") from None
