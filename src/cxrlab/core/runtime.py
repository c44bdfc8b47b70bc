"""Runtime environment checks and tuning: Java for Spark, glibc allocator, worker counts."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

from cxrlab.core.errors import MissingDependencyError

log = logging.getLogger(__name__)

JAVA_HELP = ("install Java 17 or newer, e.g. 'sudo apt-get install -y openjdk-17-jre-headless' "
             "(Debian/Ubuntu) or 'brew install openjdk@17' (macOS), and put 'java' on PATH or set JAVA_HOME")


def find_java() -> tuple[str, int] | None:
    """Return ``(java executable, major version)`` or ``None`` when no Java is found."""
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "java")] if home else []
    candidates.append(shutil.which("java") or "")
    for java in filter(None, candidates):
        if not Path(java).exists():
            continue
        try:
            out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            continue
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        if match:
            major = int(match.group(1))
            return java, (int(match.group(2) or 0) if major == 1 else major)
    return None


def check_java(min_major: int = 17) -> str:
    """Make sure Java ``min_major``+ is available (PySpark 4 needs 17).

    Returns:
        The path of the ``java`` executable.

    Raises:
        MissingDependencyError: no Java, or too old, with install instructions.
    """
    found = find_java()
    if found is None:
        raise MissingDependencyError(f"Java was not found; the Spark engine needs it: {JAVA_HELP}")
    java, major = found
    if major < min_major:
        raise MissingDependencyError(f"{java} is Java {major}; the Spark engine needs Java {min_major}+: {JAVA_HELP}")
    return java


def tune_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the OS on every free.

    Decoding and resizing allocate and free megabyte buffers per image; with glibc's defaults
    each one is an ``mmap``/``munmap`` pair with page faults, measured here at up to half of
    a step. Same effect as ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<large>``.

    Returns:
        True when glibc's ``mallopt`` accepted both settings (False elsewhere, harmlessly).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 1 << 30))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the OS (glibc's ``malloc_trim``): between the stages of a run,
    so that what :func:`tune_allocator` keeps for the training steps does not add to the next stage's peak.

    Returns:
        True when glibc released something (False elsewhere, harmlessly).
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return False
    return bool(trim(0)) if trim is not None else False


def default_workers() -> int:
    """Worker processes to use: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def exit_with_parent(poll_s: float = 0.5) -> None:
    """In a worker process: exit as soon as the process that started it is gone.

    A pool's workers wait on their task queue for ever once their parent is killed (``kill -9``:
    no shutdown runs), each holding its memory. A daemon thread notices the re-parenting and ends
    the process. A thread rather than Linux's ``PR_SET_PDEATHSIG``: that fires when the parent's
    *thread* that started the worker ends, which a pool does not promise to keep alive.
    """
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()
