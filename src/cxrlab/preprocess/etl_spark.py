"""The prepare job on Apache Spark: each shard is one Spark task running :func:`run_shard`.

Tasks write their shard files themselves (atomically), exactly as the local engine does, so
the output is byte-for-byte the same format and resumable; on a cluster, ``OUT`` must be on
storage every executor can write: an object store's URL (``s3://...``; the executors need the
protocol's fsspec package and credentials) or a shared file system. The executors' Python is the
user's Spark setting (``spark.pyspark.python`` or ``PYSPARK_PYTHON``); only without one does a
``local`` master use this interpreter.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict

from cxrlab.core.optional import require
from cxrlab.core.runtime import check_java
from cxrlab.preprocess.etl import ShardResult, ShardTask, run_shard

log = logging.getLogger(__name__)
_JOB_GROUP = "cxrlab-prepare"


def _run_task(task: dict) -> dict:
    result = run_shard(ShardTask(**{**task, "rows": tuple(task["rows"])}))
    return asdict(result)


DEFAULT_CONF = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.task.maxFailures": "2"}


def get_spark(master: str, conf: dict[str, str] | None = None):
    """Get or create a SparkSession for ``master`` with a quiet console and ``conf`` on top of
    :data:`DEFAULT_CONF`.

    The executors' Python is the user's (``spark.pyspark.python`` in ``conf``, or ``PYSPARK_PYTHON``):
    on a cluster only the user knows where cxrlab is installed. Without either, a ``local`` master
    runs this interpreter (it has cxrlab and its dependencies).

    Raises:
        MissingDependencyError: Java 17+ is missing.
    """
    check_java()
    conf = {**DEFAULT_CONF, **(conf or {})}
    chosen = conf.get("spark.pyspark.python") or os.environ.get("PYSPARK_PYTHON")
    if not chosen and master.startswith("local"):
        conf["spark.pyspark.python"] = sys.executable
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read when PySpark launches the JVM
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)  # the driver is this process
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # stay on loopback
    SparkSession = require("pyspark.sql", "the Spark engine (--engine spark)").SparkSession

    builder = SparkSession.builder.master(master).appName("cxrlab-prepare")
    for key, value in conf.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_spark(tasks: list[ShardTask], master: str, progress: Callable[[ShardResult], None],
              conf: dict[str, str] | None = None) -> list[ShardResult]:
    """Run shard tasks as one Spark job (one partition per shard).

    Args:
        tasks: Shards to make.
        master: Spark master URL, e.g. ``local[2]`` or ``spark://host:7077``.
        progress: Called once per finished shard (after the job, in shard order; the
            progress bar is fed from Spark's status tracker while it runs).
        conf: Spark settings (see :func:`get_spark`).
    """
    spark = get_spark(master, conf)
    sc = spark.sparkContext
    sc.setJobGroup(_JOB_GROUP, "cxrlab prepare", interruptOnCancel=True)
    rdd = sc.parallelize([asdict(t) for t in tasks], numSlices=len(tasks)).map(_run_task)
    box: dict = {}

    def collect() -> None:
        try:
            box["results"] = rdd.collect()
        except BaseException as err:  # re-raised in the caller's thread
            box["error"] = err

    worker = threading.Thread(target=collect, daemon=True)
    worker.start()
    done = 0
    tracker = sc.statusTracker()
    sizes = {t.index: len(t.rows) for t in tasks}
    while worker.is_alive():
        worker.join(0.5)
        finished = 0
        for job in tracker.getJobIdsForGroup(_JOB_GROUP):
            info = tracker.getJobInfo(job)
            for stage in (info.stageIds if info else []):
                stage_info = tracker.getStageInfo(stage)
                finished += stage_info.numCompletedTasks if stage_info else 0
        while done < min(finished, len(tasks)):  # approximate per-shard progress while running
            progress(ShardResult(-1, sizes[tasks[done].index], ()))
            done += 1
        time.sleep(0.1)
    if "error" in box:
        raise box["error"]
    results = [ShardResult(r["index"], r["written"], tuple(map(tuple, r["skipped"])), r["seconds"], r["artifacts"])
               for r in box["results"]]
    for result in results[done:]:
        progress(result)
    return results
