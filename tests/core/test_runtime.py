"""Worker processes end with their parent, even when the parent is killed without any shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from cxrlab.core.runtime import exit_with_parent
with ProcessPoolExecutor(2, initializer=exit_with_parent) as pool:
    futures = [pool.submit(time.sleep, 600) for _ in range(2)]
    time.sleep(0.5)
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"  # a zombie has ended; it only waits to be reaped
    except FileNotFoundError:
        return False


def test_pool_workers_exit_when_their_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    os.kill(parent.pid, signal.SIGKILL)  # no atexit, no pool shutdown
    parent.wait()
    deadline = time.monotonic() + 30  # a wait bound, not a speed claim: they poll every 0.5 s
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers)
