from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxrlab.core import ConfigError, ManifestError
from cxrlab.data import SplitConfig, load_source, make_splits
from cxrlab.preprocess import PreprocessConfig, ShardDataset, ShardReader, prepare


@pytest.fixture(scope="module")
def prepared(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    manifest = load_source(phantoms)
    prepare(manifest, out, PreprocessConfig(size=32), workers=1)
    frame, _ = make_splits(manifest.table, manifest.class_names, SplitConfig(ratios=(0.6, 0.2, 0.2), folds=0))
    return out, manifest, frame


def test_dataset_reads_one_side_of_a_split(prepared):
    out, manifest, frame = prepared
    test_side = frame[frame.split == "test"]
    ds = ShardDataset(out, manifest.class_names, images=test_side["image"].tolist(), mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(ds) == len(test_side)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    raw = ShardReader(out).image(int(ds.rows[0]))
    assert torch.allclose(x[0], torch.from_numpy(raw / 127.5 - 1.0).float(), atol=1e-6)
    assert [manifest.class_names[t] for t in ds.targets] == test_side["label"].tolist()
    batch_x, batch_y = next(iter(DataLoader(ds, batch_size=4)))
    assert batch_x.shape == (min(4, len(ds)), 3, 32, 32) and batch_y.shape[0] == batch_x.shape[0]


def test_dataset_transform_and_errors(prepared):
    out, manifest, _ = prepared
    gray = {"in_chans": 1, "mean": (0.5,), "std": (0.25,)}
    flipped = ShardDataset(out, manifest.class_names, transform=lambda im: im[:, ::-1], **gray)
    plain = ShardDataset(out, manifest.class_names, **gray)
    assert flipped[0][0].shape == (1, 32, 32)
    assert np.allclose(flipped[0][0].numpy()[0], plain[0][0].numpy()[0][:, ::-1])
    with pytest.raises(ConfigError, match="mean/std"):
        ShardDataset(out, manifest.class_names, in_chans=1)  # ImageNet's 3-channel mean on 1 channel
    with pytest.raises(ConfigError, match="not among"):
        ShardDataset(out, ("COVID-19", "non-COVID"))
    with pytest.raises(ManifestError, match="1 requested image"):
        ShardDataset(out, manifest.class_names, images=["/nowhere/x.png"])


def test_kept_lung_masks_follow_the_pixels_and_images_without_one_are_skipped(prepared, tmp_path):
    import json

    import cv2

    from cxrlab.data.manifest import Manifest

    out, manifest, _ = prepared
    with pytest.raises(ManifestError, match="no lung masks"):
        ShardDataset(out, manifest.class_names, with_masks=True)
    table = manifest.table.copy()
    table.loc[0, "mask"] = ""
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((64, 64), np.uint8))
    table.loc[1, "mask"] = str(blank)
    masked = tmp_path / "masked"
    summary = prepare(Manifest(table, manifest.class_names), masked, PreprocessConfig(size=32, keep_mask=True),
                      workers=1)
    reasons = dict(summary.skipped)
    assert "no lung mask" in reasons[table.loc[0, "image"]] and "lung mask is empty" in reasons[table.loc[1, "image"]]
    reader = ShardReader(masked)
    assert reader.has_masks and summary.images == len(table) - 2
    row = int(np.flatnonzero(reader.table["image"] == table.loc[2, "image"])[0])
    truth = cv2.resize(cv2.imread(table.loc[2, "mask"], cv2.IMREAD_GRAYSCALE), (32, 32),
                       interpolation=cv2.INTER_NEAREST) > 127
    np.testing.assert_array_equal(reader.mask(row).astype(bool), truth)
    x, _ = ShardDataset(reader, manifest.class_names, with_masks=True)[row]
    assert x.shape == (4, 32, 32)
    np.testing.assert_array_equal(x[-1].numpy().astype(bool), truth)
    plan = json.loads((out / "plan.json").read_text())  # a folder prepared before keep_mask existed still resumes
    plan["config"].pop("keep_mask")
    (out / "plan.json").write_text(json.dumps(plan))
    assert prepare(manifest, out, PreprocessConfig(size=32), workers=1).shards_written == 0
