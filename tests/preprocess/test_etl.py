"""The prepare job: shards, bad input, resume, and the plan check."""

from __future__ import annotations

import numpy as np
import pytest

import cxrlab.preprocess.etl as etl
from cxrlab.core import ConfigError, ManifestError
from cxrlab.data import load_source
from cxrlab.preprocess import PreprocessConfig, Preprocessor, ShardReader, prepare
from cxrlab.preprocess.shards import SHARD_DIR

CONFIG = PreprocessConfig(size=32, contrast="clahe")


def test_prepare_writes_readable_shards(phantoms, tmp_path):
    manifest = load_source(phantoms)
    summary = prepare(manifest, tmp_path / "out", CONFIG, workers=1, shard_size=10)
    reader = ShardReader(tmp_path / "out")
    assert len(reader) == len(manifest) == summary.images
    assert summary.class_counts == manifest.class_counts() | {}
    assert sum(sum(v.values()) for v in summary.source_counts.values()) == len(manifest)
    image, row = reader[3]
    assert image.shape == (32, 32) and image.dtype == np.uint8
    expected = Preprocessor(CONFIG)(row["image"]).pixels  # shards hold exactly what the pipeline makes
    assert np.array_equal(image, expected)
    assert reader.config == CONFIG.to_dict()
    assert (tmp_path / "out" / "prepare_report.json").exists()


def test_process_pool_gives_identical_shards(phantoms, tmp_path):
    manifest = load_source(phantoms)
    prepare(manifest, tmp_path / "one", CONFIG, workers=1, shard_size=8)
    prepare(manifest, tmp_path / "two", CONFIG, workers=2, shard_size=8)
    for f in sorted((tmp_path / "one" / SHARD_DIR).iterdir()):
        assert f.read_bytes() == (tmp_path / "two" / SHARD_DIR / f.name).read_bytes()


def test_bad_files_are_skipped_and_reported(bad_tree, tmp_path):
    root, expected = bad_tree
    summary = prepare(load_source(root), tmp_path / "out", CONFIG, workers=1, shard_size=4)
    reasons = {image.rsplit("/", 1)[1]: reason for image, reason in summary.skipped}
    for name, fragment in expected.items():
        assert fragment in reasons[name], (name, reasons.get(name))
    assert summary.images == 10  # 9 good PNG/JPEG files + one good DICOM
    skipped_csv = (tmp_path / "out" / "skipped.csv").read_text()
    assert all(name in skipped_csv for name in expected)


def test_interrupted_prepare_resumes_without_rewriting(phantoms, tmp_path, monkeypatch):
    manifest = load_source(phantoms)
    real_run_shard = etl.run_shard
    calls = []

    def crash_on_third(task):
        calls.append(task.index)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C (or the machine died) mid-run
        return real_run_shard(task)

    monkeypatch.setattr(etl, "run_shard", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(manifest, tmp_path / "out", CONFIG, workers=1, shard_size=5)
    shards = sorted((tmp_path / "out" / SHARD_DIR).glob("part-*.parquet"))
    assert len(shards) == 2 and not list((tmp_path / "out" / SHARD_DIR).glob("*.tmp"))
    mtimes = {p.name: p.stat().st_mtime_ns for p in shards}
    monkeypatch.setattr(etl, "run_shard", real_run_shard)
    summary = prepare(manifest, tmp_path / "out", CONFIG, workers=1, shard_size=5)
    assert summary.shards_reused == 2 and summary.images == len(manifest)
    assert {p.name: p.stat().st_mtime_ns for p in shards} == mtimes  # finished shards untouched
    fresh = prepare(manifest, tmp_path / "fresh", CONFIG, workers=1, shard_size=5)
    assert np.array_equal(ShardReader(tmp_path / "out").images(), ShardReader(tmp_path / "fresh").images())
    assert fresh.class_counts == summary.class_counts


def test_other_settings_in_same_folder_are_refused(phantoms, tmp_path):
    manifest = load_source(phantoms)
    prepare(manifest, tmp_path / "out", CONFIG, workers=1)
    with pytest.raises(ConfigError, match="differs in config"):
        prepare(manifest, tmp_path / "out", PreprocessConfig(size=48), workers=1)
    summary = prepare(manifest, tmp_path / "out", PreprocessConfig(size=48), workers=1, overwrite=True)
    assert ShardReader(tmp_path / "out").image(0).shape == (48, 48) and summary.shards_reused == 0


def test_several_prepared_folders_read_as_one(phantoms, tmp_path):
    from cxrlab.data import Manifest

    manifest = load_source(phantoms)
    table = manifest.table.reset_index(drop=True)
    halves = [table.iloc[: len(table) // 2], table.iloc[len(table) // 2:]]
    for i, half in enumerate(halves):
        prepare(Manifest(half, manifest.class_names), tmp_path / f"part{i}", CONFIG, workers=1, shard_size=7)
    whole = ShardReader([tmp_path / "part0", tmp_path / "part1"])
    assert sorted(whole.table["image"]) == sorted(table["image"]) and whole.config == CONFIG.to_dict()
    alone = ShardReader(tmp_path / "part1")
    index = whole.select(alone.table["image"].iloc[[2]])[0]
    assert np.array_equal(whole.image(index), alone.image(2))  # pixels stay with their row
    prepare(Manifest(halves[0], manifest.class_names), tmp_path / "other", PreprocessConfig(size=48), workers=1)
    with pytest.raises(ManifestError, match="other settings"):
        ShardReader([tmp_path / "part0", tmp_path / "other"])
