"""``cxrlab doctor``: check what the set-up needs (Python packages, Java for Spark)."""

from __future__ import annotations

import importlib
from importlib import metadata
import platform
from typing import Annotated

import typer

from cxrlab.cli._common import console, err_console
from cxrlab.core.runtime import JAVA_HELP, find_java

# import name → distribution name (for the version)
_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pandas": "pandas",
             "pyarrow": "pyarrow", "cv2": "opencv-python-headless", "PIL": "pillow", "pydicom": "pydicom",
             "imagehash": "imagehash", "sklearn": "scikit-learn", "scipy": "scipy", "pyspark": "pyspark",
             "typer": "typer", "rich": "rich", "yaml": "pyyaml"}


def doctor(require_java: Annotated[bool, typer.Option(help="Fail when Java 17+ is missing.")] = False) -> None:
    """Report Python, package versions and Java; exit 1 when something required is missing."""
    console.print(f"python {platform.python_version()} on {platform.machine()}")
    ok = True
    for name, dist in _PACKAGES.items():
        try:
            importlib.import_module(name)
            console.print(f"  {dist:22s} {metadata.version(dist)}")
        except (ImportError, metadata.PackageNotFoundError) as err:
            ok = False
            err_console.print(f"  [red]{dist:22s} missing[/] ({err}); run 'make install'")
    java = find_java()
    if java and java[1] >= 17:
        console.print(f"  {'java':22s} {java[1]} ({java[0]})")
    else:
        found = f"Java {java[1]} at {java[0]} is too old" if java else "Java not found"
        err_console.print(f"  [yellow]java[/]                   {found}: the Spark engine (--engine spark) needs Java 17+; {JAVA_HELP}")
        ok = ok and not require_java
    if not ok:
        raise typer.Exit(1)
