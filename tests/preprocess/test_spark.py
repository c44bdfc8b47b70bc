"""The Spark engine runs the same transform as the local engine: identical shards."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.core.runtime import find_java
from cxrlab.data import load_source
from cxrlab.preprocess import PreprocessConfig, ShardReader, prepare
from cxrlab.preprocess.shards import SHARD_DIR

pytestmark = [pytest.mark.spark, pytest.mark.skipif(find_java() is None, reason="Java 17+ not installed (make test checks for it)")]


def test_spark_and_local_give_identical_shards_and_resume(bad_tree, tmp_path):
    manifest = load_source(bad_tree[0])
    config = PreprocessConfig(size=32, contrast="clahe")
    local = prepare(manifest, tmp_path / "local", config, engine="local", workers=1, shard_size=4)
    spark = prepare(manifest, tmp_path / "spark", config, engine="spark", workers=2, shard_size=4)
    names = sorted(p.name for p in (tmp_path / "local" / SHARD_DIR).iterdir())
    assert names == sorted(p.name for p in (tmp_path / "spark" / SHARD_DIR).iterdir())
    for name in names:
        assert (tmp_path / "local" / SHARD_DIR / name).read_bytes() == (tmp_path / "spark" / SHARD_DIR / name).read_bytes()
    assert np.array_equal(ShardReader(tmp_path / "local").images(), ShardReader(tmp_path / "spark").images())
    assert spark.skipped == local.skipped and spark.class_counts == local.class_counts
    (tmp_path / "spark" / SHARD_DIR / names[1]).unlink()  # lose one shard: only it is redone
    again = prepare(manifest, tmp_path / "spark", config, engine="spark", workers=2, shard_size=4)
    assert again.shards_written == 1 and again.shards_reused == len(names) - 1
    assert (tmp_path / "spark" / SHARD_DIR / names[1]).read_bytes() == (tmp_path / "local" / SHARD_DIR / names[1]).read_bytes()
