"""The prepare job on Apache Spark: each shard is one Spark task running :func:`run_shard`.

Tasks write their shard files themselves (atomically), exactly as the local engine does, so
the output is byte-for-byte the same format and resumable; on a cluster, ``OUT`` must be on
storage every executor can write (a shared file system).
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


def get_spark(master: str):
    """Get or create a SparkSession for ``master`` with a quiet console and this Python.

    Raises:
        MissingDependencyError: Java 17+ is missing.
    """
    check_java()
    # Workers must run this interpreter (it has cxrlab and its dependencies); PySpark reads
    # these when it launches the JVM, so set them before the session exists.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")  # stay on loopback
    SparkSession = require("pyspark.sql", "the Spark engine (--engine spark)").SparkSession

    spark = (SparkSession.builder.master(master).appName("cxrlab-prepare")
             .config("spark.ui.enabled", "false")
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.pyspark.python", sys.executable)
             .config("spark.pyspark.driver.python", sys.executable)
             .config("spark.task.maxFailures", "2")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def run_spark(tasks: list[ShardTask], master: str, progress: Callable[[ShardResult], None]) -> list[ShardResult]:
    """Run shard tasks as one Spark job (one partition per shard).

    Args:
        tasks: Shards to make.
        master: Spark master URL, e.g. ``local[2]`` or ``spark://host:7077``.
        progress: Called once per finished shard (after the job, in shard order; the
            progress bar is fed from Spark's status tracker while it runs).
    """
    spark = get_spark(master)
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
