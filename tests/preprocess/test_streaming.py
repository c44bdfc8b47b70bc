"""Streamed shards: the same images as in memory, a bounded cache, and a shard-aware shuffle."""

from __future__ import annotations

import numpy as np
import pytest

from cxrlab.data import load_source
from cxrlab.preprocess import PreprocessConfig, ShardAwareSampler, ShardReader, prepare


@pytest.fixture(scope="module")
def prepared(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    prepare(load_source(phantoms), out, PreprocessConfig(size=48, keep_mask=True), workers=1, shard_size=4)
    return out


def test_streamed_shards_hold_what_memory_holds_and_keep_few_shards_decoded(prepared):
    memory, streamed = ShardReader(prepared, lazy=False), ShardReader(prepared, lazy=True, cache_shards=2)
    assert streamed.lazy and not memory.lazy and len(streamed) == len(memory)
    assert streamed.table.equals(memory.table)
    for i in np.random.default_rng(0).permutation(len(memory)):
        assert np.array_equal(streamed.image(i), memory.image(i))
        assert np.array_equal(streamed.mask(i), memory.mask(i))
        assert len(streamed._cache) <= 2  # decoded shards stay bounded, whatever the number of images
    assert len(np.unique(streamed.shard_of)) == -(-len(memory) // 4)  # 4 images a shard


def test_the_reader_streams_by_itself_above_the_memory_limit(prepared, monkeypatch):
    monkeypatch.setenv("CXRLAB_IN_MEMORY_GB", "0.000001")
    assert ShardReader(prepared).lazy
    monkeypatch.setenv("CXRLAB_IN_MEMORY_GB", "100")
    assert not ShardReader(prepared).lazy


def test_the_shard_aware_order_visits_a_few_shards_at_a_time_and_replays_by_epoch():
    shard_of = np.repeat(np.arange(20), 5)  # 20 shards of 5 items
    sampler = ShardAwareSampler(shard_of, seed=3, buffer=4)
    first = list(sampler)
    assert sorted(first) == list(range(100))  # a permutation: every item once
    for start in range(0, 100, 20):  # each run of 20 items (4 shards' worth) comes from 4 shards
        assert len(set(shard_of[first[start:start + 20]])) == 4
    assert list(sampler) == first  # same epoch, same order
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first and sorted(second) == list(range(100))
    resumed = ShardAwareSampler(shard_of, seed=0, buffer=4)
    resumed.load_state_dict(sampler.state_dict(), consumed=30)  # a resumed run picks up where it was
    assert list(resumed) == second[30:]


def test_weighted_shard_aware_sampling_balances_classes():
    shard_of = np.repeat(np.arange(50), 20)
    labels = (np.arange(1000) % 10 == 0).astype(int)  # 10% positives
    weights = 1.0 / np.bincount(labels)[labels]
    drawn = list(ShardAwareSampler(shard_of, seed=0, buffer=10, weights=weights))
    assert len(drawn) == 1000 and 0.4 < labels[drawn].mean() < 0.6  # ~half positives after balancing


def test_a_streamed_dataset_trains_through_the_shard_aware_sampler(phantoms, tmp_path, monkeypatch):
    from cxrlab.train import build_config, train

    monkeypatch.setenv("CXRLAB_IN_MEMORY_GB", "0")
    config = build_config({"data": str(phantoms), "out": str(tmp_path / "run"), "size": 48, "epochs": 1,
                           "fine_tune": 1, "batch_size": 8, "ratios": (0.6, 0.2, 0.2), "progress_bar": False,
                           "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"})
    from cxrlab.train.data import datasets, load_train_data, loader
    from cxrlab.models import get_backbone_spec

    data = load_train_data(config, get_backbone_spec(config.model.backbone), tmp_path / "run")
    assert data.reader.lazy
    train_ds, _ = datasets(data, config, get_backbone_spec(config.model.backbone))
    assert isinstance(loader(train_ds, config, True, 0).sampler, ShardAwareSampler)
    result = train(config)
    assert result.summary["status"] == "ok" and result.summary["images"]["train"] == len(train_ds)
