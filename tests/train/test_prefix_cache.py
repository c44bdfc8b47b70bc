"""Training the trainable suffix on cached activations equals training the whole model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from cxrlab.models import create_classifier
from cxrlab.core.device import Policy
from cxrlab.train import can_cache, compute_prefix


def _train(model, inputs, targets, cached_from: int | None, steps: int = 4):
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    torch.manual_seed(0)  # the head's dropout draws the same masks on both paths
    for step in range(steps):
        x, y = inputs[step % 2 * 8:(step % 2 + 1) * 8], targets[step % 2 * 8:(step % 2 + 1) * 8]
        logits = model.forward_from(x, cached_from) if cached_from else model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_cached_equals_uncached_training():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 64, 64, generator=generator)
    targets = torch.randint(0, 3, (16,), generator=generator)
    plain = create_classifier("efficientnet_lite0", 3, fine_tune=2, seed=0)
    cached = create_classifier("efficientnet_lite0", 3, fine_tune=2, seed=0)
    assert can_cache(cached, augment=False) and not can_cache(cached, augment=True)
    # same batch size as training: oneDNN convolutions round differently for other batch sizes (~1e-5)
    activations = compute_prefix(cached, TensorDataset(images, targets), batch_size=8)
    assert activations.activations.shape[0] == 16 and torch.equal(torch.as_tensor(activations.targets), targets)
    after_plain = _train(plain, images, targets, None)
    after_cached = _train(cached, activations.activations, targets, cached.frozen_blocks)
    changed, initial = 0, create_classifier("efficientnet_lite0", 3, seed=0).state_dict()
    for key, value in after_plain.items():
        assert torch.allclose(value.float(), after_cached[key].float(), atol=1e-5, rtol=1e-4), key
        changed += int(not torch.equal(value, initial[key]))
    assert changed > 0  # training did move the trainable weights


def test_prefix_spills_to_disk_beyond_the_budget(tmp_path):
    model = create_classifier("efficientnet_lite0", 3, fine_tune=1, pretrained="none", seed=0)
    data = TensorDataset(torch.randn(6, 3, 64, 64), torch.zeros(6, dtype=torch.long))
    in_memory = compute_prefix(model, data)
    on_disk = compute_prefix(model, data, max_bytes=1, spill_dir=tmp_path)
    assert list(tmp_path.glob("prefix-*.f32"))
    assert torch.allclose(torch.as_tensor(on_disk.activations[:]), in_memory.activations)


def test_runs_share_a_prefix_store_and_match_in_run_caching(phantoms, tmp_path):
    import json

    import numpy as np

    from cxrlab.train import build_config, train

    base = {"recipe": "papers", "data": str(phantoms), "size": 64, "epochs": 2, "batch_size": 8,  # frozen blocks
            "ratios": (0.6, 0.2, 0.2), "mlflow_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "prepared": str(tmp_path / "prepared")}
    own = train(build_config({**base, "out": str(tmp_path / "own")}))
    shared = train(build_config({**base, "out": str(tmp_path / "shared"), "prefix_store": str(tmp_path / "store")}))
    assert json.dumps(own.summary["val"]) == json.dumps(shared.summary["val"])  # same numbers, either cache
    for a, b in zip(own.model.state_dict().values(), shared.model.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    again = train(build_config({**base, "out": str(tmp_path / "again"), "prefix_store": str(tmp_path / "store")}))
    assert json.dumps(again.summary["val"]) == json.dumps(shared.summary["val"])  # read from the store: same again
    entries = sorted((tmp_path / "store").glob("*.npy"))
    assert len(entries) == 1 and not list((tmp_path / "store").glob("*.tmp.npy"))
    stamp = entries[0].stat().st_mtime_ns
    # another split of the same images (another fold) reuses the entry; another k adds one
    train(build_config({**base, "out": str(tmp_path / "seed1"), "seed": 1, "prefix_store": str(tmp_path / "store")}))
    assert sorted((tmp_path / "store").glob("*.npy")) == entries and entries[0].stat().st_mtime_ns == stamp
    k1 = train(build_config({**base, "out": str(tmp_path / "k1"), "fine_tune": 1, "prefix_store": str(tmp_path / "store")}))
    assert len(list((tmp_path / "store").glob("*.npy"))) == 2
    # the k=1 entry (7 frozen blocks) was built from the k=2 entry (6): one block run, not seven
    derived = [json.loads(p.read_text()) for p in (tmp_path / "store").glob("*.json")]
    assert sorted((d["start_block"], d["from_block"]) for d in derived) == [(6, 0), (7, 6)]
    model = k1.model
    model.set_fine_tune(1)
    from cxrlab.preprocess import ShardDataset, ShardReader

    reader = ShardReader(tmp_path / "prepared")
    everything = ShardDataset(reader, model.class_names, mean=model.spec.mean, std=model.spec.std)
    direct = compute_prefix(model, everything).activations
    entry = next(p for p in (tmp_path / "store").glob("*.json") if json.loads(p.read_text())["start_block"] == 7)
    assert torch.allclose(torch.from_numpy(np.load(entry.with_suffix(".npy"))), direct, atol=1e-4)
    rows = np.load(entries[0], mmap_mode="r").shape[0]
    assert rows == json.loads((tmp_path / "prepared" / "plan.json").read_text())["images"]  # every prepared image


BF16_CPU = Policy("cpu", "cpu", "bf16-mixed", "bf16 autocast as asked")


def test_the_prefix_pass_runs_on_the_run_s_device_and_precision(monkeypatch):
    """The pass follows the policy's device: the model and every batch go there, the autocast is that
    device's (a GPU run's prefix ran on the CPU in emulated bf16, 20x slower), the cache stays on the host."""
    seen = []
    model = create_classifier("efficientnet_lite0", 3, fine_tune=2, pretrained="none", seed=0).eval()
    original = model.forward_blocks

    def forward_blocks(x, start, end):
        seen.append((x.device.type, torch.is_autocast_enabled(x.device.type), next(model.parameters()).device.type))
        return original(x, start, end)

    monkeypatch.setattr(model, "forward_blocks", forward_blocks)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)  # no CUDA here to pin for
    record: dict = {}
    data = TensorDataset(torch.randn(4, 3, 32, 32), torch.zeros(4, dtype=torch.long))
    compute_prefix(model, data, batch_size=4, policy=BF16_CPU, record=record)
    assert seen == [("cpu", True, "cpu")] and record["precision"] == "bf16-mixed"
    calls = []
    monkeypatch.setattr(torch.nn.Module, "to", lambda self, *a, **k: calls.append(a) or self)
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *a, **k: calls.append(a) or self)
    compute_prefix(model, data, batch_size=4, policy=Policy("cuda:1", "gpu", "32-true"))
    assert (torch.device("cuda:1"),) in calls  # model and batches sent to the run's GPU, not left on the CPU


def test_a_bf16_run_caches_the_activations_its_own_autocast_computes():
    model = create_classifier("efficientnet_lite0", 3, fine_tune=2, pretrained="none", seed=0).eval()
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    data = TensorDataset(images, torch.zeros(8, dtype=torch.long))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # what an uncached bf16-mixed step sees
        expected = model.forward_blocks(images, 0, model.frozen_blocks).float()
    record: dict = {}
    cached = compute_prefix(model, data, batch_size=8, policy=BF16_CPU, record=record).activations
    fp32 = compute_prefix(model, data, batch_size=8).activations
    assert cached.dtype == torch.float32 and cached.device.type == "cpu"  # kept in host memory
    assert record == {"device": "cpu", "precision": "bf16-mixed", "processes": 1}  # what the pass ran on
    assert (cached - expected).abs().max() <= 1e-6 * expected.abs().max().clamp(min=1)
    assert (fp32 - expected).abs().max() > 10 * (cached - expected).abs().max()  # fp32 would not match the bf16 step


def test_prefix_store_keys_differ_by_precision(phantoms, tmp_path):
    from cxrlab.data import Manifest, load_source
    from cxrlab.preprocess import PreprocessConfig, ShardDataset, ShardReader, prepare
    from cxrlab.train.prefix_cache import prefix_fingerprint

    source = load_source(phantoms)
    preprocess = PreprocessConfig(size=32)
    prepare(Manifest(source.table.head(4).reset_index(drop=True), source.class_names), tmp_path, preprocess)
    model = create_classifier("efficientnet_lite0", 3, fine_tune=2, pretrained="none", seed=0)
    dataset = ShardDataset(ShardReader(tmp_path), source.class_names, mean=model.spec.mean, std=model.spec.std,
                           in_chans=model.spec.in_chans)
    assert prefix_fingerprint(model, preprocess, dataset) != prefix_fingerprint(model, preprocess, dataset, policy=BF16_CPU)
    from cxrlab.core import ConfigError
    from cxrlab.train.prefix_cache import stored_prefix

    store = tmp_path / "store"  # an entry past the store's disk budget is refused before it is computed
    with pytest.raises(ConfigError, match=r"prefix-store entry \(4 images entering block .*runtime.store_max_gb"):
        stored_prefix(model, [dataset], preprocess, store, max_bytes=1000)
    assert not list(store.glob("*.npy"))  # nothing half-written
    assert len(stored_prefix(model, [dataset], preprocess, store, max_bytes=1e9)[0]) == 4


def test_recomputing_the_trainable_blocks_gives_the_same_weights():
    """Gradient checkpointing (runtime.recompute) trades memory for time, never the result."""
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    targets = torch.tensor([0, 1, 2, 0])
    weights = []
    for recompute in (False, True):
        torch.manual_seed(5)  # the head's dropout draws
        model = create_classifier("efficientnet_lite0", 3, fine_tune=3, pretrained="none", seed=0).train()
        model.recompute = recompute
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
        for _ in range(2):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), targets).backward()
            optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(weights[0], weights[1], atol=1e-6) and not torch.equal(weights[0], torch.zeros_like(weights[0]))
