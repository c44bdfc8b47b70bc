"""prepare to and from an object store: a real S3-compatible server (moto's) started by the test; the
Spark engine's shards there are the local engine's, byte for byte."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrlab.cli import app
from cxrlab.core.runtime import find_java
from cxrlab.data import load_source
from cxrlab.preprocess import PreprocessConfig, prepare
from cxrlab.preprocess.shards import SHARD_DIR

pytestmark = [pytest.mark.spark,
              pytest.mark.skipif(find_java() is None, reason="Java 17+ not installed (make test checks for it)"),
              pytest.mark.skipif(importlib.util.find_spec("moto") is None or importlib.util.find_spec("s3fs") is None,
                                 reason="moto[server] and s3fs (the test extra) are not installed")]


def _fresh_spark() -> None:
    """Spark's workers take the environment of the JVM when it starts: stop a session started before
    the S3 settings were in it."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def test_spark_prepares_from_and_to_s3_the_local_engines_shards(s3, phantoms, tmp_path):
    root = tmp_path / "root"  # the same layout on both sides: data/ beside prepared/
    shutil.copytree(phantoms.parent, root / "data")
    s3.put(str(root / "data") + "/", "cxr/data/", recursive=True)
    config = PreprocessConfig(size=32, contrast="clahe")
    local = prepare(load_source(root / "data" / "manifest.csv"), root / "prepared", config, workers=1, shard_size=8)
    _fresh_spark()
    result = CliRunner().invoke(app, ["prepare", "--data", "s3://cxr/data/manifest.csv", "--out", "s3://cxr/prepared",
                                      "--size", "32", "--clahe", "--engine", "spark", "--workers", "2",
                                      "--shard-size", "8", "--master", "local[2]",
                                      "--conf", "spark.sql.shuffle.partitions=2"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (root / "prepared" / SHARD_DIR).iterdir())
    assert names == sorted(Path(p).name for p in s3.ls(f"cxr/prepared/{SHARD_DIR}"))
    for name in names:  # byte for byte: the same pixels, labels and (relative) image paths
        assert s3.cat_file(f"cxr/prepared/{SHARD_DIR}/{name}") == (root / "prepared" / SHARD_DIR / name).read_bytes()
    assert s3.exists("cxr/prepared/prepare_report.json") and s3.exists("cxr/prepared/plan.json")
    s3.rm(f"cxr/prepared/{SHARD_DIR}/{names[0]}")  # lose one shard: only it is made again
    again = prepare(load_source("s3://cxr/data/manifest.csv"), "s3://cxr/prepared", config, engine="spark", workers=2,
                    shard_size=8)
    assert again.shards_written == 1 and again.shards_reused == len(names) - 1 and again.images == local.images
    assert s3.cat_file(f"cxr/prepared/{SHARD_DIR}/{names[0]}") == (root / "prepared" / SHARD_DIR / names[0]).read_bytes()


def test_an_object_store_image_that_is_missing_is_named_and_the_rest_prepared(s3, phantoms, tmp_path):
    import pandas as pd

    table = pd.read_csv(phantoms)
    table.loc[0, "image"] = "images/not-there.png"
    s3.put(str(phantoms.parent / "images") + "/", "cxr/other/images/", recursive=True)
    s3.pipe_file("cxr/other/manifest.csv", table.to_csv(index=False).encode())
    manifest = load_source("s3://cxr/other/manifest.csv")
    assert len(manifest) == len(table) - 1
    assert [s.reason for s in manifest.skipped] == ["file not found"]
    assert manifest.skipped[0].image == "s3://cxr/other/images/not-there.png"
    summary = prepare(manifest, "s3://cxr/other/prepared", PreprocessConfig(size=32), workers=1)
    assert summary.images == len(table) - 1
